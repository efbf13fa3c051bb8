"""panoptic_train against LightlyTrain 0.18: speed and memory, side by side (speed mode).

The same settings for both (ViT-T/16 with a random backbone, 200 queries, 133 COCO classes,
fp32, the same thread count), one row per measurement:

- train: seconds per optimiser step over steps 6-25 and the peak RSS of the training process
  (640x640 crops of synthetic 640x480 images, batch 2, 12 544 loss points, no gradient
  accumulation: LightlyTrain's "auto" would accumulate 8 micro-batches of 2), and the time the
  step waits for the DataLoader (stall per step). Step ends come from a global optimiser-step
  hook and loader waits from timing the DataLoader iterator, the same code in both processes.
- predict: `predict` on one 512x512 JPEG at the model's 640x640 input.
- onnxruntime: each system's own exported ONNX file, batch 1 (ours: `export_onnx`, the
  network; LightlyTrain's: `export_onnx`, its network with its merge baked in).
- merge: each system's post-processing of the same last-layer logits with 10 and 30 confident
  queries (disc masks) into a 640x480 panoptic map (LightlyTrain's includes the upsampling to
  the input size that its `forward_backend` does before its merge).
- with a GPU also: train in bf16-mixed, predict in bf16 autocast, ours compiled, and our
  network's batch-1 latency replayed as a CUDA graph (skipped, and said so, without one).

Each measurement runs in a process of its own; the systems alternate (ours, LightlyTrain,
ours, ...) for --rounds rounds, so both see the same machine; medians and the ratio
ours / LightlyTrain are printed (on a shared machine only ratios within one run mean much).
The floor: FLOPs of the network per row (torch's FlopCounterMode), the achieved GFLOP/s and
their share of this CPU's fp32 peak, measured with a large matmul on the same threads.

    python benchmarks/vs_lightly_train_speed.py --lightly-python /path/to/lt_venv/bin/python
    python benchmarks/vs_lightly_train_speed.py --lightly-python ... --rows merge predict
    python benchmarks/vs_lightly_train_speed.py --only ours --rows train \
        --model-args '{"activation_checkpointing": true}'

LightlyTrain runs from its own virtual environment (`--lightly-python`, with onnx, onnxruntime
and onnxscript for its export), never inside this package.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _child import report, run_child

SYSTEMS = ("ours", "lightly")
ROWS = ("train", "predict", "onnx", "merge")
NUM_CLASSES = 133  # COCO panoptic: 80 things, 53 stuff
KEPT = (10, 30)
_LIGHTLY_MODEL = "dinov3/vitt16-notpretrained-eomt"
_OUR_MODEL = "dinov3/vitt16-eomt"
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- in the measuring processes


def _median_seconds(function: Callable[[], object], runs: int, sync: Callable[[], None]) -> float:
    """Median wall time of `function` over `runs` calls after one warm-up call."""
    function()
    times = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss may carry the parent's over)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 2**20


class _StepClock:
    """Optimiser-step end times and DataLoader waits, from hooks both systems go through."""

    def __init__(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook
        from torch.utils.data import dataloader

        self.step_ends: list[float] = []
        self.waits: list[tuple[float, float]] = []
        register_optimizer_step_post_hook(lambda *_: self.step_ends.append(time.perf_counter()))
        original = dataloader._BaseDataLoaderIter.__next__
        clock = self

        def timed_next(iterator: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(iterator)
            finally:
                clock.waits.append((start, time.perf_counter()))

        dataloader._BaseDataLoaderIter.__next__ = timed_next

    def summary(self, first: int, last: int) -> dict[str, float]:
        """Median step time and mean loader wait of steps first..last (1-based)."""
        ends = self.step_ends
        if len(ends) < last:
            raise RuntimeError(f"only {len(ends)} optimiser steps were taken, {last} needed")
        windows = list(zip(ends[first - 2 : last - 1], ends[first - 1 : last], strict=True))
        stalls = [
            sum(end - start for start, end in self.waits if low < end <= high)
            for low, high in windows
        ]
        return {
            "seconds_per_step": statistics.median(high - low for low, high in windows),
            "stall_per_step": statistics.mean(stalls),
        }


def _data_dict(root: Path) -> dict[str, dict[str, str]]:
    return {
        split: {
            "images": str(root / "images" / split),
            "masks": str(root / "annotations" / split),
            "annotations": str(root / "annotations" / f"{split}.json"),
        }
        for split in ("train", "val")
    }


def _train(spec: dict[str, Any]) -> dict[str, Any]:
    clock = _StepClock()
    settings = spec["settings"]
    common = {
        "out": str(Path(spec["out"]) / "run"),
        "data": _data_dict(Path(spec["data"])),
        "steps": settings["steps"],
        "batch_size": settings["batch_size"],
        "gradient_accumulation_steps": 1,
        "num_workers": settings["num_workers"],
        "accelerator": "gpu" if spec["cuda"] else "cpu",
        "devices": 1,
        "precision": "bf16-mixed" if spec["cuda"] else "32-true",
        "seed": 0,
        "transform_args": {"image_size": (640, 640)},
        # validation only after the timed steps
        "logger_args": {"val_every_num_steps": settings["steps"], "log_every_num_steps": 5},
    }
    model_args = {"num_queries": 200, "loss_num_points": 12544}
    if spec["system"] == "lightly":
        import lightly_train

        lightly_train.train_panoptic_segmentation(
            model=_LIGHTLY_MODEL, model_args=model_args, **common
        )
    else:
        import panoptic_train

        panoptic_train.train_panoptic_segmentation(
            model=_OUR_MODEL,
            model_args={"backbone_weights": None, **model_args, **spec["model_args"]},
            torch_compile_args={"disable": not spec.get("compile", False)},
            **common,
        )
    return {**clock.summary(6, settings["steps"]), "peak_rss_gib": _peak_rss_gib()}


def _classes() -> tuple[dict[int, str], dict[int, str]]:
    return (
        {i: f"thing {i}" for i in range(80)},
        {i: f"stuff {i}" for i in range(80, NUM_CLASSES)},
    )


def _model(system: str, device: str, precision: str = "fp32", compile: bool = False) -> Any:
    """Each system's model object with random weights at a 640x640 input."""
    things, stuff = _classes()
    if system == "lightly":
        from lightly_train._task_models.dinov3_eomt_panoptic_segmentation.task_model import (
            DINOv3EoMTPanopticSegmentation,
        )

        model = DINOv3EoMTPanopticSegmentation(
            model_name=_LIGHTLY_MODEL,
            thing_classes=things,
            stuff_classes=stuff,
            image_size=(640, 640),
            image_normalize={"mean": _MEAN, "std": _STD},
            num_queries=200,
            num_joint_blocks=3,
            load_weights=False,
        )
        return model.to(device).eval()
    from panoptic_train.data.coco import ClassMapping
    from panoptic_train.inference.model import PanopticSegmentationModel
    from panoptic_train.models.registry import create_model

    classes = ClassMapping(
        class_ids=tuple(range(NUM_CLASSES)),
        names=tuple({**things, **stuff}.values()),
        is_thing=tuple(i < 80 for i in range(NUM_CLASSES)),
    )
    network = create_model(_OUR_MODEL, NUM_CLASSES, backbone_weights=None)
    return PanopticSegmentationModel(
        network,
        classes,
        model_name=_OUR_MODEL,
        mean=_MEAN,
        std=_STD,
        device=device,
        precision=precision,
        compile=compile,
    )


