"""One batch, identical weights: panoptic_train's network and loss against LightlyTrain 0.18's.

Runs in LightlyTrain's virtual environment (it imports both; panoptic_train from this checkout's
`src`), as a diagnostic next to `vs_lightly_train.py`: a difference in the forward pass, the
matching, the loss terms or the gradient of a parameter group shows up here without training.

    /path/to/lt_venv/bin/python benchmarks/compare_one_batch.py [--points 16384] [--seed 0]

RoPE rescaling is switched off in both networks and masked attention is on (probability 1), so
the forward passes are deterministic; loss points are random in both, so loss and gradient
figures agree only up to sampling noise (use many points). Our loss ignores void and crowd
pixels while theirs treats them as negatives: the synthetic batch has both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("LIGHTLY_TRAIN_EVENTS_DISABLED", "1")


def _their_key(key: str) -> str:
    """Our parameter name -> LightlyTrain's (same DINOv3 layout; other head names)."""
    renames = {
        "mask_head.fc1": "mask_head.0",
        "mask_head.fc2": "mask_head.2",
        "mask_head.fc3": "mask_head.4",
        ".deconv.": ".conv1.",
        ".dwconv.": ".conv2.",
    }
    for old, new in renames.items():
        key = key.replace(old, new)
    return key


def _group(name: str) -> str:
    if name.startswith("backbone.blocks."):
        index = int(name.split(".")[2])
        part = "ls" if ".ls" in name else "other"
        return f"block{index:02d}.{part}"
    if name.startswith("backbone."):
        return "backbone.other"
    return name.split(".")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    from lightly_train._task_models.dinov3_eomt_panoptic_segmentation.mask_loss import (
        MaskClassificationLoss as TheirLoss,
    )
    from lightly_train._task_models.dinov3_eomt_panoptic_segmentation.task_model import (
        DINOv3EoMTPanopticSegmentation,
    )

    from panoptic_train.data.config import load_data_args
    from panoptic_train.data.dataset import build_datasets, collate_train
    from panoptic_train.data.synthetic import write_dataset
    from panoptic_train.data.transforms import load_transform_args
    from panoptic_train.models.registry import create_model
    from panoptic_train.train.loss import MaskClassificationLoss

    torch.manual_seed(args.seed)
    tmp = Path(tempfile.mkdtemp())
    data = load_data_args(
        {
            "train": write_dataset(tmp, 8, (128, 128), split="train"),
            "val": write_dataset(tmp, 2, (128, 128), split="val"),
        }
    )
    datasets = build_datasets(data, load_transform_args({"image_size": (128, 128)}))
    batch = collate_train([datasets.train[i] for i in range(args.batch)])
    classes = datasets.classes
    num_classes = classes.num_classes

    ours = create_model(
        "dinov3/vitt16-eomt",
        num_classes,
        backbone_weights=None,
        num_queries=20,
        image_size=(128, 128),
    ).train()
    things = {i: f"c{i}" for i in range(num_classes) if classes.is_thing[i]}
    stuff = {i: f"c{i}" for i in range(num_classes) if not classes.is_thing[i]}
    theirs = DINOv3EoMTPanopticSegmentation(
        model_name="dinov3/vitt16-notpretrained-eomt",
        thing_classes=things,
        stuff_classes=stuff,
        image_size=(128, 128),
        image_normalize={"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
        num_queries=20,
        num_joint_blocks=3,
        load_weights=False,
    ).train()
    # Their class head rows are things then stuff; ours follow the dataset. Map ours onto theirs.
    order = [*things, *stuff, num_classes]
    their_state = theirs.state_dict()
    for key, value in ours.state_dict().items():
        target = _their_key(key)
        if target not in their_state:
            continue
        if key.startswith("class_head."):
            value = value[order]
        their_state[target] = value.clone()
    theirs.load_state_dict(their_state)
    ours.backbone.rope_embed.rescale = None
    theirs.backbone.rope_embed.rescale_coords = None

    images = batch["images"]
    out = ours(images)
    their_masks, their_classes = theirs.forward_train(images, return_logits_per_layer=True)
    inverse = [order.index(i) for i in range(num_classes + 1)]
    for layer, (masks, b) in enumerate(zip(out.mask_projections, their_masks, strict=True)):
        a = masks.logits()
        ca, cb = out.class_logits[layer], their_classes[layer][..., inverse]
        print(
            f"layer {layer}: max |mask logit diff| {(a - b).abs().max():.2e} (scale "
            f"{a.abs().max():.2e}), max |class logit diff| {(ca - cb).abs().max():.2e}"
        )

    targets = batch["targets"]
    criterion = MaskClassificationLoss(num_classes=num_classes, num_points=args.points)
    loss = criterion(out.class_logits, out.mask_projections, targets, first_joint_block=8)
    their_criterion = TheirLoss(
        num_points=args.points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        mask_coefficient=5.0,
        dice_coefficient=5.0,
        class_coefficient=2.0,
        num_labels=num_classes,
        no_object_coefficient=0.1,
    )
    to_theirs = torch.tensor([order.index(i) for i in range(num_classes)])
    their_targets = [
        {"masks": t["masks"].float(), "labels": to_theirs[t["labels"]]} for t in targets
    ]
    losses = {}
    for layer, (m, c) in enumerate(zip(their_masks, their_classes, strict=True)):
        terms = their_criterion(
            masks_queries_logits=m, targets=their_targets, class_queries_logits=c
        )
        losses.update({f"{k}_{layer}": v for k, v in terms.items()})
    their_total = their_criterion.loss_total(losses)
    print(f"total loss: ours {loss.total.item():.4f}, theirs {their_total.item():.4f}")
    for name, value in loss.terms.items():
        print(f"  ours {name} {value.item():.4f}")
    for name, value in losses.items():
        print(f"  theirs {name} {value.item():.4f}")

    loss.total.backward()
    their_total.backward()
    their_params = dict(theirs.named_parameters())
    norms: dict[str, list[float]] = {}
    for name, param in ours.named_parameters():
        other = their_params.get(_their_key(name))
        if param.grad is None or other is None or other.grad is None:
            continue
        grad_theirs = other.grad[order] if name.startswith("class_head.") else other.grad
        entry = norms.setdefault(_group(name), [0.0, 0.0])
        entry[0] += float(param.grad.square().sum())
        entry[1] += float(grad_theirs.square().sum())
    print("gradient norm per group: ours / theirs")
    for group, (a, b) in sorted(norms.items()):
        print(
            f"  {group:18s} {a**0.5:10.4g} {b**0.5:10.4g}  ratio {(a / max(b, 1e-30)) ** 0.5:.3f}"
        )


if __name__ == "__main__":
    main()
