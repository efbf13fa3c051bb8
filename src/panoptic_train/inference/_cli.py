"""`panoptic-train predict`: panoptic segmentation of image files into COCO panoptic PNG + JSON."""

from __future__ import annotations

import argparse
import sys

HELP = "Predict panoptic segmentations of images (files or folders) into COCO panoptic files."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="exported model (exported_*.pt), training checkpoint (.ckpt) or fine-tuned model name",
    )
    parser.add_argument(
        "inputs", metavar="INPUT", nargs="+", help="image files and/or folders of images"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--overlay", action="store_true", help="also write overlays to OUT/overlays/"
    )
    parser.add_argument(
        "--annotations",
        help="COCO JSON whose image ids the predictions should use (matched by file name), so "
        "that `panoptic-train evaluate` can score them against it; default id: the file stem",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (8)")
    parser.add_argument("--device", help="'cpu' or 'cuda' (default: cuda when available)")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="(auto)"
    )
    for name, default in (("threshold", 0.8), ("mask-threshold", 0.5), ("overlap-threshold", 0.8)):
        parser.add_argument(
            f"--{name}", type=float, help=f"override the model's {name} (usually {default})"
        )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from panoptic_train.inference.model import load_model
    from panoptic_train.inference.predict_files import (
        collect_images,
        image_ids_from_annotations,
        predict_files,
    )

    images = collect_images(args.inputs)
    image_ids = image_ids_from_annotations(args.annotations) if args.annotations else None
    model = load_model(args.model, device=args.device, precision=args.precision)
    with tqdm(total=len(images), unit="img", desc="predict") as bar:
        report = predict_files(
            model,
            images,
            args.out,
            overlay=args.overlay,
            batch_size=args.batch_size,
            image_ids=image_ids,
            on_progress=bar.update,
            on_skip=lambda path, reason: bar.write(f"skipped {path}: {reason}", file=sys.stderr),
            threshold=args.threshold,
            mask_threshold=args.mask_threshold,
            overlap_threshold=args.overlap_threshold,
        )
    print(f"Wrote {len(report.written)} predictions: {report.predictions_json}")
    if report.skipped:
        print(f"Skipped {len(report.skipped)} unreadable image(s):", file=sys.stderr)
        for path, reason in report.skipped.items():
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0
