"""One process against two on the CPU (gloo): training steps/s and prediction images/s.

Each runs as one process on one thread, one process on one thread per core, and two processes
sharing the cores' threads. Training: a random ViT-T/16 EoMT (20 queries) on the synthetic
dataset at 128x128, global batch 8, no DataLoader workers, `devices=1|2` (DDP). Steps/s is the
loop's own measure (the median of the `images_per_second` it logs every 5 steps over the steps
alone, validation and checkpoints excluded), after one interval of warm-up.

Prediction: `panoptic-train predict --devices 1|2` with a random ViT-T/16 EoMT at 64x64 on
240x320 synthetic images, batch 4. Images/s counts from the first PNG written to the last (their
modification times), so the start-up (imports, process launch, model load) is left out; the
best of 3 runs, since the machine's other jobs slow single runs down.

    python benchmarks/distributed.py [--steps 30] [--images 192]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from serve_load import write_tiny_model
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from panoptic_train import train_panoptic_segmentation
from panoptic_train.data.synthetic import write_dataset

BATCH_SIZE = 8
LOG_EVERY = 5
REPEATS = 3
CPUS = len(os.sched_getaffinity(0))


def train_steps_per_second(data: dict, out: Path, devices: int, threads: int, steps: int) -> float:
    arguments = {
        "out": str(out),
        "data": data,
        "model": "dinov3/vitt16-eomt",
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "num_workers": 0,
        "accelerator": "cpu",
        "devices": devices,
        "transform_args": {"image_size": [128, 128]},
        "model_args": {"backbone_weights": None, "num_queries": 20},
        "logger_args": {"log_every_num_steps": LOG_EVERY, "val_every_num_steps": steps},
        "save_checkpoint_args": {"save_every_num_steps": steps},
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # This script again, as a file: Fabric starts the second process by running it once more.
    subprocess.run(
        [sys.executable, __file__, "--train", json.dumps(arguments)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    events = EventAccumulator(str(out / "logs" / "tensorboard"))
    events.Reload()
    rates = [event.value for event in events.Scalars("images_per_second")][1:]
    return statistics.median(rates) / BATCH_SIZE


def predict_images_per_second(
    model: Path, images: list[Path], out: Path, devices: int, threads: int
) -> float:
    command = [sys.executable, "-m", "panoptic_train", "predict", str(model), *map(str, images)]
    command += ["--out", str(out), "--device", "cpu", "--batch-size", "4"]
    command += ["--devices", str(devices)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    rates = []
    for _ in range(REPEATS):
        subprocess.run([*command, "--overwrite"], check=True, env=env, capture_output=True)
        written = sorted(path.stat().st_mtime_ns for path in (out / "panoptic").iterdir())
        rates.append((len(written) - 1) / ((written[-1] - written[0]) / 1e9))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--train", metavar="ARGUMENTS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train:
        train_panoptic_segmentation(**json.loads(args.train))
        return
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        data = {
            "train": write_dataset(root / "data", 64, image_size=(96, 128), seed=0, split="train"),
            "val": write_dataset(root / "data", 4, image_size=(96, 128), seed=0, split="val"),
        }
        print(f"{CPUS} CPUs; training: global batch {BATCH_SIZE}, 128x128, {args.steps} steps")
        print("| processes | threads each | train steps/s | predict images/s |")
        print("|---|---|---|---|")
        model = write_tiny_model(root / "model.pt")
        split = write_dataset(root / "predict", args.images, (240, 320), seed=1)
        pictures = sorted(Path(split["images"]).iterdir())
        # One process on one thread, on every core's threads, and two processes sharing them.
        for devices, threads in ((1, 1), (1, CPUS), (2, max(1, CPUS // 2))):
            name = f"{devices}x{threads}"
            steps = train_steps_per_second(
                data, root / f"train{name}", devices, threads, args.steps
            )
            images = predict_images_per_second(
                model, pictures, root / f"predict{name}", devices, threads
            )
            print(f"| {devices} | {threads} | {steps:.2f} | {images:.1f} |")


if __name__ == "__main__":
    main()
