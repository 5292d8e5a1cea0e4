"""The explicit training loop on accelerate. It reads top to bottom:

    build the run (mmalign/run_setup.py) -> the store's start (resume) -> for each optimizer step:
        micro-batches: policy scores (with grad), reference scores (without) -> loss -> backward
        -> clip -> step -> log / evaluate -> checkpoint
    -> final/

Files are the run store's (mmalign/run_store.py): the loop hands it the run and state to restore,
log, checkpoint and write ``final/``.

Every function below takes the run (fixed) and its state (what changes); none holds state of its
own. The engine never knows the modality: it sees batches and :class:`mmalign.scores.Scores`.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmalign.config import Config
from mmalign.eval_samples import draw_samples
from mmalign.losses.objective import objective_loss
from mmalign.nonfinite import TrainingError, all_finite, check_before_save, trained
from mmalign.nonfinite import message as nonfinite_message
from mmalign.run_setup import Run, RunState, any_process, build_run, cache_reference
from mmalign.throughput import Meter
from mmalign.unit_chunks import backward_by_units

# the progress bar's postfix: row key -> its label there
_SHOWN = {"loss": "loss", "rewards/accuracies": "rewards/accuracies", "rewards/mean": "rewards/mean",
          "time/samples_per_s": "samples/s", "time/tokens_per_s": "tokens/s", "time/images_per_s": "images/s"}


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    history: list[dict] = field(default_factory=list)
    data_reports: list = field(default_factory=list)


class _Stop:
    """SIGTERM / Ctrl-C: finish the current step, save a checkpoint, exit."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(cfg: Config, *, resume: str | bool | None = None, log=print, overwrite: bool = False,
          force_resume: bool = False, callbacks: tuple = ()) -> TrainResult:
    """Train the policy described by ``cfg``; write metrics, checkpoints and ``final/``.
    ``callbacks``: :class:`mmalign.callbacks.Callback` objects, after those of the config.

    With the ``local`` run store, ``output_dir`` is locked for the run; a new run needs it empty
    unless ``overwrite`` (old contents moved aside); ``resume`` refuses another run's checkpoint
    unless ``force_resume`` (see ``plugins/mmalign_runs/run_identity.py``)."""
    with ExitStack() as cleanup:  # releases output_dir's lock however the run ends
        clock = Meter()  # time/elapsed counts from here: loading the models is part of the run
        run = build_run(cfg, resume=resume, log=log, overwrite=overwrite, cleanup=cleanup)
        run.callbacks += list(callbacks) if run.is_main else []
        state = RunState(meter=clock)
        run.store.start(run, state, resume, force_resume)
        cache_reference(run)
        bar = _progress(cfg, run.total_steps, state.step, run.is_main)
        with _Stop() as stop:
            while state.step < run.total_steps:
                train_step(run, state)
                stop_requested = any_process(run.accelerator, stop.requested)[0]
                record(run, state, bar)
                if cfg.train.save_every and state.step % cfg.train.save_every == 0:
                    save_checkpoint(run, state)
                if stop_requested and not run.stream.at_boundary:  # a rollout in flight: train it first
                    run.log(f"step {state.step}: finishing the rollout before saving (signal again to stop now)")
                elif stop_requested:
                    save_checkpoint(run, state)
                    bar.close()
                    run.log(f"stopped by signal at step {state.step}; checkpoint saved. Continue with --resume.")
                    sys.exit(130)
        bar.close()
        return finish(run, state)


