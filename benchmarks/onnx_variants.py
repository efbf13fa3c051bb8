"""ONNX export and onnxruntime settings for the EoMT network, compared in one interleaved run.

Variants of the exported logits graph (`export.graph.LogitsGraph`, ViT-T/16 at 640x640, random
weights, fp32, simplified with onnxslim as `export_onnx` does):

- torchscript-17: torch's TorchScript-based exporter at opset 17 (what `export_onnx` writes)
- dynamo-18: the torch.export-based exporter (needs onnxscript) at opset 18
- dynamo-23: the same at opset 23, where scaled_dot_product_attention becomes one fused ONNX
  `Attention` op (12 of them instead of MatMul + Softmax + MatMul) and GELU one `Gelu`

each run by onnxruntime's CPU provider at graph optimisation levels basic / extended / all and
on 1 or 2 intra-op threads, batch 1. Every timing runs in a process of its own; the variants
alternate for --rounds rounds and the median of the rounds' medians is printed.

    python benchmarks/onnx_variants.py [--rounds 3] [--runs 5]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

EXPORTS = {"torchscript-17": (False, 17), "dynamo-18": (True, 18), "dynamo-23": (True, 23)}
SETTINGS = [("all", 2), ("extended", 2), ("basic", 2), ("all", 1)]


def _export(name: str, path: Path) -> None:
    import onnx
    import onnxslim
    import torch

    from panoptic_train.export.graph import LogitsGraph
    from panoptic_train.models.registry import create_model

    torch.manual_seed(0)
    network = create_model("dinov3/vitt16-eomt", 133, backbone_weights=None)
    graph = LogitsGraph(network, torch.float32).eval()
    example = torch.randn(1, 3, 640, 640)
    dynamo, opset = EXPORTS[name]
    names = {"input_names": ["images"], "output_names": ["class_logits", "mask_logits"]}
    if dynamo:
        batch = torch.export.Dim("batch")
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            dynamic_shapes={"images": {0: batch}},
            opset_version=opset,
            **names,
        )
        proto = program.model_proto
    else:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (example,),
                buffer,
                dynamo=False,
                dynamic_axes={"images": {0: "batch"}},
                opset_version=opset,
                **names,
            )
        proto = onnx.load_from_string(buffer.getvalue())
    onnx.save(onnxslim.slim(proto), str(path))


def _time(path: str, level: str, threads: int, runs: int) -> float:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}"
    )
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).normal(size=(1, 3, 640, 640)).astype(np.float32)
    session.run(None, {"images": images})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"images": images})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _in_process(*argv: str) -> str:
    command = [sys.executable, __file__, "--child", json.dumps(argv)]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        if kind == "export":
            _export(rest[0], Path(rest[1]))
        else:
            print(_time(rest[0], rest[1], int(rest[2]), int(rest[3])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: str(Path(tmp) / f"{name}.onnx") for name in EXPORTS}
        for name, path in files.items():
            _in_process("export", name, path)
        times: dict[tuple[str, str, int], list[float]] = {}
        for round_index in range(args.rounds):
            for name, path in files.items():
                for level, threads in SETTINGS:
                    seconds = float(_in_process("time", path, level, str(threads), str(args.runs)))
                    times.setdefault((name, level, threads), []).append(seconds)
                    print(f"round {round_index + 1}: {name} {level} {threads}: {seconds:.3f} s")
    print("| export | optimisation | threads | seconds (median of rounds) |")
    print("|---|---|---|---|")
    for (name, level, threads), values in times.items():
        print(f"| {name} | {level} | {threads} | {statistics.median(values):.3f} |")


if __name__ == "__main__":
    main()
