"""The `panoptic-train` dispatcher: listing the commands imports none of their dependencies."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "PIL", "pydantic", "yaml")


def _loaded_after(argv: list[str]) -> tuple[str, list[str]]:
    """What `main(argv)` printed, and which HEAVY packages it imported (in a fresh process)."""
    code = (
        "import json, sys\n"
        "from panoptic_train.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    *printed, loaded = result.stdout.splitlines()
    return "\n".join(printed), json.loads(loaded)


def test_top_level_help_lists_every_command_without_heavy_imports() -> None:
    printed, loaded = _loaded_after(["--help"])
    assert loaded == []
    for command in ("train", "predict", "evaluate", "export", "serve", "check-data", "demo"):
        assert f"    {command}" in printed


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("serve", "(8)"),  # --max-batch's default, read from ServeConfig (pydantic)
        ("predict", "(178,956,970)"),  # --max-image-pixels' default, from data.io (numpy, PIL)
    ],
)
def test_a_commands_help_has_its_own_arguments(command: str, expected: str) -> None:
    printed, _ = _loaded_after([command, "--help"])
    assert "--max-image-pixels" in printed and expected in printed
