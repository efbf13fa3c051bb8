"""`panoptic-train train`: the command-line face of `train_panoptic_segmentation`.

Every API argument has an option of the same name (dashes for underscores). Dict arguments take
JSON (`--model-args '{"lr": 1e-4}'`) or key=value pairs (`--model-args lr=1e-4 num_queries=100`,
nested with dots: `--logger-args wandb.project=demo`); values are read as JSON when they parse
(numbers, true/false, null, lists) and as text otherwise.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "Train an EoMT panoptic segmentation model on a COCO panoptic dataset."

_DICT_ARGUMENTS = (
    "logger_args",
    "model_args",
    "transform_args",
    "metric_args",
    "loader_args",
    "save_checkpoint_args",
    "torch_compile_args",
)


def _int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _devices(text: str) -> int | str:
    """An int count, or a string Fabric understands ("auto", "0,1", "-1")."""
    return int(text) if text.lstrip("-").isdigit() else text


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_dict_argument(tokens: list[str], option: str) -> dict[str, Any]:
    """One JSON object, or key=value pairs with dotted keys for nesting."""
    if len(tokens) == 1 and tokens[0].lstrip().startswith("{"):
        try:
            parsed = json.loads(tokens[0])
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"{option}: invalid JSON ({error})") from None
        if not isinstance(parsed, dict):
            raise argparse.ArgumentTypeError(f"{option}: expected a JSON object")
        return parsed
    result: dict[str, Any] = {}
    for token in tokens:
        key, separator, value = token.partition("=")
        if not separator or not key:
            raise argparse.ArgumentTypeError(
                f"{option}: expected key=value or a JSON object, got {token!r}"
            )
        *parents, leaf = key.split(".")
        target = result
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise argparse.ArgumentTypeError(f"{option}: {key!r} nests under a value")
        target[leaf] = _value(value)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder of the run")
    parser.add_argument(
        "--data", required=True, help="YAML/JSON file with train/val splits, or that JSON inline"
    )
    parser.add_argument("--model", required=True, help="model name or exported_*.pt / .ckpt")
    parser.add_argument("--steps", type=_int_or_auto, default="auto", help="(auto = 90000)")
    parser.add_argument(
        "--batch-size", type=_int_or_auto, default="auto", help="global (auto = 16)"
    )
    parser.add_argument(
        "--gradient-accumulation-steps", type=_int_or_auto, default="auto", help="(auto = 1)"
    )
    parser.add_argument(
        "--num-workers", type=_int_or_auto, default="auto", help="per device (auto: CPUs - 1, <= 8)"
    )
    parser.add_argument("--devices", type=_devices, default="auto", help="(auto)")
    parser.add_argument("--num-nodes", type=int, default=1, help="(1)")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, cuda, mps (auto)")
    parser.add_argument("--strategy", default="auto", help="auto, ddp, fsdp, ... (auto)")
    parser.add_argument("--precision", default="bf16-mixed", help="(bf16-mixed; 32-true on CPU)")
    parser.add_argument("--float32-matmul-precision", default="auto", help="(auto)")
    parser.add_argument("--seed", type=int, default=0, help="(0)")
    parser.add_argument("--checkpoint", help="weights to start from (.ckpt or exported_*.pt)")
    parser.add_argument(
        "--resume-interrupted", action="store_true", help="continue the interrupted run in --out"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    for name in _DICT_ARGUMENTS:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            nargs="+",
            metavar="KEY=VALUE",
            help="JSON object or key=value pairs",
        )


def run(args: argparse.Namespace) -> int:
    from panoptic_train.errors import ConfigError
    from panoptic_train.train.api import train_panoptic_segmentation

    dict_arguments: dict[str, Any] = {}
    for name in _DICT_ARGUMENTS:
        tokens = getattr(args, name)
        try:
            dict_arguments[name] = (
                None
                if tokens is None
                else parse_dict_argument(tokens, f"--{name.replace('_', '-')}")
            )
        except argparse.ArgumentTypeError as error:
            raise ConfigError(str(error)) from None
    data: Any = args.data
    if data.lstrip().startswith("{"):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--data: invalid JSON ({error})") from None
    train_panoptic_segmentation(
        out=args.out,
        data=data,
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_workers=args.num_workers,
        devices=args.devices,
        num_nodes=args.num_nodes,
        accelerator=args.accelerator,
        strategy=args.strategy,
        precision=args.precision,
        float32_matmul_precision=args.float32_matmul_precision,
        seed=args.seed,
        checkpoint=args.checkpoint,
        resume_interrupted=args.resume_interrupted,
        overwrite=args.overwrite,
        **dict_arguments,
    )
    return 0
