"""`panoptic-train export`: a trained model to an ONNX file or a TensorRT engine."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import get_args

from panoptic_train._types import ExportPrecision

HELP = "Export a model to ONNX or to a TensorRT engine (with verification against PyTorch)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="exported model (exported_*.pt), training checkpoint (.ckpt) or fine-tuned model name",
    )
    parser.add_argument("--format", required=True, choices=["onnx", "tensorrt"], help="target")
    parser.add_argument("--out", required=True, help="file to write (.onnx / .engine)")
    parser.add_argument(
        "--precision", default="fp32", choices=get_args(ExportPrecision), help="(fp32)"
    )
    parser.add_argument("--height", type=int, help="input height, multiple of 16 (model's)")
    parser.add_argument("--width", type=int, help="input width, multiple of 16 (model's)")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    parser.add_argument(
        "--device",
        help="device the model is loaded on: 'cpu' (onnx default) or 'cuda' (tensorrt default; "
        "also speeds up tracing fp16 ONNX graphs)",
    )
    onnx = parser.add_argument_group("onnx")
    onnx.add_argument(
        "--batch-size", type=int, default=1, help="example batch to trace (1; any batch runs)"
    )
    onnx.add_argument("--opset", type=int, help="ONNX opset, 17..20 (17)")
    onnx.add_argument("--no-simplify", action="store_true", help="do not run onnxslim")
    onnx.add_argument(
        "--postprocess",
        action="store_true",
        help="bake the panoptic merge into the graph (outputs masks, segment_ids, scores, labels)",
    )
    tensorrt = parser.add_argument_group("tensorrt")
    tensorrt.add_argument("--workspace-gb", type=float, default=4.0, help="builder memory (4)")
    tensorrt.add_argument("--min-batch-size", type=int, default=1, help="(1)")
    tensorrt.add_argument("--opt-batch-size", type=int, default=1, help="tuned for (1)")
    tensorrt.add_argument("--max-batch-size", type=int, default=8, help="(8)")


def run(args: argparse.Namespace) -> int:
    from panoptic_train._io import ensure_output_file
    from panoptic_train.inference.model import load_model

    # Verification results and the written file are logged by the export modules.
    export_logger = logging.getLogger("panoptic_train.export")
    if not export_logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        export_logger.addHandler(handler)
    export_logger.setLevel(logging.INFO)

    if args.format == "tensorrt":
        from panoptic_train.export.tensorrt_predictor import require_tensorrt

        require_tensorrt("Building a TensorRT engine")  # before the minutes of loading a model
    ensure_output_file(args.out)  # before loading the model
    device = args.device or ("cuda" if args.format == "tensorrt" else "cpu")
    model = load_model(args.model, device=device, precision="fp32")
    common = {
        "precision": args.precision,
        "height": args.height,
        "width": args.width,
        "verify": not args.no_verify,
    }
    if args.format == "onnx":
        model.export_onnx(
            args.out,
            batch_size=args.batch_size,
            simplify=not args.no_simplify,
            opset=args.opset,
            postprocess=args.postprocess,
            **common,
        )
    else:
        model.export_tensorrt(
            args.out,
            workspace_gb=args.workspace_gb,
            min_batch_size=args.min_batch_size,
            opt_batch_size=args.opt_batch_size,
            max_batch_size=args.max_batch_size,
            **common,
        )
    return 0
