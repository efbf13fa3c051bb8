"""Eval-mode forward latency of the EoMT network, batch 1, 640x640, random weights.

Reports each model's compute (GFLOPs and G-MACs, counted by torch's FlopCounterMode: matmuls,
convolutions and attention) and its median latency. On CPU the precision is float32; when CUDA
is available, float16 and bfloat16 are measured too, eager and with torch.compile.

    .venv/bin/python benchmarks/forward.py [--models vitt16 vits16 vitb16] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from panoptic_train.models.eomt import EoMT
from panoptic_train.models.registry import create_model

SIZE = 640
NUM_CLASSES = 133


def count_flops(model: EoMT) -> int:
    """FLOPs of one eval forward pass at SIZE x SIZE (a multiply-add counts as 2).

    The math attention backend is forced while counting: the fused CPU kernel is not known to
    FlopCounterMode, whose count would otherwise leave attention out.
    """
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        model(torch.randn(1, 3, SIZE, SIZE))
    return counter.get_total_flops()


def median_latency_ms(
    network: Callable[[torch.Tensor], object], image: torch.Tensor, runs: int, warmup: int
) -> tuple[float, float]:
    """Median wall-clock and median process CPU time per forward pass, in ms.

    On a shared CPU the wall-clock time depends on the other load; the CPU time (summed over
    this process's threads) does much less, so both are reported.
    """
    cuda = image.is_cuda
    with torch.inference_mode():
        for _ in range(warmup):
            network(image)
    wall, cpu = [], []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            network(image)
        if cuda:
            torch.cuda.synchronize()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def benchmark(name: str, runs: int, warmup: int) -> list[tuple[str, str, float, float]]:
    """(device, setting, wall ms, CPU ms) rows for one backbone size."""
    model = create_model(f"dinov3/{name}-eomt", NUM_CLASSES, backbone_weights=None).eval()
    rows = []
    image = torch.randn(1, 3, SIZE, SIZE)
    rows.append(("cpu", "fp32 eager", *median_latency_ms(model, image, runs, warmup)))
    if torch.cuda.is_available():
        gpu_image = image.cuda()
        for dtype in (torch.float16, torch.bfloat16):
            gpu_model = create_model(f"dinov3/{name}-eomt", NUM_CLASSES, backbone_weights=None)
            gpu_model = gpu_model.eval().to("cuda", dtype)
            x = gpu_image.to(dtype)
            label = str(dtype).removeprefix("torch.")
            for compiled in (False, True):
                network = torch.compile(gpu_model) if compiled else gpu_model
                wall, cpu = median_latency_ms(network, x, runs * 10, warmup + 3)
                mode = "torch.compile" if compiled else "eager"
                rows.append((torch.cuda.get_device_name(), f"{label} {mode}", wall, cpu))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vitt16", "vits16", "vitb16"])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per setting (CPU)")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("| model | params (M) | GFLOPs | G-MACs | device | setting | latency (ms) | CPU (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        with torch.device("meta"):
            meta_model = create_model(f"dinov3/{name}-eomt", NUM_CLASSES, backbone_weights=None)
        params = sum(p.numel() for p in meta_model.parameters()) / 1e6
        flops = count_flops(create_model(f"dinov3/{name}-eomt", NUM_CLASSES, None).eval())
        for device, setting, wall, cpu in benchmark(name, args.runs, args.warmup):
            print(
                f"| dinov3/{name}-eomt | {params:.1f} | {flops / 1e9:.0f} | {flops / 2e9:.0f} "
                f"| {device} | {setting} | {wall:.0f} | {cpu:.0f} |"
            )


if __name__ == "__main__":
    main()
