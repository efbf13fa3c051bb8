"""`panoptic-train evaluate`: tables on the terminal, metrics file, errors without traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from panoptic_train import cli

IS_THING = (True, False, True)


@pytest.fixture(autouse=True)
def only_evaluate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real dispatcher with just this subcommand, independent of the others' progress."""
    monkeypatch.setattr(cli, "COMMANDS", {"evaluate": cli.COMMANDS["evaluate"]})


def cli_args(files, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--gt-json",
        str(files.gt_json),
        "--gt-masks",
        str(files.gt_masks),
        "--pred-json",
        str(files.pred_json),
        "--pred-masks",
        str(files.pred_masks),
        *extra,
    ]


def test_prints_summary_and_per_class_tables_and_writes_metrics(
    coco, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = coco.write_scenes(coco.scenes(8, len(IS_THING), seed=20), coco.categories(IS_THING))
    out = tmp_path / "metrics.json"

    assert cli.main(cli_args(files, "--out", str(out), "--num-workers", "2")) == 0

    metrics = json.loads(out.read_text())
    printed = capsys.readouterr().out
    for group in ("All", "Things", "Stuff"):
        row = re.search(rf"^{group}\s*\|\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)$", printed, re.M)
        assert row is not None, printed
        assert float(row[1]) == pytest.approx(100 * metrics[group]["pq"], abs=0.05)
        assert int(row[4]) == metrics[group]["n"]
    # per-class rows: "<id>  <name>  <kind>  PQ ...", best PQ first
    rows = re.findall(r"^\s*(\d+)\s+class\d+\s+(thing|stuff)\s+([\d.]+)", printed, re.M)
    assert {int(class_id) for class_id, _, _ in rows} == {
        int(class_id) for class_id, entry in metrics["per_class"].items()
        if entry["tp"] + entry["fp"] + entry["fn"] > 0
    }  # fmt: skip
    pq_column = [float(pq) for _, _, pq in rows]
    assert pq_column == sorted(pq_column, reverse=True)


def test_bad_input_is_an_error_message_and_exit_code_2(
    coco, capsys: pytest.CaptureFixture[str]
) -> None:
    files = coco.write_scenes(coco.scenes(2, len(IS_THING), seed=21), coco.categories(IS_THING))
    (files.pred_masks / "000000000001.png").unlink()

    assert cli.main(cli_args(files)) == 2

    error = capsys.readouterr().err
    assert error.startswith("error: The prediction mask")
    assert "000000000001.png" in error and "Traceback" not in error