def micro_step(run: Run, meter: Meter, last: bool) -> tuple[dict[str, Tensor], bool]:
    """One micro-batch: scores, loss, backward. Returns its metrics and whether the loss was finite."""
    start = time.perf_counter()
    batch = run.stream.next_batch(run.plugin, run.accelerator.device)
    meter.add_batch(time.perf_counter() - start, run.stream.examples_per_batch, run.plugin.batch_counts(batch.data))
    per_unit = run.objective.spec.per_unit
    with nullcontext() if last else run.accelerator.no_sync(run.policy):
        ref = run.reference.scores(batch, per_unit=per_unit) if run.reference else None
        if run.by_units:  # one unit's graph at a time (mmalign/unit_chunks.py)
            loss, metrics = backward_by_units(run, batch, ref, last)
        else:
            with run.accelerator.autocast():
                pol = run.plugin.score(run.policy, batch.data, per_unit=per_unit)
            loss, metrics = objective_loss(run.objective, pol, ref, batch.values)
            # backward even a non-finite loss: under DDP every process must join the gradient
            # all-reduce; the update is dropped in train_step
            run.accelerator.backward(loss / run.stream.accumulation)
        metrics.update(batch.metrics)
    return metrics, bool(torch.isfinite(loss))


def train_step(run: Run, state: RunState) -> None:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches; a non-finite loss
    or gradient stops the run or skips the update (``train.on_nonfinite``)."""
    cfg, accum = run.cfg, run.stream.accumulation
    start = time.perf_counter()
    results = [micro_step(run, state.meter, last=i == accum - 1) for i in range(accum)]
    step_metrics = [m for m, _ in results]
    # every parameter of the prepared model: FSDP replaces them (DTensors), and accelerate
    # clips FSDP models only when handed exactly model.parameters()
    grad_norm = _clip(run.accelerator, list(run.policy.parameters()), cfg.train.max_grad_norm)
    bad_loss = any_process(run.accelerator, not all(ok for _, ok in results))[0]
    bad = "loss" if bad_loss else None if math.isfinite(grad_norm) else "gradient norm"
    if bad and cfg.train.on_nonfinite == "stop":
        raise TrainingError(nonfinite_message(bad, state.step + 1, run.store.last_checkpoint()))
    state.lr = run.scheduler.get_last_lr()[0]
    if bad:  # on_nonfinite: skip. The step, schedule and data position still advance.
        state.skipped += 1
        run.log(f"step {state.step + 1}: non-finite {bad}, update skipped ({state.skipped} so far; "
                f"train.on_nonfinite: skip)")
    else:
        run.optimizer.step()
        if any_process(run.accelerator, not all_finite(trained(run.policy)))[0]:  # e.g. lr: .inf
            raise TrainingError(nonfinite_message("weights after the update", state.step + 1,
                                                    run.store.last_checkpoint()))
        step_metrics[-1]["grad_norm"] = torch.tensor(grad_norm)
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start  # generation included
    state.meter.add_step(seconds)  # a skipped step too: its work was done
    if not bad:
        step_metrics[-1]["time/step"] = torch.tensor(seconds)
        state.window.extend(step_metrics)
    state.step += 1


def record(run: Run, state: RunState, bar) -> None:
    """Every ``log_every`` steps, at evaluations and at the end: a metrics row (and evaluation)."""
    cfg, step = run.cfg, state.step
    is_eval = bool(cfg.train.eval_every) and step % cfg.train.eval_every == 0
    if step % cfg.train.log_every == 0 or step == run.total_steps or is_eval:
        row = _reduce(run.accelerator, state.window, step, state.lr, run.stream.consumed)
        row["epoch"] = run.stream.consumed / run.stream.per_epoch
        row.update(state.meter.row(run.accelerator))
        if cfg.train.on_nonfinite == "skip":
            row["skipped_steps"] = state.skipped
        if is_eval or (step == run.total_steps and run.eval_examples):
            eval_row = evaluate(run)
            row.update(eval_row)
            for cb in run.callbacks:
                cb.on_eval(step, eval_row)
            if run.sample_contexts:
                samples = draw_samples(run)
                for cb in run.callbacks:
                    cb.on_samples(step, samples)
        state.window = []
        if run.is_main:
            state.history.append(row)
            run.store.append_row(row)
            for cb in run.callbacks:
                cb.on_log(step, row)
            bar.set_postfix({name: f"{row[k]:.3g}" for k, name in _SHOWN.items() if k in row})
    bar.update(1)


def evaluate(run: Run) -> dict[str, float]:
    from mmalign.evaluate import run_evaluators
    from mmalign.plugins import registry

    if not run.eval_examples:
        return {}
    return run_evaluators(run.cfg, registry(), run.plugin, run.policy, run.reference, run.eval_examples,
                          run.objective, run.accelerator.autocast)


def save_checkpoint(run: Run, state: RunState) -> None:
    """The store saves; never non-finite weights or optimizer state, whatever the store."""
    check_before_save(run.unwrapped, run.optimizer, state.step, "saving a checkpoint", run.store.last_checkpoint)
    run.store.save_checkpoint(run, state)


def finish(run: Run, state: RunState) -> TrainResult:
    """``final/``, the callbacks' end, the metrics table."""
    check_before_save(run.unwrapped, run.optimizer, state.step, "saving final/", run.store.last_checkpoint)
    final = run.store.save_final(run, state)
    if run.is_main:
        end_callbacks(run.callbacks, state.history)
        run.log(summary_table(state.history))
    run.accelerator.wait_for_everyone()
    return TrainResult(run.out, final, state.history, run.reports)


