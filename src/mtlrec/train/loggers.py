"""Experiment tracking back ends for one run: TensorBoard and MLflow (optional extras, imported lazily).

``train.loggers: [tensorboard, mlflow]`` in an experiment config turns them on. Each logger gets the config once,
the training loss per optimisation step and the validation metrics (and epoch train loss) per epoch:

- ``tensorboard``: event files under ``<run>/tb/`` (``tensorboard --logdir runs/<name>``);
- ``mlflow``: a local file store ``<out_dir>/mlruns`` (the experiment's folder, next to ``results.jsonl``) unless
  ``MLFLOW_TRACKING_URI`` is set; never the network by default. One MLflow experiment per mtlrec experiment, one
  MLflow run per (model label, seed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mtlrec.errors import UserError

LOGGERS = ("tensorboard", "mlflow")


def _missing(name: str, module: str) -> UserError:
    return UserError(
        f"train.loggers: {name} needs the {module} package; install it with pip install 'mtlrec[tracking]'"
    )


def _flat(prefix: str, obj: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj
    return out


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """``train_loss`` and ``valid.<task>.<metric>`` of one epoch record of the trainer."""
    out = {"train_loss": float(record["train_loss"])} if record.get("train_loss") is not None else {}
    for task, ms in (record.get("valid") or {}).items():
        for m, v in ms.items():
            out[f"valid.{task}.{m}"] = float(v)
    return out


class RunLogger:
    """The interface: the config once, a loss per step, the metrics per epoch (1-based), ``close`` at the end."""

    def log_config(self, config: dict[str, Any]) -> None: ...

    def log_step(self, step: int, loss: float) -> None: ...

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


class TensorBoardLogger(RunLogger):
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    def log_config(self, config: dict[str, Any]) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)

    def log_step(self, step: int, loss: float) -> None:
        self.writer.add_scalar("train/step_loss", loss, step)

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        for key, v in epoch_scalars(record).items():
            self.writer.add_scalar(key.replace(".", "/", 1), v, epoch)

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


class MLflowLogger(RunLogger):
    def __init__(self, out_dir: Path, experiment: str, run_name: str) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a local file store (MLflow 3 asks for an explicit opt-in to it; no server, no network)
            uri = (out_dir / "mlruns").resolve().as_uri()
            if not os.environ.get("MLFLOW_ALLOW_FILE_STORE"):
                os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self._steps: list[Any] = []

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flat("", config, {})
        params = [Param(k[:250], json.dumps(v, default=str)[:500]) for k, v in flat.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_text(self.run_id, json.dumps(config, indent=2, default=str), "config.json")

    def log_step(self, step: int, loss: float) -> None:
        from mlflow.entities import Metric

        self._steps.append(Metric("train_step_loss", float(loss), 0, step))
        if len(self._steps) >= 200:
            self._flush()

    def _flush(self) -> None:
        if self._steps:
            self.client.log_batch(self.run_id, metrics=self._steps)
            self._steps = []

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        self._flush()
        metrics = [Metric(k, v, 0, epoch) for k, v in epoch_scalars(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str = "FINISHED") -> None:
        self._flush()
        self.client.set_terminated(self.run_id, status)


def create_loggers(
    names: list[str] | tuple[str, ...],
    run_dir: Path | None,
    *,
    experiment: str,
    run_name: str,
    config: dict[str, Any] | None = None,
) -> list[RunLogger]:
    """The loggers named (each gets ``config`` at once); none without a run folder to write under."""
    if not names:
        return []
    if run_dir is None:
        raise UserError("train.loggers needs a run folder (out_dir)")
    out: list[RunLogger] = []
    for name in names:
        if name == "tensorboard":
            out.append(TensorBoardLogger(run_dir))
        elif name == "mlflow":
            # the experiment's folder: <out_dir>/<label>/seed<k> -> <out_dir>
            out.append(MLflowLogger(run_dir.parent.parent, experiment, run_name))
        else:
            from mtlrec.errors import unknown_name

            raise unknown_name("logger", name, LOGGERS, where="train.loggers")
        if config is not None:
            out[-1].log_config(config)
    return out
