"""The ``trackers`` callback: every row of metrics.jsonl to the experiment trackers that
``train.report_to`` names (TensorBoard, Weights & Biases, MLflow, trackio), through accelerate's
tracking API. The run's Accelerator is built with ``log_with=train.report_to`` and
``project_dir=output_dir/trackers`` (mmalign/run_setup.py); this callback starts the trackers,
logs the rows and closes them. Called on the main process only, as every callback is."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from mmalign.callbacks import Callback
from mmalign.errors import ConfigError
from mmalign.validation import fail

PROJECT = "mmalign"  # the tracker project (TensorBoard: output_dir/trackers/mmalign); runs named by output_dir
# train.report_to: tracker -> the modules accelerate accepts for it (any one installed will do)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
            "trackio": ("trackio",)}


def check_report_to(cfg: Any) -> None:
    """Before anything loads: trackers known and installed (found, not imported)."""
    for i, name in enumerate(cfg.train.report_to):
        if name not in TRACKERS:
            raise fail(None, f"train.report_to[{i}]", f"is '{name}', not a tracker mmalign logs to. Choose "
                                                      f"from {', '.join(TRACKERS)}.")
        if not any(importlib.util.find_spec(module) for module in TRACKERS[name]):
            extra = " (or `pip install 'mmalign[trackers]'`)" if name == "tensorboard" else ""
            raise fail(None, f"train.report_to[{i}]", f"is '{name}', which is not installed. Install it with "
                                                      f"`pip install {name}`{extra}, or remove it.")


class TrackerCallback(Callback):
    """Starts the trackers at the first row, logs each row at its step, closes them at the end.

    Started at the first row rather than at construction: a resumed run then knows where it
    starts, and TensorBoard hides what an earlier session logged from that step on
    (``purge_step``), as ``--resume`` drops those rows from metrics.jsonl."""

    def __init__(self, output_dir: Path, *, cfg: Any = None, accelerator: Any = None):
        if cfg is None or accelerator is None or not cfg.train.report_to:
            raise ConfigError("train.callbacks: 'trackers' logs to the trackers train.report_to names, and "
                              "there are none. Set train.report_to (e.g. [tensorboard]) instead of listing "
                              "'trackers' in train.callbacks.")
        self.out = Path(output_dir)
        self.cfg, self.accelerator = cfg, accelerator
        self.started = False
        self.own_mlflow_store = False

    def on_log(self, step: int, row: dict) -> None:
        if not self.started:
            self._start(step)
        self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def on_samples(self, step: int, samples: list[dict]) -> None:
        from mmalign_metrics.samples import log_samples

        if not self.started:
            self._start(step)
        log_samples(self.accelerator, step, samples)

    def on_train_end(self, history: list[dict]) -> None:
        # each tracker's finish(), not accelerator.end_training(): that also destroys the process
        # group, which the other processes still wait on after the callbacks (engine.finish)
        if self.started:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.started = False
        if self.own_mlflow_store:  # mlflow.set_tracking_uri exported it: a later run must not inherit it
            os.environ.pop("MLFLOW_TRACKING_URI", None)

    def _start(self, step: int) -> None:
        folder = self.out / "trackers"
        folder.mkdir(parents=True, exist_ok=True)
        name = self.out.resolve().name
        if "mlflow" in self.cfg.train.report_to and not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            mlflow.set_tracking_uri(mlflow_store(folder))
            self.own_mlflow_store = True
        kwargs = {"tensorboard": {"purge_step": step}, "wandb": {"name": name, "dir": str(folder)},
                  "mlflow": {"run_name": name}, "trackio": {"name": name}}
        self.accelerator.init_trackers(PROJECT, config=flat_config(self.cfg),
                                       init_kwargs={k: v for k, v in kwargs.items() if k in self.cfg.train.report_to})
        self.started = True


def mlflow_store(folder: Path) -> str:
    """The local MLflow store under ``folder`` when MLFLOW_TRACKING_URI names none: a SQLite file
    with full mlflow (its default backend), else (mlflow-skinny, no SQLAlchemy) a file store, which
    MLflow 3 accepts only with MLFLOW_ALLOW_FILE_STORE set."""
    import importlib.util

    if importlib.util.find_spec("sqlalchemy") is not None:
        return f"sqlite:///{(folder / 'mlflow.db').resolve()}"
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (folder / "mlruns").resolve().as_uri()


def flat_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as trackers take hyperparameters: dotted keys (``train.lr``) with
    scalar values; a list, an empty mapping or a null becomes its JSON text."""
    from mmalign.config import to_dict

    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value, default=str)

    walk("", to_dict(cfg))
    return flat
