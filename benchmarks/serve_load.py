"""Load test of `panoptic-train serve` on 127.0.0.1, with and without dynamic batching.

A real server process serves a tiny random model (ViT-T/16, 8 queries, 64x64 input, loose
thresholds so every image has segments to merge and encode). `--clients` threads each send
`--requests` POST /predict requests one after another (closed loop: a client sends its next
image when the previous answer is in), cycling through synthetic 128x96 PNGs. Each setting
first runs the same load once as a warm-up, then measures: errors (any non-200 answer or
transport failure), p50 / p99 latency, throughput, the batch sizes the server formed, and the
server's resident memory before and after the measured load.

    .venv/bin/python benchmarks/serve_load.py [--clients 16] [--requests 25]

Exits with status 1 if any request failed. `tests/serve/test_load.py` runs `run_load` with a
few clients as a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from panoptic_train.data.coco import ClassMapping
from panoptic_train.data.synthetic import CATEGORIES, write_dataset
from panoptic_train.inference.model import PanopticSegmentationModel
from panoptic_train.models.registry import create_model
from panoptic_train.runtime.postprocess import PostprocessConfig
from panoptic_train.serve.launch import serve_in_subprocess

# Random weights rarely reach the default 0.8 class score: thresholds that keep every query give
# the merge, the PNG encoding and the tests' comparisons real segments to work on.
TINY_THRESHOLDS = PostprocessConfig(threshold=0.0, overlap_threshold=0.0)


@dataclass
class LoadReport:
    """Per-request latencies (seconds) of the successful requests, failures, wall time."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies) + len(self.errors)

    def percentile_ms(self, percent: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[percent - 1] * 1000

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds


def run_load(url: str, images: Sequence[bytes], clients: int, requests: int) -> LoadReport:
    """`clients` threads, started together, each POST `requests` images to `url`/predict."""
    report = LoadReport()
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
            start.wait()
            for number in range(requests):
                data = images[(index + number) % len(images)]
                began = time.perf_counter()
                try:
                    response = http.post("/predict", content=data)
                    failure = None if response.status_code == 200 else response.text[:300]
                except httpx.HTTPError as error:
                    failure = repr(error)
                elapsed = time.perf_counter() - began
                with lock:
                    if failure is None:
                        report.latencies.append(elapsed)
                    else:
                        report.errors.append(failure)

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    report.seconds = time.perf_counter() - began
    return report


def resident_mib(pid: int) -> float:
    """Resident set size of a process (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def write_tiny_model(path: Path) -> Path:
    """A random ViT-T/16 EoMT with 8 queries at 64x64 as an exported model (also the serve
    tests' model)."""
    torch.manual_seed(0)
    classes = ClassMapping.from_list(CATEGORIES)
    network = create_model(
        "dinov3/vitt16-eomt",
        num_classes=classes.num_classes,
        backbone_weights=None,
        image_size=(64, 64),
        num_queries=8,
    )
    model = PanopticSegmentationModel(
        network,
        classes,
        model_name="dinov3/vitt16-eomt",
        postprocess=TINY_THRESHOLDS,
        device="cpu",
    )
    model.save(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()

    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = write_tiny_model(root / "model.pt")
        folder = Path(write_dataset(root / "data", 8, image_size=(96, 128), split="val")["images"])
        images = [path.read_bytes() for path in sorted(folder.iterdir())]
        print(
            f"{args.clients} clients x {args.requests} requests, 128x96 PNGs, "
            f"--max-wait-ms {args.max_wait_ms:g}\n"
        )
        print(
            "| --max-batch | requests | errors | p50 ms | p99 ms | req/s | batch sizes | RSS MiB |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for max_batch in (8, 1):
            options = ["--device", "cpu", "--max-batch", str(max_batch)]
            options += ["--max-wait-ms", str(args.max_wait_ms)]
            with serve_in_subprocess(model, options, log=root / f"server{max_batch}.log") as server:
                run_load(server.url, images, args.clients, args.requests)  # warm-up
                before = resident_mib(server.pid)
                report = run_load(server.url, images, args.clients, args.requests)
                after = resident_mib(server.pid)
                stats = httpx.get(server.url + "health", trust_env=False).json()["batching"]
            failed |= bool(report.errors)
            sizes = ", ".join(f"{size}: {count}" for size, count in stats["batch_sizes"].items())
            print(
                f"| {max_batch} | {report.requests} | {len(report.errors)} | "
                f"{report.percentile_ms(50):.0f} | {report.percentile_ms(99):.0f} | "
                f"{report.throughput:.1f} | {sizes} | {before:.0f} → {after:.0f} |"
            )
            for error in report.errors[:5]:
                print(f"  error: {error}", file=sys.stderr)
    print("\n(batch sizes: size: batches, counted over the warm-up and the measured run)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
