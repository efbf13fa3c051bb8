"""Samples per second of the train data pipeline (decode + augment + collate).

640x640 crops (default transform_args: scale jitter 0.1-2.0, pad, crop, flip) from 640x480
synthetic PNGs, through a DataLoader with 0, 1 and 2 worker processes.

    .venv/bin/python benchmarks/data_throughput.py [--samples 96] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from panoptic_train.data.config import load_data_args
from panoptic_train.data.dataset import build_datasets, collate_train
from panoptic_train.data.synthetic import write_dataset
from panoptic_train.data.transforms import load_transform_args


def measure(
    dataset: torch.utils.data.Dataset, workers: int, samples: int, batch_size: int
) -> float:
    """Samples/s over `samples` samples, after one warm-up batch (worker start-up excluded)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_train,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )
    seen = 0
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    while seen < samples:
        for batch in batches:
            seen += batch["images"].shape[0]
            if seen >= samples:
                break
        batches = iter(loader)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96, help="samples timed per setting")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images", type=int, default=32, help="synthetic images written")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        split = write_dataset(root, args.images, image_size=(480, 640), seed=0)
        data = load_data_args({"train": split, "val": split})
        datasets = build_datasets(data, load_transform_args({"image_size": (640, 640)}))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
        print("| workers | samples/s |")
        print("|---|---|")
        for workers in (0, 1, 2):
            rate = measure(datasets.train, workers, args.samples, args.batch_size)
            print(f"| {workers} | {rate:.1f} |")


if __name__ == "__main__":
    main()
