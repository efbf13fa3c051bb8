"""Metric loggers: TensorBoard (on by default), MLflow and Weights & Biases (opt-in).

Only rank 0 logs. Each backend gets the flattened run configuration once and then scalar metrics
by step; an optional backend that is not installed is a `MissingDependencyError` naming the
package extra, raised before training starts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from panoptic_train.errors import require
from panoptic_train.train.config import LoggerArgs, MLflowArgs, TensorBoardArgs, WandbArgs

# MLflow rejects longer parameter values; the full config is in out/config.json anyway.
_MLFLOW_PARAM_LENGTH = 500


class MetricLogger(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def finish(self, model_file: Path | None) -> None:
        """Flush and close; `model_file` is the model to upload where the backend does that."""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the form hyperparameter tables want."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class TensorBoardLogger:
    """Event files in `log_dir`; `start_step` drops events a resumed run will write again."""

    def __init__(
        self, args: TensorBoardArgs, log_dir: Path, config: Mapping[str, Any], start_step: int
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            log_dir=str(log_dir), flush_secs=args.flush_secs, purge_step=start_step or None
        )
        table = "\n".join(f"| {k} | {v} |" for k, v in sorted(flatten(config).items()))
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, global_step=0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)

    def finish(self, model_file: Path | None) -> None:
        self.writer.close()


class MLflowLogger:
    """One MLflow run. Without `tracking_uri` runs go to a local SQLite store,
    `out/logs/mlflow.db` (`mlflow ui --backend-store-uri sqlite:///out/logs/mlflow.db`); MLflow 3
    no longer accepts new plain-folder stores by default."""

    def __init__(self, args: MLflowArgs, default_db: Path, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        default_db.parent.mkdir(parents=True, exist_ok=True)
        uri = args.tracking_uri or f"sqlite:///{default_db.resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(args.experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(args.experiment_name)
        )
        run = self.client.create_run(experiment_id, run_name=args.run_name, tags=args.tags)
        self.run_id = run.info.run_id
        params = [
            Param(key, str(value)[:_MLFLOW_PARAM_LENGTH])
            for key, value in sorted(flatten(config).items())
        ]
        for start in range(0, len(params), 100):  # MLflow accepts 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()],
        )

    def finish(self, model_file: Path | None) -> None:
        self.client.set_terminated(self.run_id)


class WandbLogger:
    """One W&B run in `log_dir`; `offline=True` writes it locally for `wandb sync` later."""

    def __init__(self, args: WandbArgs, log_dir: Path, config: Mapping[str, Any]) -> None:
        import wandb

        log_dir.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.run = wandb.init(
            project=args.project,
            name=args.name,
            entity=args.entity,
            tags=args.tags,
            dir=str(log_dir),
            config=dict(config),
            mode="offline" if args.offline else None,
            reinit="create_new",
        )

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, model_file: Path | None) -> None:
        if self.args.log_model and model_file is not None and model_file.is_file():
            import wandb

            artifact = wandb.Artifact(name=f"model-{self.run.id}", type="model")
            artifact.add_file(str(model_file))
            self.run.log_artifact(artifact)
        self.run.finish()


class Loggers:
    """All configured loggers behind one interface (empty on ranks other than 0)."""

    def __init__(self, loggers: Sequence[MetricLogger]) -> None:
        self.loggers = list(loggers)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def finish(self, model_file: Path | None) -> None:
        for logger in self.loggers:
            logger.finish(model_file)


def check_dependencies(args: LoggerArgs) -> None:
    """Fail before any work when an asked-for logger's package is not installed."""
    if args.mlflow is not None:
        require("mlflow", "mlflow", "The MLflow logger (logger_args['mlflow'])")
    if args.wandb is not None:
        require("wandb", "wandb", "The Weights & Biases logger (logger_args['wandb'])")


def build_loggers(
    args: LoggerArgs, log_dir: Path, config: Mapping[str, Any], start_step: int, is_rank_zero: bool
) -> Loggers:
    """The loggers `args` asks for, writing under `log_dir` (`out/logs`)."""
    check_dependencies(args)
    if not is_rank_zero:
        return Loggers([])
    loggers: list[MetricLogger] = []
    if args.tensorboard is not None:
        loggers.append(
            TensorBoardLogger(args.tensorboard, log_dir / "tensorboard", config, start_step)
        )
    if args.mlflow is not None:
        loggers.append(MLflowLogger(args.mlflow, log_dir / "mlflow.db", config))
    if args.wandb is not None:
        loggers.append(WandbLogger(args.wandb, log_dir, config))
    return Loggers(loggers)
