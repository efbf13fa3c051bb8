"""panoptic_train against LightlyTrain 0.18, side by side on the same data and settings.

Quality mode (the default): both systems train on one COCO panoptic folder for several seeds,
each run in its own process, interleaved (ours, theirs, ours, theirs, ...). Each system's own
`load_model(...).predict(...)` then labels the val images; the results are written as COCO
panoptic files by one writer in this script and scored by panoptic_train's evaluator (and by
COCO's panopticapi when it is installed), so both are judged by the same rules. Printed per
seed: PQ / Things / Stuff, the steps at which the run's own validation first reached PQ 50 and
70, and wall seconds per step (validation included); then the mean and the worst seed.

LightlyTrain is a measurement baseline only: it runs from a separate virtual environment whose
Python is given with `--lightly-python` (see benchmarks/README.md), never inside this package.

    python benchmarks/vs_lightly_train.py --lightly-python /path/to/lt_venv/bin/python
    python benchmarks/vs_lightly_train.py --lightly-python ... --data my_coco_panoptic_folder
    python benchmarks/vs_lightly_train.py --only ours --model-args '{"weight_decay": 0.0}'

`--data` is a folder with images/{train,val}, annotations/{train,val} and
annotations/{train,val}.json (the layout `panoptic_train.data.synthetic.write_dataset` writes,
which is the default: 40 train / 30 val images of 128x128, seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _child import report, run_child
from PIL import Image

SYSTEMS = ("ours", "lightly")
_LIGHTLY_MODEL = "dinov3/vitt16-notpretrained-eomt"
_OUR_MODEL = "dinov3/vitt16-eomt"


# ---------------------------------------------------------------- shared by both child processes


def _write_prediction(masks: np.ndarray, stem: str, out_dir: Path) -> dict[str, Any]:
    """One COCO panoptic PNG + annotation entry from a predict() result (H, W, 2), whose second
    channel holds segment ids unique within the image (-1 = void in both channels)."""
    classes, segments = masks[..., 0].astype(np.int64), masks[..., 1].astype(np.int64)
    ids = np.zeros(segments.shape, dtype=np.int64)
    infos = []
    for number, segment in enumerate(np.unique(segments[segments >= 0]), start=1):
        where = segments == segment
        ids[where] = number
        infos.append({"id": number, "category_id": int(classes[where][0])})
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(out_dir / f"{stem}.png")
    return {"file_name": f"{stem}.png", "segments_info": infos}


def _predict_to_files(model: Any, gt_json: Path, images: Path, out: Path) -> None:
    """Predict every val image with a system's model object and write COCO panoptic files."""
    gt = json.loads(gt_json.read_text())
    pngs = out / "panoptic"
    pngs.mkdir(parents=True, exist_ok=True)
    annotations = []
    for entry in gt["images"]:
        result = model.predict(str(images / entry["file_name"]))
        masks = result["masks"].cpu().numpy()
        annotation = _write_prediction(masks, Path(entry["file_name"]).stem, pngs)
        annotation["image_id"] = entry["id"]
        annotations.append(annotation)
    (out / "predictions.json").write_text(
        json.dumps({"annotations": annotations, "categories": gt["categories"]})
    )


