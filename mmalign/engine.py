"""One preference step, and the explicit training loop on accelerate.

The loop reads top to bottom: load -> prepare data -> for each optimizer step: micro-batches
(policy scores with grad, reference scores without) -> loss -> backward -> clip -> step ->
log / eval / checkpoint. The engine never knows the modality: it sees only scores.
"""

from __future__ import annotations

import inspect
import math
import signal
import sys
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmalign import checkpoint as ckpt
from mmalign import precision
from mmalign.config import Config, dump_config
from mmalign.data import prepare_examples, read_records
from mmalign.errors import ConfigError, DataError
from mmalign.losses import LossSpec
from mmalign.losses.objective import preference_loss
from mmalign.nonfinite import TrainingError, all_finite, check_before_save, trained
from mmalign.nonfinite import message as nonfinite_message
from mmalign.reference import make_reference
from mmalign.run_files import append_metrics, read_metrics, summary_table, truncate_metrics, write_atomic
from mmalign.run_identity import check_same_run, claim_output_dir, new_identity
from mmalign.schedule import make_scheduler


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


def _load_data(cfg: Config, reward, spec: LossSpec, log):
    records = read_records(cfg.data.train, cfg.data.format, "data.train")
    train, report = prepare_examples(reward, records, paired=spec.paired, strict=cfg.data.strict,
                                     path=cfg.data.train, duplicates=cfg.data.duplicates,
                                     allow_outside=cfg.data.allow_outside_paths)
    reports = [report]
    log(report.table())
    if cfg.data.eval:
        eval_records = read_records(cfg.data.eval, cfg.data.format, "data.eval")
        held_out, eval_report = prepare_examples(reward, eval_records, paired=spec.paired,
                                                 strict=cfg.data.strict, path=cfg.data.eval,
                                                 duplicates=cfg.data.duplicates,
                                                 allow_outside=cfg.data.allow_outside_paths)
        reports.append(eval_report)
        log(eval_report.table())
    elif cfg.data.eval_size:
        held_out, train = train[-cfg.data.eval_size:], train[:-cfg.data.eval_size]
    else:
        held_out = []
    return train, held_out, reports


def train(cfg: Config, *, resume: str | bool | None = None, log=print, overwrite: bool = False,
          force_resume: bool = False) -> TrainResult:
    """Train the policy described by ``cfg``; write metrics, checkpoints and ``final/``.

    ``output_dir`` is locked for the run; a new run needs it empty unless ``overwrite`` (old
    contents moved aside); ``resume`` refuses another run's checkpoint unless ``force_resume``
    (see :mod:`mmalign.run_identity`)."""
    with ExitStack() as cleanup:  # releases output_dir's lock however the run ends
        return _train(cfg, resume, log, overwrite, force_resume, cleanup)


