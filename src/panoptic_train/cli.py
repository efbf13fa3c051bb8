"""The `panoptic-train` command line: one subcommand per public entry point.

Each subcommand lives beside the code it drives, in a `_cli` module exposing
`HELP: str`, `add_arguments(parser)` and `run(args) -> int`. Those modules import nothing heavy
at module level, and only the named command's `add_arguments` runs (serve's reads its defaults
from a pydantic config), so `panoptic-train --help` answers instantly.

Exit codes, the same for every command: 0 done; 1 done, but some inputs failed (reported);
2 bad arguments or data (one `error:` line, no traceback); 3 an output cannot be written (the
line names the path and the OS's reason); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from panoptic_train._version import __version__
from panoptic_train.errors import OutputError, PanopticTrainError

EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANNOT_WRITE = 3
EXIT_INTERRUPTED = 130


def positive_int(text: str) -> int:
    """argparse type of options such as --batch-size: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# subcommand -> module implementing it
COMMANDS: dict[str, str] = {
    "train": "panoptic_train.train._cli",
    "predict": "panoptic_train.inference._cli",
    "evaluate": "panoptic_train.evaluation._cli",
    "export": "panoptic_train.export._cli",
    "serve": "panoptic_train.serve._cli",
    "check-data": "panoptic_train.data._cli",
    "convert": "panoptic_train.data.convert._cli",
    "list-models": "panoptic_train.models._cli",
    "demo": "panoptic_train._demo",
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Every command listed, with the arguments of the one `argv` names."""
    parser = argparse.ArgumentParser(
        prog="panoptic-train",
        description="Train, evaluate, run and export EoMT panoptic segmentation models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The top-level options take no value, so the first other word is the command.
    command = next((word for word in argv if not word.startswith("-")), None)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        if name == command:
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    command_line = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(command_line).parse_args(command_line)
    args.command_line = command_line  # to start more processes
    try:
        return int(args._run(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OutputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CANNOT_WRITE
    except (PanopticTrainError, FileNotFoundError) as error:
        # User-facing errors carry their own explanation; a traceback would only hide it.
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        # Outputs are written through panoptic_train._io, whose errors are OutputError; what
        # is left is a write of a library (loggers' files, caches): the OS's reason is the news.
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CANNOT_WRITE


if __name__ == "__main__":
    sys.exit(main())