def _child(spec: dict[str, Any]) -> None:
    """Train one system for one seed, predict the val set, print a JSON line of results."""
    data_root = Path(spec["data"])
    data = {
        split: {
            "images": str(data_root / "images" / split),
            "masks": str(data_root / "annotations" / split),
            "annotations": str(data_root / "annotations" / f"{split}.json"),
        }
        for split in ("train", "val")
    }
    out = Path(spec["out"])
    settings = spec["settings"]
    # The same images per optimiser step for both: LightlyTrain's batch_size is one micro-batch
    # (its "auto" accumulation tops it up to 16), ours is the global batch of the step.
    accumulate = settings.get("accumulate")
    batch = settings["batch_size"]
    if spec["system"] == "lightly":
        sizes = {"batch_size": batch}
        if accumulate is not None:
            sizes["gradient_accumulation_steps"] = accumulate
    else:
        sizes = {
            "batch_size": batch * (accumulate or 1),
            "gradient_accumulation_steps": accumulate or 1,
        }
    common = {
        "out": str(out / "run"),
        "data": data,
        "steps": settings["steps"],
        **sizes,
        "num_workers": settings["num_workers"],
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "seed": spec["seed"],
        "transform_args": {"image_size": tuple(settings["image_size"])},
    }
    model_args = {
        "num_queries": settings["num_queries"],
        "loss_num_points": settings["loss_num_points"],
        "lr_warmup_steps": tuple(settings["lr_warmup_steps"]),
        **spec["model_args"],
    }
    val_every = settings["val_every"]
    started = time.perf_counter()
    if spec["system"] == "lightly":
        os.environ["LIGHTLY_TRAIN_EVENTS_DISABLED"] = "1"
        import lightly_train

        lightly_train.train_panoptic_segmentation(
            model=_LIGHTLY_MODEL,
            model_args=model_args,
            logger_args={"val_every_num_steps": val_every, "log_every_num_steps": val_every},
            **common,
        )
        seconds = time.perf_counter() - started
        model = lightly_train.load_model(str(out / "run/exported_models/exported_best.pt"))
    else:
        import panoptic_train

        panoptic_train.train_panoptic_segmentation(
            model=_OUR_MODEL,
            model_args={"backbone_weights": None, **model_args},
            logger_args={"val_every_num_steps": val_every, "log_every_num_steps": val_every},
            **common,
        )
        seconds = time.perf_counter() - started
        model = panoptic_train.load_model(out / "run/exported_models/exported_best.pt")
    _predict_to_files(model, data_root / "annotations/val.json", data_root / "images/val", out)
    report({"seconds_per_step": seconds / settings["steps"]})


def _val_curve(system: str, run: Path, steps: int) -> list[tuple[int, float]]:
    """(step, val PQ in 0..1) from the run's TensorBoard events. LightlyTrain writes them into
    the run folder and numbers a step by its 0-based index; ours count steps done."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = run if system == "lightly" else run / "logs" / "tensorboard"
    events = EventAccumulator(str(logdir))
    events.Reload()
    if "val_metric/pq" not in events.Tags()["scalars"]:
        return []
    curve = [(event.step, event.value) for event in events.Scalars("val_metric/pq")]
    if system == "lightly" and curve and curve[-1][0] == steps - 1:
        curve = [(step + 1, value) for step, value in curve]
    return curve


# ---------------------------------------------------------------- the parent


def _score(data_root: Path, out: Path) -> dict[str, dict[str, float]]:
    from panoptic_train.evaluation.files import evaluate_panoptic

    kwargs = {
        "gt_json": data_root / "annotations/val.json",
        "gt_masks": data_root / "annotations/val",
        "pred_json": out / "predictions.json",
        "pred_masks": out / "panoptic",
    }
    ours = evaluate_panoptic(**kwargs)
    scores = {"ours": {key: 100 * ours[key]["pq"] for key in ("All", "Things", "Stuff")}}
    try:
        from panopticapi.evaluation import pq_compute
    except ImportError:
        return scores
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        reference = pq_compute(
            str(kwargs["gt_json"]),
            str(kwargs["pred_json"]),
            str(kwargs["gt_masks"]),
            str(kwargs["pred_masks"]),
        )
    scores["panopticapi"] = {key: 100 * reference[key]["pq"] for key in ("All", "Things", "Stuff")}
    return scores


def _first_step(curve: list[tuple[int, float]], level: float) -> int | None:
    """The first validated step whose PQ (0..1 in both systems' logs) reaches `level` (0..100)."""
    for step, value in curve:
        if 100 * value >= level:
            return step
    return None


def _run(system: str, seed: int, args: argparse.Namespace, data_root: Path, tmp: Path) -> dict:
    out = tmp / f"{system}-seed{seed}"
    spec = {
        "system": system,
        "seed": seed,
        "data": str(data_root),
        "out": str(out),
        "settings": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "accumulate": args.accumulate,
            "num_workers": args.num_workers,
            "image_size": args.image_size,
            "num_queries": args.num_queries,
            "loss_num_points": args.loss_num_points,
            "lr_warmup_steps": args.lr_warmup_steps,
            "val_every": args.val_every,
        },
        "model_args": json.loads(args.model_args) if system == "ours" else {},
    }
    python = args.lightly_python if system == "lightly" else sys.executable
    result = run_child(python, __file__, spec, args.threads, f"{system} seed {seed}")
    result["curve"] = _val_curve(system, out / "run", args.steps)
    result["scores"] = _score(data_root, out)
    return result