def _train(cfg: Config, resume, log, overwrite: bool, force_resume: bool, cleanup: ExitStack) -> TrainResult:
    from accelerate.utils import set_seed

    from mmalign.evaluate import run_evaluators
    from mmalign.plugins import registry
    from mmalign.run_validation import validate_for_run

    reg = registry()
    validate_for_run(cfg, cfg.source or "config", reg=reg)  # names, options, modality: before anything loads
    spec: LossSpec = reg.get("losses", cfg.loss.name, "loss.name")
    mixed = precision.mixed_precision(cfg.model.dtype, cfg.train.precision)
    accelerator = precision.make_accelerator(mixed, cpu=not torch.cuda.is_available())
    is_main = accelerator.is_main_process
    set_seed(cfg.seed)

    reward = reg.get("rewards", cfg.model.reward, "model.reward")(cfg.model, cfg.data)
    train_examples, eval_examples, reports = _load_data(cfg, reward, spec, log if is_main else _quiet)
    content = reward.content_fingerprint(train_examples) if hasattr(reward, "content_fingerprint") else ""
    identity = new_identity(cfg, content)  # what must match for --resume
    world, bs, accum = accelerator.num_processes, cfg.train.batch_size, cfg.train.gradient_accumulation_steps
    per_step = bs * accum * world
    if len(train_examples) < per_step:
        held = f" after data.eval_size held {len(eval_examples)} out" if cfg.data.eval_size else ""
        raise DataError(f"{cfg.data.train}: {len(train_examples)} usable records{held}, fewer than one "
                        f"optimizer step needs ({per_step} = batch_size x gradient_accumulation_steps "
                        f"x processes). Add data or lower train.batch_size"
                        f"{' or data.eval_size' if held else ''}.")
    # Bad data is refused above, before output_dir is touched (or --overwrite moves a run aside).
    out = Path(cfg.output_dir)
    claim_output_dir(out, is_main=is_main, fresh=not resume, overwrite=overwrite, cleanup=cleanup,
                     vote=lambda failed: _on_any_process(accelerator, failed)[0], log=log)
    steps_per_epoch = len(train_examples) // per_step
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))

    policy = reward.load_policy()
    # fp32 master weights for what trains (before the reference copy: it then computes as the policy)
    precision.set_master_weights(policy, cfg.train.master_weights, log if is_main else _quiet)
    disable_dropout(policy)
    policy.train()
    reference = make_reference(cfg.reference.strategy, policy, reward, cfg.reference.name_or_path,
                               spec.needs_reference, accelerator.device)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                  betas=tuple(cfg.train.adam_betas))
    warmup = cfg.train.warmup_steps or int(cfg.train.warmup_ratio * total_steps)
    scheduler = make_scheduler(optimizer, cfg.train.lr_scheduler, warmup, total_steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    unwrapped = accelerator.unwrap_model(policy)

    # The same generator in every process: see next_batch.
    data_gen = torch.Generator().manual_seed(cfg.seed * 1009)
    step, consumed, skipped = 0, 0, 0
    window: list[dict[str, Tensor]] = []  # metrics of the micro-batches since the last logged row
    if resume:
        path, state, saved = ckpt.find_resume_checkpoint(
            out / "checkpoints", None if resume is True else Path(resume), log if is_main else _quiet)
        check_same_run(path, saved, identity, force=force_resume, log=log if is_main else _quiet)
        identity.run_id = saved.get("run_id") or identity.run_id  # the same run, continued
        state = ckpt.load_checkpoint(path, load_model=lambda d: reward.load_weights(unwrapped, d),
                                     optimizer=optimizer, scheduler=scheduler, data_generator=data_gen,
                                     rank=accelerator.process_index, state=state)
        step, consumed, skipped = state["step"], state["consumed"], state.get("skipped_steps", 0)
        window = [{k: torch.tensor(v) for k, v in m.items()} for m in state.get("metrics_window", [])]
        if is_main:
            log(f"resumed from {path} at step {step}")
        if state.get("processes", world) != world and is_main:
            log(f"note: the checkpoint was written by {state['processes']} processes and this run has "
                f"{world}: training continues from the same data position, but not bit for bit.")
    if is_main:
        write_atomic(out / "config.yaml", dump_config(cfg))
        truncate_metrics(out / "metrics.jsonl", step)

    if reference is not None and cfg.reference.cache != "none":
        reference = _cached_reference(cfg, spec, reward, reference, train_examples, accelerator, out,
                                      log if is_main else _quiet)
    callbacks = [reg.get("callbacks", name, "train.callbacks")(out) for name in cfg.train.callbacks] if is_main else []
    history = read_metrics(out / "metrics.jsonl") if is_main else []
    autocast = accelerator.autocast

    def next_examples() -> list[list]:
        """The next micro-batch of every process, in rank order: together, what one process
        accumulating ``world`` micro-batches would take."""
        nonlocal consumed
        epoch, pos = divmod(consumed, steps_per_epoch * per_step)
        order = torch.randperm(len(train_examples), generator=torch.Generator().manual_seed(cfg.seed + epoch))
        consumed += bs * world
        return [[train_examples[i] for i in order[pos + r * bs:pos + (r + 1) * bs].tolist()]
                for r in range(world)]

    draws: list[bool] = []  # does collate draw from the generator? (probed once, multi-process)
    batch_examples: list[list] = [[]]  # the examples of the current batch (for the reference cache)

    def next_batch():
        """This process's batch. Every process holds the same generator and draws, in rank order,
        the randomness (diffusion noise, timesteps) of every process's micro-batch, keeping its
        own: N processes then draw exactly what one process accumulating N micro-batches draws,
        so a run's randomness does not depend on how many processes share it."""
        parts, rank = next_examples(), accelerator.process_index
        if world > 1 and not draws:
            probe = torch.Generator()
            probe.set_state(data_gen.get_state())
            reward.collate(parts[rank], probe)
            draws.append(not torch.equal(probe.get_state(), data_gen.get_state()))
        batch = None
        batch_examples[:] = [parts[rank]]
        for r, part in enumerate(parts):
            if r == rank:
                batch = reward.collate(part, data_gen)
            elif draws[0]:  # only to advance the generator past that process's draws
                reward.collate(part, data_gen)
        return reward.to_device(batch, accelerator.device)

    def save_checkpoint() -> None:
        # Every process's generators are saved (each draws its own noise); only the main one writes.
        rngs = [ckpt.rng_state(data_gen)]
        if world > 1:
            from accelerate.utils import gather_object

            rngs = gather_object(rngs)
        check_before_save(unwrapped, optimizer, step, out, "saving a checkpoint")
        if is_main:
            trainer_state = {"step": step, "consumed": consumed, "total_steps": total_steps,
                             "processes": world, "skipped_steps": skipped,
                             "metrics_window": [{k: float(v) for k, v in m.items()} for m in window]}
            ckpt.save_checkpoint(out / "checkpoints", step, save_model=lambda d: reward.save(unwrapped, d),
                                 optimizer=optimizer, scheduler=scheduler, data_generator=data_gen,
                                 trainer_state=trainer_state, keep_last=cfg.train.keep_last,
                                 rng_states=rngs, identity_json=identity.to_json())
        accelerator.wait_for_everyone()

    def evaluate() -> dict[str, float]:
        if not eval_examples:
            return {}
        return run_evaluators(cfg, reg, reward, policy, reference, eval_examples, spec, autocast)

    bar = _progress(cfg, total_steps, step, is_main)
    with _Stop() as stop:
        while step < total_steps:
            step_metrics, loss_finite = [], True
            for micro in range(accum):
                batch = next_batch()
                sync = nullcontext() if micro == accum - 1 else accelerator.no_sync(policy)
                with sync:
                    ref_scores = reference.scores(reward, batch, autocast, examples=batch_examples[-1]) \
                        if reference else None
                    with autocast():
                        pol_scores = reward.score(policy, batch)
                    loss, metrics = preference_loss(spec, pol_scores, ref_scores, beta=cfg.loss.beta,
                                                    options=cfg.loss.options, sft_weight=cfg.loss.sft_weight)
                    loss_finite &= bool(torch.isfinite(loss))
                    # backward even a non-finite loss: under DDP every process must join the
                    # gradient all-reduce; the update is dropped below
                    accelerator.backward(loss / accum)
                step_metrics.append(metrics)
            # every parameter of the prepared model: FSDP replaces them (DTensors), and accelerate
            # clips FSDP models only when handed exactly model.parameters()
            grad_norm = _clip(accelerator, list(policy.parameters()), cfg.train.max_grad_norm)
            bad_loss, stop_requested = _on_any_process(accelerator, not loss_finite, stop.requested)
            bad = "loss" if bad_loss else None if math.isfinite(grad_norm) else "gradient norm"
            if bad and cfg.train.on_nonfinite == "stop":
                raise TrainingError(nonfinite_message(bad, step + 1, out))
            lr = scheduler.get_last_lr()[0]
            if bad:  # on_nonfinite: skip. The step, schedule and data position still advance.
                skipped += 1
                if is_main:
                    log(f"step {step + 1}: non-finite {bad}, update skipped ({skipped} so far; "
                        f"train.on_nonfinite: skip)")
            else:
                optimizer.step()
                if _on_any_process(accelerator, not all_finite(trained(policy)))[0]:  # e.g. lr: .inf
                    raise TrainingError(nonfinite_message("weights after the update", step + 1, out))
                step_metrics[-1]["grad_norm"] = torch.tensor(grad_norm)
                window.extend(step_metrics)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            is_eval = bool(cfg.train.eval_every) and step % cfg.train.eval_every == 0
            if step % cfg.train.log_every == 0 or step == total_steps or is_eval:
                row = _reduce(accelerator, window, step, lr, consumed)
                if cfg.train.on_nonfinite == "skip":
                    row["skipped_steps"] = skipped
                if is_eval or (step == total_steps and eval_examples):
                    eval_row = evaluate()
                    row.update(eval_row)
                    for cb in callbacks:
                        getattr(cb, "on_eval", _noop)(step, eval_row)
                window = []
                if is_main:
                    history.append(row)
                    append_metrics(out / "metrics.jsonl", row)
                    for cb in callbacks:
                        getattr(cb, "on_log", _noop)(step, row)
                    bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "rewards/accuracies") if k in row})
            bar.update(1)
            if cfg.train.save_every and step % cfg.train.save_every == 0:
                save_checkpoint()
            if stop_requested:
                save_checkpoint()
                bar.close()
                if is_main:
                    log(f"stopped by signal at step {step}; checkpoint saved. Continue with --resume.")
                sys.exit(130)
    bar.close()
    final = out / "final"
    check_before_save(unwrapped, optimizer, step, out, "saving final/")  # every process: none waits alone
    if is_main:
        ckpt.save_final(lambda d: reward.save(unwrapped, d), final)
        for cb in callbacks:
            getattr(cb, "on_train_end", _noop)(history)
        log(summary_table(history))
    accelerator.wait_for_everyone()
    return TrainResult(out, final, history, reports)