def _sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else lambda: None


def _predict(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    device = "cuda" if spec["cuda"] else "cpu"
    image, runs = spec["image"], spec["runs"]
    if spec["system"] == "lightly":
        model = _model("lightly", device)
        with torch.autocast("cuda", torch.bfloat16, enabled=spec["cuda"]):
            seconds = _median_seconds(lambda: model.predict(image), runs, _sync(device))
        return {"seconds": seconds}
    precision = "bf16" if spec["cuda"] else "fp32"
    model = _model("ours", device, precision, compile=spec.get("compile", False))
    return {"seconds": _median_seconds(lambda: model.predict(image), runs, _sync(device))}


def _export(spec: dict[str, Any]) -> dict[str, Any]:
    """Write the system's own ONNX file of the fp32 model to spec["path"]."""
    if spec["system"] == "lightly":
        _model("lightly", "cpu").export_onnx(spec["path"])
    else:
        _model("ours", "cpu").export_onnx(spec["path"])
    return {}


def _onnxruntime(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    session = ort.InferenceSession(spec["path"], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    images = np.random.default_rng(0).normal(size=(1, 3, 640, 640)).astype(np.float32)
    seconds = _median_seconds(lambda: session.run(None, {name: images}), spec["runs"], lambda: None)
    return {"seconds": seconds}


def _merge(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    merge = _lightly_merge() if spec["system"] == "lightly" else _our_merge()
    result = {}
    with torch.inference_mode():
        for kept, logits in torch.load(spec["logits"]).items():
            call = functools.partial(merge, *logits)
            result[f"seconds_{kept}"] = _median_seconds(call, spec["runs"], lambda: None)
    return result


def _lightly_merge() -> Callable[..., object]:
    """LightlyTrain's inference after its network: upsampling to the input, then its merge."""
    import torch

    model = _model("lightly", "cpu")
    meta = {"orig_h": 480, "orig_w": 640, "crop_h": 480, "crop_w": 640}

    def merge(class_logits: Any, mask_logits: Any) -> object:
        upsampled = torch.nn.functional.interpolate(mask_logits, (640, 640), mode="bilinear")
        return model.postprocess((upsampled, class_logits), [meta], 0.8, 0.5, 0.8)

    return merge


def _our_merge() -> Callable[..., object]:
    from panoptic_train._host_memory import tune_for_tensors
    from panoptic_train.runtime.postprocess import panoptic_postprocess

    # As in `predict`: every CPU predictor of the package sets up glibc's malloc this way (with
    # glibc's defaults the merge's 2 MB arrays are mmapped and faulted in anew: 40 ms, not 24).
    tune_for_tensors()

    is_thing = [i < 80 for i in range(NUM_CLASSES)]
    sizes = ((640, 640), [(480, 640)], [(480, 640)])

    def merge(class_logits: Any, mask_logits: Any) -> object:
        return panoptic_postprocess(class_logits, mask_logits, is_thing, *sizes)

    return merge


def _graph_latency(spec: dict[str, Any]) -> dict[str, Any]:
    """Our network's batch-1 forward on CUDA in bf16, eager and replayed as a CUDA graph."""
    import torch

    model = _model("ours", "cuda", "bf16")
    network = model.network
    static = torch.randn(1, 3, 640, 640, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        eager = _median_seconds(lambda: network(static), spec["runs"], torch.cuda.synchronize)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                network(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            network(static)
        replay = _median_seconds(graph.replay, spec["runs"], torch.cuda.synchronize)
    return {"eager_seconds": eager, "graph_seconds": replay}


def _floor(spec: dict[str, Any]) -> dict[str, Any]:
    """FLOPs of our network (eval batch 1) and of a training step (forward, the loss with 8
    target masks per image, backward, at the train batch), and this machine's fp32 matmul rate
    on the benchmark's threads. Attention is counted with the math backend (FlopCounterMode
    does not know the fused CPU kernel)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from panoptic_train.train.loss import MaskClassificationLoss

    sys.path.insert(0, str(Path(__file__).parent))
    from forward import count_flops

    network = _model("ours", "cpu").network
    forward = count_flops(network)
    network.train()
    masks = torch.zeros(8, 640, 640, dtype=torch.bool)
    for index, band in enumerate(masks):
        band[80 * index : 80 * (index + 1)] = True
    target = {"masks": masks, "labels": torch.arange(8), "ignore": torch.zeros(640, 640).bool()}
    batch = spec["settings"]["batch_size"]
    criterion = MaskClassificationLoss(num_classes=NUM_CLASSES, num_points=12544)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        output = network(torch.randn(batch, 3, 640, 640))
        criterion(output.class_logits, output.mask_projections, [target] * batch).total.backward()
    train = counter.get_total_flops()
    size = 4096
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = min(_median_seconds(lambda: a @ b, 3, lambda: None) for _ in range(2))
    return {
        "forward_gflop": forward / 1e9,
        "train_gflop": train / 1e9,
        "peak_gflops": 2 * size**3 / seconds / 1e9,
    }


_KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "train": _train,
    "predict": _predict,
    "export": _export,
    "onnx": _onnxruntime,
    "merge": _merge,
    "graph": _graph_latency,
    "floor": _floor,
}


def _child(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    report(_KINDS[spec["kind"]](spec))


# ---------------------------------------------------------------- the parent


class _Runner:
    """Starts each measurement in its own process, with the same threads for both systems."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.count = 0

    def __call__(self, kind: str, system: str, **spec: Any) -> dict[str, Any]:
        self.count += 1
        spec = {
            "kind": kind,
            "system": system,
            "threads": self.args.threads,
            "settings": {
                "steps": self.args.steps,
                "batch_size": 2,
                "num_workers": self.args.num_workers,
            },
            "model_args": json.loads(self.args.model_args) if system == "ours" else {},
            "out": str(self.tmp / f"{kind}-{system}-{self.count}"),
            "runs": self.args.runs,
            "cuda": False,
            **spec,
        }
        python = self.args.lightly_python if system == "lightly" else sys.executable
        result = run_child(python, __file__, spec, self.args.threads, f"{kind} ({system})")
        print(f"  {kind:8s} {system:8s} {json.dumps(result)}", flush=True)
        return result


def _write_inputs(root: Path) -> dict[str, str]:
    """The synthetic data set, the 512x512 JPEG and the merge's logits (ours, in this venv)."""
    import torch
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).parent))
    from predict import confident_logits

    from panoptic_train.data.synthetic import write_dataset

    data = root / "data"
    write_dataset(data, 16, image_size=(480, 640), seed=0, split="train")
    write_dataset(data, 2, image_size=(480, 640), seed=1, split="val")
    val = sorted((data / "images" / "val").iterdir())[0]
    image = root / "image512.jpg"
    Image.open(val).convert("RGB").resize((512, 512)).save(image, quality=90)
    logits = root / "logits.pt"
    torch.save({kept: confident_logits(kept, torch.device("cpu")) for kept in KEPT}, logits)
    return {"data": str(data), "image": str(image), "logits": str(logits)}


def _measure(args: argparse.Namespace, run: _Runner, inputs: dict[str, str]) -> dict:
    systems = [args.only] if args.only else list(SYSTEMS)
    results: dict[str, dict[str, list[dict]]] = {row: {s: [] for s in systems} for row in args.rows}
    onnx_files = {}
    if "onnx" in args.rows:
        for system in systems:
            onnx_files[system] = str(run.tmp / f"{system}.onnx")
            run("export", system, path=onnx_files[system])
    for round_index in range(args.rounds):
        print(f"round {round_index + 1} of {args.rounds}", flush=True)
        for row in args.rows:
            for system in systems:
                extra = {"path": onnx_files.get(system)} if row == "onnx" else {}
                results[row][system].append(run(row, system, **inputs, **extra))
        for name, variant in args.variants.items():  # more training rows of ours
            results.setdefault(f"train, {name}", {"ours": []})["ours"].append(
                run("train", "ours", **inputs, **variant)
            )
    if "floor" not in args.skip:
        results["floor"] = run("floor", "ours")
    results["cuda"] = _cuda_rows(args, run, inputs, systems)
    return results


def _cuda_rows(args: argparse.Namespace, run: _Runner, inputs: dict, systems: list) -> dict:
    import torch

    if not torch.cuda.is_available():
        print("CUDA rows skipped: no GPU on this machine", flush=True)
        return {}
    rows: dict[str, dict[str, list[dict]]] = {}
    for _ in range(args.rounds):
        for system in systems:
            for row in ("train", "predict"):
                rows.setdefault(f"cuda {row}", {}).setdefault(system, [])
                rows[f"cuda {row}"][system].append(run(row, system, cuda=True, **inputs))
        for row, spec in (("cuda predict compiled", {"compile": True}),):
            rows.setdefault(row, {}).setdefault("ours", []).append(
                run("predict", "ours", cuda=True, **spec, **inputs)
            )
        rows.setdefault("cuda graph", {}).setdefault("ours", []).append(run("graph", "ours"))
    return rows


def _median(values: list[dict], key: str) -> float:
    return statistics.median(value[key] for value in values)


def _report(results: dict, args: argparse.Namespace) -> list[str]:
    """Markdown table: medians, ratio ours / LightlyTrain, the floor where it applies."""
    floor = results.get("floor")
    lines = [
        "| row | LightlyTrain | panoptic_train | ratio | GFLOP | ours GFLOP/s | of peak |",
        "|---|---|---|---|---|---|---|",
    ]

    def line(name: str, row: str, key: str, unit: str, gflop: float | None = None) -> None:
        values = results.get(row, {})
        ours = _median(values["ours"], key) if values.get("ours") else None
        theirs = _median(values["lightly"], key) if values.get("lightly") else None
        ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
        rate = share = "-"
        if gflop and ours and floor:
            rate = f"{gflop / ours:.0f}"
            share = f"{gflop / ours / floor['peak_gflops']:.0%}"

        def cell(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f} {unit}"

        gflop_cell = f"{gflop:.0f}" if gflop else "-"
        cells = [name, cell(theirs), cell(ours), ratio, gflop_cell, rate, share]
        lines.append("| " + " | ".join(cells) + " |")

    forward = floor["forward_gflop"] if floor else None
    train = floor["train_gflop"] if floor else None
    for row in [row for row in results if row.startswith("train")]:
        suffix = row[len("train") :]
        line(f"train s/step (steps 6-25){suffix}", row, "seconds_per_step", "s", train)
        line(f"train peak RSS{suffix}", row, "peak_rss_gib", "GiB")
        line(f"DataLoader stall per step{suffix}", row, "stall_per_step", "s")
    if "predict" in results:
        line("`predict` 512x512 (input 640)", "predict", "seconds", "s", forward)
    if "onnx" in results:
        line("onnxruntime, own export, batch 1", "onnx", "seconds", "s", forward)
    if "merge" in results:
        for kept in KEPT:
            line(f"merge, {kept} confident queries", "merge", f"seconds_{kept}", "s")
    for row, values in results.get("cuda", {}).items():
        key = "seconds_per_step" if row == "cuda train" else "seconds"
        for system, measured in values.items():
            if row == "cuda graph":
                lines.append(
                    f"| cuda graph ({system}) | eager {_median(measured, 'eager_seconds'):.4f} s "
                    f"| replay {_median(measured, 'graph_seconds'):.4f} s | | | | |"
                )
            else:
                lines.append(f"| {row} ({system}) | | {_median(measured, key):.4f} s | | | | |")
    if floor:
        lines.append(
            f"\nfp32 peak of this CPU on {args.threads} threads (4096^3 matmul): "
            f"{floor['peak_gflops']:.0f} GFLOP/s; network forward at 640x640: "
            f"{floor['forward_gflop']:.1f} GFLOP; training step (forward, loss, backward), "
            f"batch 2: {floor['train_gflop']:.1f} GFLOP"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--lightly-python", help="Python of a venv with lightly-train==0.18.0")
    parser.add_argument("--only", choices=SYSTEMS, help="measure one system")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--skip", nargs="*", choices=["floor"], default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=7, help="timed calls per latency process")
    parser.add_argument("--steps", type=int, default=25, help="training steps (6.. are timed)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch/OMP threads, both systems")
    parser.add_argument("--model-args", default="{}", help="JSON model_args for our runs only")
    parser.add_argument(
        "--variants",
        type=json.loads,
        default={},
        help='JSON {name: spec} of more training rows of ours per round, e.g. {"compiled": '
        '{"compile": true}, "checkpointed": {"model_args": {"activation_checkpointing": true}}}',
    )
    parser.add_argument("--json-out", type=Path, help="write all results as JSON here")
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    if args.only != "ours" and not args.lightly_python:
        parser.error("--lightly-python is required unless --only ours")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} threads, load average {os.getloadavg()}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    with tempfile.TemporaryDirectory() as name:
        run = _Runner(args, Path(name))
        results = _measure(args, run, _write_inputs(Path(name)))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    print(f"load average at the end {os.getloadavg()}")
    print("\n".join(_report(results, args)))


if __name__ == "__main__":
    main()
