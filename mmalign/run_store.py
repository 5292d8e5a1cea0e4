"""Where a run's files go: the run store. The loop (mmalign/engine.py) writes no file itself; it
hands the run and its state to the store at five points, and a plugin may register another store
(a remote bucket, a cluster's scratch space) through ``mmalign_register_run_stores``.
``train.run_store`` names the one a run uses; the built-in ``local`` store
(:class:`mmalign_runs.store.LocalRunStore`, the ``runs`` plugin) writes ``output_dir`` as
docs/outputs.md describes. A store for another place usually subclasses it and overrides where
the bytes go. (Callbacks, trackers and the reference cache still write into ``output_dir``.)

A store is built on every process, after the data were read and before the models load::

    store = factory(cfg, accelerator, log)     # log: prints on the main process only
    store.claim(data_content, fresh=..., overwrite=..., cleanup=...)
    store.start(run, state, resume, force_resume)
    store.append_row(row)                      # every metrics row, main process
    store.save_checkpoint(run, state)          # every train.save_every steps, on SIGTERM
    store.save_final(run, state)               # at the end

The loop checks that weights and optimizer state are finite before each save
(mmalign/nonfinite.py), so a store never sees non-finite ones.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable


class RunStore:
    """The methods a store implements. ``run`` and ``state`` are the loop's
    :class:`mmalign.run_setup.Run` and :class:`mmalign.run_setup.RunState`. Every method but
    ``append_row`` runs on every process: under several processes a store decides together
    (:func:`mmalign.run_setup.any_process` is one all-reduce of flags) and lets the main one write."""

    def __init__(self, cfg: Any, accelerator: Any, log: Callable[[str], None]) -> None:
        self.cfg, self.accelerator, self.log = cfg, accelerator, log

    def claim(self, data_content: str, *, fresh: bool, overwrite: bool, cleanup: ExitStack) -> None:
        """Take the output for this run, or raise :class:`mmalign.errors.ConfigError` on every
        process. ``data_content``: the training data's fingerprint, part of what a resumed run
        must match. ``fresh``: not a resume, so the output must be empty unless ``overwrite``.
        Whatever must be released when the run ends (a lock) goes on ``cleanup``."""
        raise NotImplementedError

    def start(self, run: Any, state: Any, resume: str | bool | None, force_resume: bool) -> None:
        """Before the first step. Without ``resume``, write the resolved config
        (``mmalign.config.dump_config``: ``mmalign eval`` and ``push`` read it back) and leave
        ``state`` as it is. With ``resume`` (True: the latest; else a checkpoint's name) restore
        what :meth:`save_checkpoint` saved, or raise ConfigError if the store cannot resume:
        the policy (``run.plugin.load_weights``), ``run.optimizer``, ``run.scheduler``, this
        process's random generators and ``run.stream.generator``, ``run.stream.consumed``,
        ``run.stream.load_source_state`` (an online source's own tensors, e.g. a PPO critic),
        ``state.step``, ``state.skipped``, ``state.window`` and the elapsed time
        (``state.meter.started``); refuse a checkpoint of other settings unless
        ``force_resume``. Then set ``state.history`` to the rows logged up to ``state.step``."""
        raise NotImplementedError

    def append_row(self, row: dict) -> None:
        """Keep one metrics row (main process only)."""
        raise NotImplementedError

    def save_checkpoint(self, run: Any, state: Any) -> None:
        """Save everything :meth:`start` restores, at ``state.step``. Under FSDP2
        (``run.sharded``) no process holds whole weights: every process saves its shards."""
        raise NotImplementedError

    def save_final(self, run: Any, state: Any) -> Path:
        """Write the trained model as ``run.plugin.save`` writes it (plain ``from_pretrained``
        loads it), with the files of every registered final-file writer (the model card:
        ``mmalign_register_final_files``); return where it is. Under FSDP2 the full state is
        gathered first, by every process."""
        raise NotImplementedError

    def last_checkpoint(self) -> Path | None:
        """The checkpoint a resume would take now, named in error messages; None: none (yet)."""
        return None


def make_run_store(cfg: Any, reg: Any, accelerator: Any, log: Callable[[str], None]) -> RunStore:
    """The store ``train.run_store`` names, built for this process."""
    store = reg.get("run_stores", cfg.train.run_store, "train.run_store")(cfg, accelerator, log)
    if not isinstance(store, RunStore):
        raise TypeError(f"run store '{cfg.train.run_store}' built a {type(store).__name__}, not a "
                        f"mmalign.run_store.RunStore subclass")
    return store
