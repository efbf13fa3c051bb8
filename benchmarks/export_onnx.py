"""ONNX Runtime on the CPU against PyTorch eager on the CPU, per image at 640x640.

For each model (random weights, 133 classes, 200 queries, no download): export to ONNX (fp32,
simplified; fp16 too with --fp16), then median latency over `--runs` after one warm-up of
(PyTorch and ONNX Runtime called in turn, so that both see the same load on a shared machine)

- the network alone: PyTorch eager (`inference_mode`) vs `InferenceSession.run` of the logits
  graph (and of the fp16 graph);
- the graph with the merge baked in (`postprocess=True`, all outputs), the reference system's
  kind of ONNX model;
- `predict(path)` end to end on a 640x480 JPEG: `PanopticSegmentationModel` vs `OnnxPredictor`.

    .venv/bin/python benchmarks/export_onnx.py [--models vitt16 vits16] [--runs 10] [--fp16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from panoptic_train.data.coco import ClassMapping
from panoptic_train.data.synthetic import write_dataset
from panoptic_train.export import OnnxPredictor, export_onnx
from panoptic_train.inference.model import PanopticSegmentationModel
from panoptic_train.models.registry import create_model

NUM_CLASSES = 133  # COCO panoptic
CLASSES = ClassMapping(
    class_ids=tuple(range(1, NUM_CLASSES + 1)),
    names=tuple(f"class {i}" for i in range(1, NUM_CLASSES + 1)),
    is_thing=tuple(i < 80 for i in range(NUM_CLASSES)),
)


Timing = tuple[float, float]  # median wall seconds, median process CPU seconds (all threads)


def median_times(*functions: Callable[[], object], runs: int) -> list[Timing]:
    """Median wall and CPU time of each function after one warm-up call each, the functions
    called in turn (A B A B ...) so that they share whatever load the machine has. CPU time is
    the process's, all threads: on 2 idle cores wall time is about CPU time / 2."""
    for function in functions:
        function()
    walls: list[list[float]] = [[] for _ in functions]
    cpus: list[list[float]] = [[] for _ in functions]
    for _ in range(runs):
        for index, function in enumerate(functions):
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            walls[index].append(time.perf_counter() - wall)
            cpus[index].append(time.process_time() - cpu)
    return [
        (statistics.median(wall), statistics.median(cpu))
        for wall, cpu in zip(walls, cpus, strict=True)
    ]


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def benchmark(
    name: str, image: Path, folder: Path, runs: int, fp16: bool
) -> dict[str, tuple[Timing | None, Timing]]:
    """Per measurement: (PyTorch timing or None, ONNX Runtime timing)."""
    torch.manual_seed(0)
    network = create_model(f"dinov3/{name}-eomt", NUM_CLASSES, backbone_weights=None)
    model = PanopticSegmentationModel(network, CLASSES, model_name=name, device="cpu")
    logits_path = export_onnx(model, folder / f"{name}.onnx", verify=False)
    merged_path = export_onnx(model, folder / f"{name}_merged.onnx", postprocess=True, verify=False)
    inputs = np.random.default_rng(0).normal(size=(1, 3, 640, 640)).astype(np.float32)
    feed = {"images": inputs}

    logits_session, merged_session = session(logits_path), session(merged_path)
    predictor = OnnxPredictor(logits_path)
    batch = torch.from_numpy(inputs)

    def torch_network() -> object:
        with torch.inference_mode():
            return network(batch)

    network_times = median_times(torch_network, lambda: logits_session.run(None, feed), runs=runs)
    predict_times = median_times(
        lambda: model.predict(image), lambda: predictor.predict(image), runs=runs
    )
    (merged,) = median_times(lambda: merged_session.run(None, feed), runs=runs)
    results: dict[str, tuple[Timing | None, Timing]] = {
        "network, fp32": (network_times[0], network_times[1]),
        "graph with the merge, fp32": (None, merged),
    }
    if fp16:
        half_path = export_onnx(model, folder / f"{name}_fp16.onnx", precision="fp16", verify=False)
        half_session = session(half_path)
        (half,) = median_times(lambda: half_session.run(None, feed), runs=runs)
        results["network, fp16"] = (None, half)
    results["predict(jpeg path)"] = (predict_times[0], predict_times[1])
    return results


def milliseconds(timing: Timing | None) -> list[str]:
    return ["-", "-"] if timing is None else [f"{seconds * 1000:.0f}" for seconds in timing]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vitt16", "vits16"])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--fp16", action="store_true", help="also time the fp16 graph")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_dataset(folder / "data", 1, image_size=(480, 640), image_format="jpg")
        image = next(Path(data["images"]).iterdir())
        header = ["model", "measurement", "PyTorch wall", "PyTorch CPU", "ORT wall", "ORT CPU"]
        print("| " + " | ".join(header) + " |  (milliseconds)")
        print("|---" * len(header) + "|")
        for name in args.models:
            results = benchmark(name, image, folder, args.runs, args.fp16)
            for what, (reference, ours) in results.items():
                cells = [f"dinov3/{name}-eomt", what, *milliseconds(reference), *milliseconds(ours)]
                print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
