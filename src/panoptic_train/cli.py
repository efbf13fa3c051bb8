"""The `panoptic-train` command line: one subcommand per public entry point.

Each subcommand lives beside the code it drives, in a `_cli` module exposing
`HELP: str`, `add_arguments(parser)` and `run(args) -> int`. Those modules import nothing heavy
at module level, so `panoptic-train --help` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from panoptic_train.errors import PanopticTrainError

# subcommand -> module implementing it
COMMANDS: dict[str, str] = {
    "train": "panoptic_train.train._cli",
    "predict": "panoptic_train.inference._cli",
    "evaluate": "panoptic_train.evaluation._cli",
    "export": "panoptic_train.export._cli",
    "check-data": "panoptic_train.data._cli",
    "list-models": "panoptic_train.models._cli",
    "demo": "panoptic_train._demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panoptic-train",
        description="Train, evaluate, run and export EoMT panoptic segmentation models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except (PanopticTrainError, FileNotFoundError) as error:
        # User-facing errors carry their own explanation; a traceback would only hide it.
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
