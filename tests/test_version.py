"""One version source: `panoptic_train.__version__`, read by the packaging and the command line."""

from __future__ import annotations

import importlib.metadata
import re

import pytest

import panoptic_train
from panoptic_train import cli


def test_installed_metadata_reads_the_package_version() -> None:
    # pyproject.toml declares the version dynamic, taken from panoptic_train.__version__; a stale
    # install (version changed, not reinstalled) fails here.
    assert importlib.metadata.version("panoptic-train") == panoptic_train.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", panoptic_train.__version__)


def test_command_line_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"panoptic-train {panoptic_train.__version__}\n"
