"""End-to-end `predict` latency per image (decode -> result), with its breakdown.

For each model: `load_model`-equivalent object with random weights (no download), one 640x480
JPEG from the synthetic dataset, `model.predict(path)` at the model's 640x640 input, median over
`--runs` after one warm-up. The breakdown times decode, preprocessing, forward and
post-processing separately. Random weights are almost never confident, so post-processing is
also timed on its own with K confident queries (what a trained model keeps: ~10-30 on COCO).

    .venv/bin/python benchmarks/predict.py [--models vitt16 vits16] [--runs 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from panoptic_train.data.coco import ClassMapping
from panoptic_train.data.io import load_image
from panoptic_train.data.synthetic import write_dataset
from panoptic_train.data.transforms import resize_and_pad
from panoptic_train.inference.model import PanopticSegmentationModel
from panoptic_train.models.registry import create_model
from panoptic_train.runtime.inputs import to_image_tensor
from panoptic_train.runtime.postprocess import panoptic_postprocess

NUM_CLASSES = 133  # COCO panoptic
THING = [True] * 80 + [False] * (NUM_CLASSES - 80)


def median_seconds(function: Callable[[], object], runs: int, device: torch.device) -> float:
    """Median wall time of `function` after one warm-up call (CUDA work synchronised)."""
    function()
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def confident_logits(kept: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of 200 queries of which `kept` are confident, with disc-shaped masks (1/4 of 640)."""
    generator = torch.Generator().manual_seed(0)
    class_logits = torch.full((1, 200, NUM_CLASSES + 1), -5.0)
    class_logits[0, kept:, -1] = 5.0
    labels = torch.randint(0, NUM_CLASSES, (kept,), generator=generator)
    class_logits[0, torch.arange(kept), labels] = 8.0
    grid = torch.arange(160.0)
    centres = torch.rand(200, 2, generator=generator) * 160
    radii = torch.rand(200, generator=generator) * 40 + 10
    distance = (
        (grid[None, :, None] - centres[:, 0, None, None]) ** 2
        + (grid[None, None, :] - centres[:, 1, None, None]) ** 2
    ).sqrt()
    return class_logits.to(device), (radii[:, None, None] - distance)[None].to(device)


def model_timings(
    name: str, path: Path, classes: ClassMapping, runs: int, device: torch.device
) -> list[float]:
    """Seconds for predict(path) end to end, then decode, preprocess, forward, post-process."""
    network = create_model(f"dinov3/{name}-eomt", NUM_CLASSES, backbone_weights=None)
    model = PanopticSegmentationModel(
        network, classes, model_name=name, device=device, precision="fp32"
    )
    image = to_image_tensor(path)
    inputs, resized = resize_and_pad(image, model.image_size, model.mean, model.std)
    batch = inputs[None].to(device)
    with torch.inference_mode():
        output = model.network(batch)

    @torch.inference_mode()
    def forward() -> object:
        return model.network(batch)

    def postprocess() -> object:
        return panoptic_postprocess(
            output.class_logits[-1],
            output.mask_logits[-1],
            THING,
            model.image_size,
            [resized],
            [tuple(image.shape[-2:])],
        )

    return [
        median_seconds(lambda: model.predict(path), runs, device),
        median_seconds(lambda: load_image(path), runs, device),
        median_seconds(
            lambda: resize_and_pad(image, model.image_size, model.mean, model.std), runs, device
        ),
        median_seconds(forward, runs, device),
        median_seconds(postprocess, runs, device),
    ]


def postprocess_seconds(kept: int, runs: int, device: torch.device) -> float:
    class_logits, mask_logits = confident_logits(kept, device)
    return median_seconds(
        lambda: panoptic_postprocess(
            class_logits, mask_logits, THING, (640, 640), [(480, 640)], [(480, 640)]
        ),
        runs,
        device,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vitt16", "vits16"])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    classes = ClassMapping(
        class_ids=tuple(range(1, NUM_CLASSES + 1)),
        names=tuple(f"class {i}" for i in range(NUM_CLASSES)),
        is_thing=tuple(THING),
    )
    with tempfile.TemporaryDirectory() as root:
        split = write_dataset(root, num_images=1, image_size=(480, 640), image_format="jpg")
        path = next(Path(split["images"]).iterdir())
        print(f"device {device}, {torch.get_num_threads()} threads, 640x480 JPEG, fp32")
        print("| model | predict (s) | decode | preprocess | forward | postprocess |")
        print("|---|---|---|---|---|---|")
        for name in args.models:
            timings = model_timings(name, path, classes, args.runs, device)
            print(f"| {name} | " + " | ".join(f"{t:.3f}" for t in timings) + " |")

    print("\npost-processing alone, 200 queries, 640x480 output")
    print("| confident queries K | seconds |")
    print("|---|---|")
    for kept in (0, 10, 30):
        print(f"| {kept} | {postprocess_seconds(kept, args.runs, device):.3f} |")


if __name__ == "__main__":
    main()
