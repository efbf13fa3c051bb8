"""Loggers for real: TensorBoard (default), MLflow (local store) and W&B (offline mode)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from panoptic_train import train_panoptic_segmentation
from panoptic_train.errors import MissingDependencyError
from panoptic_train.train.config import LoggerArgs
from panoptic_train.train.loggers import check_dependencies

from .conftest import fast_run


# mlflow and wandb take seconds to import and start their offline runs.
@pytest.mark.slow
def test_mlflow_and_wandb_receive_the_run(
    synthetic_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    out = tmp_path / "run"
    train_panoptic_segmentation(
        **fast_run(
            synthetic_data,
            out,
            steps=2,
            logger_args={
                "log_every_num_steps": 1,
                "mlflow": {"experiment_name": "panoptic", "run_name": "tiny", "tags": {"k": "v"}},
                "wandb": {"project": "panoptic", "name": "tiny", "offline": True},
            },
        )
    )
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))

    client = MlflowClient(f"sqlite:///{out / 'logs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("panoptic")
    (run,) = client.search_runs([experiment.experiment_id])
    assert (run.info.run_name, run.info.status, run.data.tags["k"]) == ("tiny", "FINISHED", "v")
    assert run.data.params["arguments.steps"] == "2"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [metric.step for metric in history] == [1, 2]
    assert "val_metric/pq" in run.data.metrics

    (offline_run,) = (out / "logs" / "wandb").glob("offline-run-*")
    (records,) = offline_run.glob("run-*.wandb")
    content = records.read_bytes()
    assert (
        b"train_loss" in content
        and b"val_metric/pq" in content
        and b'"project":"panoptic"' in content
    )


@pytest.mark.parametrize(("key", "extra"), [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_missing_logger_package_names_the_extra(
    key: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, key, None)  # makes `import <key>` fail
    with pytest.raises(MissingDependencyError, match=rf'pip install "panoptic-train\[{extra}\]"'):
        check_dependencies(LoggerArgs.model_validate({key: {}}))
