"""`panoptic-train predict`: panoptic segmentation of image files into COCO panoptic PNG + JSON."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, get_args

from panoptic_train._types import InferencePrecision
from panoptic_train.cli import EXIT_OK, EXIT_SOME_INPUTS_FAILED, positive_int
from panoptic_train.errors import ConfigError

if TYPE_CHECKING:
    from panoptic_train._distributed import Ranks

HELP = "Predict panoptic segmentations of images (files or folders) into COCO panoptic files."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from panoptic_train.data.io import DEFAULT_MAX_IMAGE_PIXELS  # numpy, PIL

    parser.add_argument(
        "model",
        metavar="MODEL",
        help="exported model (exported_*.pt), training checkpoint (.ckpt) or fine-tuned model name",
    )
    parser.add_argument(
        "inputs", metavar="INPUT", nargs="+", help="image files and/or folders of images"
    )
    parser.add_argument(
        "--out", required=True, help="output folder; must be empty unless --overwrite or --resume"
    )
    reuse = parser.add_mutually_exclusive_group()
    reuse.add_argument(
        "--overwrite",
        action="store_true",
        help="remove the predictions already in --out (only this tool's files) and start afresh",
    )
    reuse.add_argument(
        "--resume",
        action="store_true",
        help="complete the predictions in --out: images already written there are skipped "
        "(same model and thresholds only)",
    )
    parser.add_argument(
        "--overlay", action="store_true", help="also write overlays to OUT/overlays/"
    )
    parser.add_argument(
        "--annotations",
        help="COCO JSON whose image ids the predictions should use (matched by file name), so "
        "that `panoptic-train evaluate` can score them against it; default id: the file stem",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="images per forward pass (8)"
    )
    parser.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="larger images are skipped, from their header, before decoding "
        f"({DEFAULT_MAX_IMAGE_PIXELS:,})",
    )
    parser.add_argument("--device", help="'cpu' or 'cuda' (default: cuda when available)")
    parser.add_argument(
        "--devices",
        type=positive_int,
        default=1,
        help="processes to predict in, each with its share of the images and, with CUDA, a GPU "
        "of its own (1); started through torch.distributed's launcher. Under torchrun or srun, "
        "leave it out",
    )
    parser.add_argument(
        "--precision", default="auto", choices=get_args(InferencePrecision), help="(auto)"
    )
    for name, default in (("threshold", 0.8), ("mask-threshold", 0.5), ("overlap-threshold", 0.8)):
        parser.add_argument(
            f"--{name}", type=float, help=f"override the model's {name} (usually {default})"
        )


def run(args: argparse.Namespace) -> int:
    from panoptic_train._distributed import launched, process_group, run_processes

    launch = launched()
    if launch is None:
        if args.devices > 1:
            return run_processes(args.devices, ["-m", "panoptic_train", *args.command_line])
        return _predict(args, args.device, None)
    if args.devices not in (1, launch.processes_per_node):
        raise ConfigError(
            f"--devices {args.devices}, but the launcher started {launch.processes_per_node} "
            "processes per node. Leave --devices out under torchrun or srun: each of their "
            "processes predicts its share."
        )
    with process_group(launch) as ranks:
        return _predict(args, _rank_device(args.device, launch.local_rank), ranks)


def _rank_device(device: str | None, local_rank: int) -> str:
    """A process's device in a job: its node's GPU number `local_rank` when it uses CUDA."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"Process {local_rank} of this machine has no GPU of its own: there are "
            f"{torch.cuda.device_count()}. Start at most one process per GPU, or pass --device cpu."
        )
    return f"cuda:{local_rank}"


def _predict(args: argparse.Namespace, device: str | None, ranks: Ranks | None) -> int:
    from PIL import Image
    from tqdm import tqdm

    from panoptic_train.inference.model import load_model
    from panoptic_train.inference.predict_files import (
        collect_images,
        image_ids_from_annotations,
        predict_files,
    )
    from panoptic_train.inference.prediction_folder import PredictionFolder

    images = collect_images(args.inputs)
    image_ids = image_ids_from_annotations(args.annotations) if args.annotations else None
    # Before the model loads: a folder that cannot be written or holds another run fails fast.
    folder = PredictionFolder.open(args.out, overwrite=args.overwrite, resume=args.resume)
    # --max-image-pixels is checked on every header; PIL's own process-wide limit would refuse
    # a larger --max-image-pixels (and warns below it), so this process leaves the limit to it.
    Image.MAX_IMAGE_PIXELS = None
    model = load_model(args.model, device=device, precision=args.precision)
    # In a job, the bar is rank 0's, over its share of the images.
    rank_zero = ranks is None or ranks.rank == 0
    total = len(folder.share(images, args.batch_size))
    with tqdm(total=total, unit="img", desc="predict", disable=not rank_zero) as bar:
        report = predict_files(
            model,
            images,
            folder,
            overlay=args.overlay,
            batch_size=args.batch_size,
            image_ids=image_ids,
            max_image_pixels=args.max_image_pixels,
            on_progress=bar.update,
            on_skip=lambda path, reason: bar.write(f"skipped {path}: {reason}", file=sys.stderr),
            threshold=args.threshold,
            mask_threshold=args.mask_threshold,
            overlap_threshold=args.overlap_threshold,
        )
    mine = (len(report.written), len(report.resumed), report.skipped)
    parts = [mine] if ranks is None else ranks.gather(mine)
    written = sum(part[0] for part in parts)
    resumed = sum(part[1] for part in parts)
    skipped = {path: reason for part in parts for path, reason in part[2].items()}
    if rank_zero:
        kept = f" ({resumed} done before, kept)" if resumed else ""
        print(f"Wrote {written} predictions{kept}: {report.predictions_json}")
        if skipped:
            print(f"Skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
            for path, reason in skipped.items():
                print(f"  {path}: {reason}", file=sys.stderr)
    return EXIT_SOME_INPUTS_FAILED if skipped else EXIT_OK