def end_callbacks(callbacks: list, history: list[dict]) -> None:
    """Every callback's ``on_train_end``, even after one raised (trackers still flush when an
    upload fails); then the first error."""
    errors = []
    for cb in callbacks:
        try:
            cb.on_train_end(history)
        except Exception as e:  # noqa: BLE001 (raised below, once the others have ended)
            errors.append(e)
    for later in errors[1:]:  # said with the first, not lost
        if hasattr(errors[0], "add_note"):  # Python 3.11+
            errors[0].add_note(f"another callback's on_train_end failed too: {type(later).__name__}: {later}")
    if errors:
        raise errors[0]


def _clip(accelerator, params, max_norm: float) -> float:
    if max_norm > 0:
        return float(accelerator.clip_grad_norm_(params, max_norm))
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _reduce(accelerator, window: list[dict[str, Tensor]], step: int, lr: float, consumed: int) -> dict:
    row: dict[str, Any] = {"step": step}
    keys = sorted({k for m in window for k in m})
    if keys:  # empty when every step since the last row was skipped (non-finite)
        # on CPU: grad_norm (and a window restored from a checkpoint) lives there, the rest may not
        means = torch.stack([torch.stack([m[k].detach().float().cpu() for m in window if k in m]).mean()
                             for k in keys])
        means = accelerator.reduce(means.to(accelerator.device), reduction="mean")
        row.update({k: float(v) for k, v in zip(keys, means.tolist())})
    row["lr"] = lr
    row["records_seen"] = consumed  # already counts every process
    return row


def _progress(cfg: Config, total: int, initial: int, is_main: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step",
                disable=not (cfg.train.progress and is_main), dynamic_ncols=True, file=sys.stderr)


def summary_table(history: list[dict]) -> str:
    """First and last logged values of the main metrics, as a small text table."""
    if not history:
        return "no metrics logged"
    keys = [k for k in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen",
                        "rewards/rejected", "logps/chosen", "eval/reward_accuracy", "eval/margin",
                        "rewards/mean", "kl", "entropy", "completions/mean_length")
            if any(k in row for row in history)]
    if not keys:
        return "no metrics logged"
    first, last = history[0], history[-1]
    width = max(len(k) for k in keys)
    lines = [f"{'metric':<{width}}  {'step ' + str(first['step']):>12}  {'step ' + str(last['step']):>12}"]
    for k in keys:
        a = f"{first[k]:.4f}" if k in first else "-"
        b = f"{last[k]:.4f}" if k in last else "-"
        lines.append(f"{k:<{width}}  {a:>12}  {b:>12}")
    return "\n".join(lines)
