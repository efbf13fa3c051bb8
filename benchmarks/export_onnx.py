"""ONNX Runtime on the CPU against PyTorch eager on the CPU, per image at 640x640.

For each model (random weights, 133 classes, 200 queries, no download): export to ONNX (fp32,
simplified; fp16 too with --fp16), then time, median over `--runs` after one warm-up,

- the network alone: PyTorch eager (`inference_mode`) vs `InferenceSession.run` of the logits
  graph (and of the fp16 graph);
- the graph with the merge baked in (`postprocess=True`, all outputs), the reference system's
  kind of ONNX model;
- `predict(path)` end to end on a 640x480 JPEG: `PanopticSegmentationModel` vs `OnnxPredictor`.

Each engine runs in its own process: in one process, the idle worker threads of one engine's
thread pool spin on the cores the other needs. CPU time is the process's (all threads); on two
idle cores the wall time is about half of it.

    .venv/bin/python benchmarks/export_onnx.py [--models vitt16 vits16] [--runs 10] [--fp16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

NUM_CLASSES = 133  # COCO panoptic
Timing = tuple[float, float]  # median wall seconds, median process CPU seconds


def median_times(function: Callable[[], object], runs: int) -> Timing:
    function()
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def random_images() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1, 3, 640, 640)).astype(np.float32)


def torch_model(name: str) -> object:
    """The PyTorch model (same random weights in every process)."""
    import torch

    from panoptic_train.data.coco import ClassMapping
    from panoptic_train.inference.model import PanopticSegmentationModel
    from panoptic_train.models.registry import create_model

    classes = ClassMapping(
        class_ids=tuple(range(1, NUM_CLASSES + 1)),
        names=tuple(f"class {i}" for i in range(1, NUM_CLASSES + 1)),
        is_thing=tuple(i < 80 for i in range(NUM_CLASSES)),
    )
    torch.manual_seed(0)
    network = create_model(f"dinov3/{name}-eomt", NUM_CLASSES, backbone_weights=None)
    return PanopticSegmentationModel(network, classes, model_name=name, device="cpu")


def time_torch(name: str, image: Path, runs: int) -> dict[str, Timing]:
    import torch

    model = torch_model(name)
    batch = torch.from_numpy(random_images())

    def network() -> object:
        with torch.inference_mode():
            return model.network(batch)

    return {
        "network, fp32": median_times(network, runs),
        "predict(jpeg path)": median_times(lambda: model.predict(image), runs),
    }


def time_onnxruntime(name: str, image: Path, folder: Path, runs: int) -> dict[str, Timing]:
    import onnxruntime as ort

    from panoptic_train.export import OnnxPredictor

    feed = {"images": random_images()}
    results = {}
    for what, file in (
        ("network, fp32", f"{name}.onnx"),
        ("graph with the merge, fp32", f"{name}_merged.onnx"),
        ("network, fp16", f"{name}_fp16.onnx"),
    ):
        if (folder / file).is_file():
            session = ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
            results[what] = median_times(lambda s=session: s.run(None, feed), runs)
    predictor = OnnxPredictor(folder / f"{name}.onnx")
    results["predict(jpeg path)"] = median_times(lambda: predictor.predict(image), runs)
    return results


def export(name: str, folder: Path, fp16: bool) -> None:
    from panoptic_train.export import export_onnx

    model = torch_model(name)
    export_onnx(model, folder / f"{name}.onnx", verify=False)
    export_onnx(model, folder / f"{name}_merged.onnx", postprocess=True, verify=False)
    if fp16:
        export_onnx(model, folder / f"{name}_fp16.onnx", precision="fp16", verify=False)


def in_child(engine: str, name: str, image: Path, folder: Path, runs: int) -> dict[str, Timing]:
    command = [sys.executable, __file__, "--child", engine, "--models", name]
    command += ["--runs", str(runs), "--image", str(image), "--folder", str(folder)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return {what: tuple(timing) for what, timing in json.loads(output.splitlines()[-1]).items()}


def milliseconds(timing: Timing | None) -> list[str]:
    return ["-", "-"] if timing is None else [f"{seconds * 1000:.0f}" for seconds in timing]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vitt16", "vits16"])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--fp16", action="store_true", help="also time the fp16 graph")
    parser.add_argument("--child", choices=["torch", "onnxruntime"], help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "torch":
        print(json.dumps(time_torch(args.models[0], args.image, args.runs)))
        return
    if args.child == "onnxruntime":
        print(json.dumps(time_onnxruntime(args.models[0], args.image, args.folder, args.runs)))
        return

    from panoptic_train.data.synthetic import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_dataset(folder / "data", 1, image_size=(480, 640), image_format="jpg")
        image = next(Path(data["images"]).iterdir())
        header = ["model", "measurement", "PyTorch wall", "PyTorch CPU", "ORT wall", "ORT CPU"]
        print("| " + " | ".join(header) + " |  (milliseconds)")
        print("|---" * len(header) + "|")
        for name in args.models:
            export(name, folder, args.fp16)
            reference = in_child("torch", name, image, folder, args.runs)
            ours = in_child("onnxruntime", name, image, folder, args.runs)
            for what, timing in ours.items():
                cells = [f"dinov3/{name}-eomt", what]
                cells += milliseconds(reference.get(what)) + milliseconds(timing)
                print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
