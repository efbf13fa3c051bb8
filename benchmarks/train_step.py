"""Training step time and peak memory of `train_panoptic_segmentation`.

Each model trains in its own process through the public API (synthetic 640x480 data, 640x640
crops, random weights) with a metric logged every step; a step's time is what the loop measures
around one optimiser step (data fetch, forward, loss, backward, clipping, update), read back from
its TensorBoard `images_per_second`. The first steps are warm-up. Peak memory is the training
process's maximum resident set size (DataLoader workers not included).

CPU defaults follow the reference measurement (batch 2, float32). On a GPU, e.g.
`--accelerator gpu --batch-size 16 --precision bf16-mixed`, with and without `--compile`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _child(args: argparse.Namespace) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from panoptic_train import train_panoptic_segmentation
    from panoptic_train.data.synthetic import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = {
            "train": write_dataset(root / "data", 8, image_size=(480, 640), split="train"),
            "val": write_dataset(root / "data", 2, image_size=(480, 640), split="val"),
        }
        steps = args.warmup + args.steps
        train_panoptic_segmentation(
            out=root / "run",
            data=data,
            model=f"dinov3/{args.child}-eomt",
            steps=steps,
            batch_size=args.batch_size,
            accelerator=args.accelerator,
            precision=args.precision,
            model_args={"backbone_weights": None},
            logger_args={"log_every_num_steps": 1, "val_every_num_steps": steps},
            torch_compile_args={"disable": not args.compile},
        )
        events = EventAccumulator(str(root / "run" / "logs" / "tensorboard"))
        events.Reload()
        speeds = [event.value for event in events.Scalars("images_per_second")][args.warmup :]
    seconds = statistics.median(args.batch_size / speed for speed in speeds)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(json.dumps({"seconds_per_step": seconds, "peak_gib": peak_gib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vitt16", "vits16"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    print(
        f"| model | s/step | steps/s | peak memory (GiB) |  (batch {args.batch_size}, "
        f"{args.accelerator}, {args.precision}{', compiled' if args.compile else ''})"
    )
    print("|---|---|---|---|")
    for model in args.models:
        command = [sys.executable, __file__, "--child", model, *sys.argv[1:]]
        completed = subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        seconds, peak = result["seconds_per_step"], result["peak_gib"]
        print(f"| dinov3/{model}-eomt | {seconds:.2f} | {1 / seconds:.2f} | {peak:.2f} |")


if __name__ == "__main__":
    main()