def _default_data(root: Path) -> Path:
    from panoptic_train.data.synthetic import write_dataset

    write_dataset(root, 40, image_size=(128, 128), seed=0, split="train")
    write_dataset(root, 30, image_size=(128, 128), seed=0, split="val")
    return root


def _summary(system: str, results: dict[int, dict]) -> list[str]:
    rows = []
    for seed, result in sorted(results.items()):
        score = result["scores"]["ours"]
        api = result["scores"].get("panopticapi")
        api_text = f"  (panopticapi {api['All']:.1f})" if api else ""
        rows.append(
            f"| {system} | {seed} | {score['All']:.1f} | {score['Things']:.1f} | "
            f"{score['Stuff']:.1f} | {_first_step(result['curve'], 50)} | "
            f"{_first_step(result['curve'], 70)} | {result['seconds_per_step']:.3f} |{api_text}"
        )
    for name, key in (("mean", "All"),):
        values = [result["scores"]["ours"][key] for result in results.values()]
        things = [result["scores"]["ours"]["Things"] for result in results.values()]
        stuff = [result["scores"]["ours"]["Stuff"] for result in results.values()]
        seconds = [result["seconds_per_step"] for result in results.values()]
        rows.append(
            f"| {system} | {name} | {statistics.mean(values):.1f} | {statistics.mean(things):.1f}"
            f" | {statistics.mean(stuff):.1f} | | | {statistics.median(seconds):.3f} |"
        )
        rows.append(f"| {system} | worst | {min(values):.1f} | {min(things):.1f} | | | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--lightly-python", help="Python of a venv with lightly-train==0.18.0")
    parser.add_argument("--only", choices=SYSTEMS, help="run one system (ablations)")
    parser.add_argument("--data", type=Path, help="COCO panoptic folder (default: synthetic)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4, help="images per micro-batch")
    parser.add_argument(
        "--accumulate",
        type=int,
        default=4,
        help="micro-batches per optimiser step, for both (4 = what LightlyTrain's 'auto' "
        "accumulation picks for batch 4: 16 images a step)",
    )
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 128])
    parser.add_argument("--num-queries", type=int, default=20)
    parser.add_argument("--loss-num-points", type=int, default=1024)
    parser.add_argument("--lr-warmup-steps", type=int, nargs=2, default=[10, 10])
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2, help="OMP threads, same for both")
    parser.add_argument("--model-args", default="{}", help="JSON model_args for our runs only")
    parser.add_argument("--json-out", type=Path, help="write all results as JSON here")
    parser.add_argument(
        "--keep", type=Path, help="keep the runs (models, logs, predictions) in this folder"
    )
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    systems = [args.only] if args.only else list(SYSTEMS)
    if "lightly" in systems and not args.lightly_python:
        parser.error("--lightly-python is required unless --only ours")
    results: dict[str, dict[int, dict]] = {system: {} for system in systems}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = args.keep or Path(tmp_name)
        data_root = args.data or _default_data(tmp / "data")
        for seed in args.seeds:
            for system in systems:
                results[system][seed] = _run(system, seed, args, data_root, tmp)
                if args.json_out:  # after every run, so that an interruption loses little
                    args.json_out.write_text(json.dumps(results, indent=1))
                score = results[system][seed]["scores"]["ours"]
                print(
                    f"{system} seed {seed}: PQ {score['All']:.1f} (Things {score['Things']:.1f}, "
                    f"Stuff {score['Stuff']:.1f})",
                    flush=True,
                )
    print("| system | seed | PQ | Things | Stuff | step PQ≥50 | step PQ≥70 | s/step |")
    print("|---|---|---|---|---|---|---|---|")
    for system in systems:
        print("\n".join(_summary(system, results[system])))


if __name__ == "__main__":
    main()
