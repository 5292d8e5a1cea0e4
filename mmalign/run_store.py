"""Where a run's files go: the run store. The loop (mmalign/engine.py) never writes a file itself;
it hands the run and its state to the store at five points, and a plugin may register another
store (a remote bucket, a cluster's scratch space) through ``mmalign_register_run_stores``.
``train.run_store`` names the one a run uses; the built-in ``local`` store (the ``runs`` plugin,
``plugins/mmalign_runs``) writes ``output_dir`` as docs/outputs.md describes.

A store is built once per process, after the data were read and before the models load::

    store = factory(cfg, accelerator, log)
    store.claim(data_content, fresh=..., overwrite=..., cleanup=...)   # the folder, the identity
    store.start(run, state, resume, force_resume)                      # resume; history
    store.append_row(row)            # every metrics row, main process
    store.save_checkpoint(run, state)                                  # collective
    store.save_final(run, state)     # final/, collective; returns its path
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable


class RunStore:
    """The methods a store implements. ``run`` and ``state`` are the loop's
    :class:`mmalign.run_setup.Run` and :class:`mmalign.run_setup.RunState`; the store may read
    anything in them and, when resuming, sets the state and the stream's data position."""

    def __init__(self, cfg: Any, accelerator: Any, log: Callable[[str], None]) -> None:
        self.cfg, self.accelerator, self.log = cfg, accelerator, log

    def claim(self, data_content: str, *, fresh: bool, overwrite: bool, cleanup: ExitStack) -> None:
        """Take the output for this run (every process calls it; they stop together on a
        refusal). ``data_content``: the fingerprint of the training data, part of what a resumed
        run must match. ``fresh``: not a resume, so the output must be empty unless ``overwrite``.
        Whatever must be released when the run ends (a lock) goes on ``cleanup``."""
        raise NotImplementedError

    def start(self, run: Any, state: Any, resume: str | bool | None, force_resume: bool) -> None:
        """Before the first step: with ``resume``, restore weights, optimizer, schedule, data
        position and ``state`` from a checkpoint of the same run (``force_resume``: of another
        run's settings); then set ``state.history`` to the metrics rows logged so far."""
        raise NotImplementedError

    def append_row(self, row: dict) -> None:
        """Keep one metrics row (main process only)."""
        raise NotImplementedError

    def save_checkpoint(self, run: Any, state: Any) -> None:
        """Save everything :meth:`start` needs to continue from ``state.step``. Every process calls it."""
        raise NotImplementedError

    def save_final(self, run: Any, state: Any) -> Path:
        """Write the trained model where users load it from; every process calls it."""
        raise NotImplementedError

    def last_checkpoint(self) -> Path | None:
        """The checkpoint a resume would take now, for error messages (None: none yet)."""
        raise NotImplementedError


def make_run_store(cfg: Any, reg: Any, accelerator: Any, log: Callable[[str], None]) -> RunStore:
    """The store ``train.run_store`` names, built for this process."""
    return reg.get("run_stores", cfg.train.run_store, "train.run_store")(cfg, accelerator, log)
