"""`panoptic-train check-data`: exit codes, every problem listed, summary when clean."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from panoptic_train.data import _cli
from panoptic_train.data.synthetic import write_dataset


def _check_data(split: dict[str, str], *extra: str) -> int:
    parser = argparse.ArgumentParser()
    _cli.add_arguments(parser)
    paths = ["--images", split["images"], "--masks", split["masks"]]
    args = parser.parse_args([*paths, "--annotations", split["annotations"], *extra])
    return _cli.run(args)


def test_clean_dataset_prints_a_summary(
    synthetic_split: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _check_data(synthetic_split, "--ignore-classes", "12") == 0
    out = capsys.readouterr().out
    assert "6 images" in out and "(3 things, 3 stuff)" in out
    assert "sand" in out and "(ignored: void)" in out
    assert "No problems found" in out


def test_every_problem_is_listed_and_the_exit_code_is_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = write_dataset(tmp_path, 3, image_size=(32, 40), seed=2)
    (Path(split["images"]) / "000001.png").unlink()
    raw = json.loads(Path(split["annotations"]).read_text())
    raw["annotations"][1]["segments_info"].pop()
    raw["annotations"][2]["segments_info"][0]["area"] += 1
    Path(split["annotations"]).write_text(json.dumps(raw))

    assert _check_data(split) == 1
    err = capsys.readouterr().err
    assert "2 problem(s) found" in err
    assert "000001.png' (image id 1) does not exist" in err
    assert "000002.png' has segment id(s)" in err
    assert "warning: Segment" in err and "000003.png" in err


def test_command_is_registered_in_the_dispatcher() -> None:
    from panoptic_train.cli import COMMANDS

    assert COMMANDS["check-data"] == "panoptic_train.data._cli"