def _cached_reference(cfg: Config, spec: LossSpec, reward, reference, examples, accelerator, out: Path, log):
    from mmalign.reference_cache import CachedReference, fingerprint

    if "extras" in inspect.signature(spec.fn).parameters:
        raise ConfigError(f"reference.cache: loss '{spec.name}' uses scores that depend on the whole "
                          f"batch (e.g. KTO's mismatched pairs), which cannot be cached per record. "
                          f"Set reference.cache: none.")
    if not getattr(reward, "deterministic_collate", False):
        raise ConfigError(f"reference.cache: the '{cfg.model.reward}' plugin draws randomness per "
                          f"batch, so its reference scores cannot be reused. Set reference.cache: none.")
    path = None
    if cfg.reference.cache == "disk":
        files = [f for f in (cfg.data.train,) if f]
        root = Path(cfg.reference.cache_dir) if cfg.reference.cache_dir else out / "reference_cache"
        content = reward.content_fingerprint(examples) if hasattr(reward, "content_fingerprint") else ""
        path = root / f"ref-{fingerprint(cfg, files, content)}-rank{accelerator.process_index}.safetensors"
    return CachedReference(reference, reward, examples, batch_size=cfg.eval.batch_size,
                           autocast=accelerator.autocast, device=accelerator.device, path=path, log=log)


def _noop(*args: Any) -> None:
    pass


def _quiet(*args: Any) -> None:
    pass


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off (as TRL does by default): scores are deterministic, so at step 0 the policy's
    and reference's scores are identical and the DPO loss is exactly ln 2."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _clip(accelerator, params, max_norm: float) -> float:
    if max_norm > 0:
        return float(accelerator.clip_grad_norm_(params, max_norm))
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _on_any_process(accelerator, *flags: bool) -> list[bool]:
    """Each flag, true if it is true on any process: one all-reduce, so that every process takes
    the same decision (skip, stop, save); one acting alone would leave the others waiting."""
    if accelerator.num_processes == 1:
        return list(flags)
    votes = torch.tensor([float(f) for f in flags], device=accelerator.device)
    return [v > 0 for v in accelerator.reduce(votes, reduction="sum").tolist()]


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
