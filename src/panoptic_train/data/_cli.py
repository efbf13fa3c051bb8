"""`panoptic-train check-data`: every problem of a COCO panoptic dataset at once, or a summary."""

from __future__ import annotations

import argparse
import sys

HELP = (
    "Check a COCO panoptic dataset (JSON, images, mask PNGs) and list every problem; exit code 1 "
    "if there is any, else print a summary (images, segments per class, things/stuff)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="folder of the split's images")
    parser.add_argument("--masks", required=True, help="folder of the split's mask PNGs")
    parser.add_argument("--annotations", required=True, help="the split's COCO panoptic JSON")
    parser.add_argument(
        "--ignore-classes",
        type=int,
        nargs="*",
        default=[],
        metavar="ID",
        help="category ids treated as void (as data.ignore_classes in training)",
    )
    parser.add_argument(
        "--allow-unlabeled",
        action="store_true",
        help="accept images without annotation as all-void negatives (as data.allow_unlabeled)",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="processes decoding images and masks in parallel (default 0: this process)",
    )


def run(args: argparse.Namespace) -> int:
    from panoptic_train.data.check import check_dataset

    report = check_dataset(
        args.images,
        args.masks,
        args.annotations,
        ignore_classes=args.ignore_classes,
        allow_unlabeled=args.allow_unlabeled,
        num_workers=args.num_workers,
    )
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.errors:
        print(f"{len(report.errors)} problem(s) found:", file=sys.stderr)
        for error in report.errors:
            print(f"  - {error}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"No problems found ({len(report.warnings)} warning(s)).")
    return 0
