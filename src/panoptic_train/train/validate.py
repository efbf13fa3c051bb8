"""Validation during training: PQ / SQ / RQ of the current network on the validation split.

The images are preprocessed exactly as `predict` does (the val dataset uses
`data.transforms.resize_and_pad`) and merged by the same `runtime.postprocess` code with the
thresholds that go into the exported model, so the PQ reported here is what `load_model(...)
.predict` gives on these images. Statistics are accumulated per rank and summed across ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from panoptic_train.data.coco import ClassMapping
from panoptic_train.evaluation.pq import PanopticQualityAccumulator
from panoptic_train.runtime.postprocess import PostprocessConfig, panoptic_postprocess

_GROUPS = {"All": "", "Things": "_things", "Stuff": "_stuff"}


@torch.no_grad()
def evaluate_network(
    network: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    classes: ClassMapping,
    input_size: tuple[int, int],
    postprocess: PostprocessConfig,
    device: torch.device,
    all_reduce_sum: Callable[[Tensor], Tensor] | None = None,
    forward_passes: int = 0,
) -> dict[str, Any]:
    """panopticapi-style results (`All`, `Things`, `Stuff`, `per_class`) over `batches`.

    `network` is put in eval mode for the duration and restored to its previous mode after.
    On several ranks, `forward_passes` is the most batches any rank has: a rank with fewer runs
    the network that often anyway, on a blank image whose output is dropped, because a forward
    pass is a collective call under FSDP (and DDP's first one syncs buffers).
    """
    accumulator = PanopticQualityAccumulator(
        classes.num_classes,
        classes.is_thing,
        class_ids=classes.class_ids,
        class_names=classes.names,
        device=device,
    )
    thing_flags = torch.tensor(classes.is_thing, device=device)
    was_training = network.training
    network.eval()
    passes = 0
    try:
        for batch in batches:
            passes += 1
            images = batch["images"].to(device, non_blocking=True)
            targets = batch["targets"]
            output = network(images, factored_masks=True)  # the merge builds the kept rows
            predictions = panoptic_postprocess(
                output.class_logits[-1],
                output.mask_projections[-1],
                thing_flags,
                input_size=input_size,
                resized_sizes=[target["resized_size"] for target in targets],
                orig_sizes=[target["orig_size"] for target in targets],
                config=postprocess,
            )
            accumulator.update_batch(
                [prediction["masks"] for prediction in predictions],
                [target["target"].to(device) for target in targets],
                [target["crowd"].to(device) for target in targets],
            )
        for _ in range(passes, forward_passes):
            network(torch.zeros((1, 3, *input_size), device=device))
    finally:
        network.train(was_training)
    accumulator.sync(all_reduce_sum)
    return accumulator.compute()


def metrics_to_log(results: Mapping[str, Any], classwise: bool) -> dict[str, float]:
    """Flat scalar names for the loggers: `val_metric/pq`, `val_metric/sq_things`, ... and, with
    `classwise`, `val_metric_classwise/pq_<class name>`."""
    metrics: dict[str, float] = {}
    for group, suffix in _GROUPS.items():
        for key in ("pq", "sq", "rq"):
            metrics[f"val_metric/{key}{suffix}"] = float(results[group][key])
    if classwise:
        for entry in results["per_class"].values():
            metrics[f"val_metric_classwise/pq_{entry['name']}"] = float(entry["pq"])
    return metrics
