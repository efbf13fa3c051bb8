"""`panoptic-train evaluate`: PQ of COCO panoptic predictions from files, as panopticapi scores."""

from __future__ import annotations

import argparse
import time

HELP = (
    "Score COCO panoptic predictions (JSON + PNG folder, from any system) against ground truth: "
    "PQ, SQ, RQ for All/Things/Stuff and per class, identical to COCO's panopticapi."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt-json", required=True, help="ground-truth COCO panoptic JSON")
    parser.add_argument("--gt-masks", required=True, help="folder of the ground-truth PNGs")
    parser.add_argument("--pred-json", required=True, help="prediction COCO panoptic JSON")
    parser.add_argument("--pred-masks", required=True, help="folder of the prediction PNGs")
    parser.add_argument(
        "--out", default=None, help="also write the metrics to this JSON file (e.g. metrics.json)"
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="threads of the builtin backend (default: one per CPU core, at most 8)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "hotcoco", "builtin"),
        default="auto",
        help="who decodes and scores the PNGs: the compiled hotcoco package when installed "
        "(auto, default), or this package (builtin); the numbers are identical",
    )


def run(args: argparse.Namespace) -> int:
    from panoptic_train.evaluation.files import evaluate_panoptic
    from panoptic_train.evaluation.report import format_report

    start = time.perf_counter()
    results = evaluate_panoptic(
        args.gt_json,
        args.gt_masks,
        args.pred_json,
        args.pred_masks,
        out=args.out,
        num_workers=args.num_workers,
        backend=args.backend,
    )
    print(format_report(results))
    print(f"\nScored in {time.perf_counter() - start:.2f} s.")
    if args.out is not None:
        print(f"Metrics written to {args.out}")
    return 0
