"""Every command whose output cannot be written exits with code 3 and one line naming the path
and the reason, before its slow work where that can be known up front; never a traceback."""

from __future__ import annotations

import pytest

from panoptic_train import cli
from panoptic_train.data.synthetic import write_dataset

from .conftest import MountTmpfs

CANNOT_WRITE = 3


@pytest.fixture(autouse=True)
def built_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real dispatcher with the commands tested here, independent of the others' progress."""
    names = ("train", "predict", "evaluate", "export")
    monkeypatch.setattr(cli, "COMMANDS", {name: cli.COMMANDS[name] for name in names})


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_evaluate_into_a_folder_fails_before_scoring(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = write_dataset(tmp_path / "data", 1, image_size=(16, 16), seed=0, split="val")
    folder = tmp_path / "metrics"
    folder.mkdir()
    gt = ["--gt-json", split["annotations"], "--gt-masks", split["masks"]]
    pred = ["--pred-json", split["annotations"], "--pred-masks", split["masks"]]
    assert cli.main(["evaluate", *gt, *pred, "--out", str(folder)]) == CANNOT_WRITE
    assert f"Cannot write '{folder}': it is a folder" in _one_error_line(capsys)


@pytest.mark.parametrize("where", ["existing folder", "read-only filesystem"])
def test_export_fails_before_loading_the_model(
    tmp_path, tmpfs: MountTmpfs, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    if where == "existing folder":
        out, reason = tmp_path, "it is a folder"
    else:
        out, reason = tmpfs(read_only=True) / "model.onnx", "Read-only file system (EROFS)"
    # A model path that does not exist shows that nothing was loaded before the check.
    argv = ["export", str(tmp_path / "absent.pt"), "--format", "onnx", "--out", str(out)]
    assert cli.main(argv) == CANNOT_WRITE
    assert f"Cannot write '{out}'" in (line := _one_error_line(capsys)) and reason in line
