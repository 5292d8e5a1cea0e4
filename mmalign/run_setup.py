"""Everything a run is built from, made once before the loop: the plugin and its data, the bound
loss, the policy with its optimizer and schedule, the reference, the batch stream, the output
directory. :func:`build_run` returns it as an explicit :class:`Run`; the loop (mmalign/engine.py)
only reads it and updates a :class:`RunState`."""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from mmalign import precision
from mmalign.batches import BatchStream
from mmalign.callbacks import build_callbacks
from mmalign.config import Config
from mmalign.data import prepare_examples, read_records
from mmalign.errors import ConfigError, DataError
from mmalign.eval_samples import sample_contexts
from mmalign.algorithms import SourceContext, algorithm_loss, build_options
from mmalign.optimizers import make_optimizer
from mmalign.losses.objective import Objective, check_fits, make_objective
from mmalign.reference import FrozenCopy, make_reference
from mmalign.run_store import RunStore, make_run_store
from mmalign.schedule import make_scheduler
from mmalign.sharding import is_sharded, refuse_under_fsdp
from mmalign.throughput import Meter
from mmalign.unit_chunks import unit_by_unit


@dataclass
class Run:
    """What a run is built from; fixed once the loop starts."""

    cfg: Config
    accelerator: Any
    plugin: Any
    objective: Objective
    policy: torch.nn.Module  # as prepared by accelerate (DDP / FSDP wrapped)
    unwrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    reference: Any  # a strategy of mmalign.reference (or the cache), or None
    stream: BatchStream
    eval_examples: list
    out: Path
    store: RunStore  # where its files go (mmalign/run_store.py)
    total_steps: int
    log: Callable[[str], None]  # prints on the main process only
    reports: list = field(default_factory=list)
    callbacks: list = field(default_factory=list)
    sample_contexts: list = field(default_factory=list)  # eval.samples' prompts (main process; mmalign/eval_samples.py)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def sharded(self) -> bool:
        """FSDP2: no process holds whole weights; checkpoints and final/ are written by all."""
        return is_sharded(self.accelerator)

    @property
    def by_units(self) -> bool:
        """An update backpropagates unit by unit (mmalign/unit_chunks.py)."""
        return unit_by_unit(self.plugin, self.objective, self.sharded)


@dataclass
class RunState:
    """What changes step by step (with ``run.stream.consumed``), saved in checkpoints."""

    step: int = 0
    skipped: int = 0
    lr: float = 0.0  # the learning rate of the last step
    window: list[dict[str, Tensor]] = field(default_factory=list)  # metrics since the last row
    history: list[dict] = field(default_factory=list)
    meter: Meter = field(default_factory=Meter)  # the clock, and work and time since the last row


def build_run(cfg: Config, *, resume: Any, log: Callable, overwrite: bool, cleanup: ExitStack) -> Run:
    """Validate, load the plugin and data (refused before ``output_dir`` is touched), claim the
    output directory, then load the models."""
    from accelerate.utils import set_seed

    from mmalign.plugins import registry
    from mmalign.run_validation import validate_for_run

    reg = registry()
    validate_for_run(cfg, cfg.source or "config", reg=reg)  # names, options, modality: before anything loads
    accelerator = precision.make_accelerator(precision.mixed_precision(cfg.model.dtype, cfg.train.precision),
                                             cpu=not torch.cuda.is_available(), log_with=cfg.train.report_to,
                                             project_dir=Path(cfg.output_dir) / "trackers")
    main_log = log if accelerator.is_main_process else _quiet
    if is_sharded(accelerator):
        refuse_under_fsdp(cfg, reg)
    set_seed(cfg.seed)
    plugin = reg.get("rewards", cfg.model.reward, "model.reward")(cfg.model, cfg.data)
    if is_sharded(accelerator):
        plugin.use_sharded_policy()
    algorithm, objective = bind_objective(cfg, reg, plugin)
    layout = (cfg.train.batch_size, cfg.train.gradient_accumulation_steps, accelerator.num_processes,
              accelerator.process_index, cfg.seed, torch.Generator().manual_seed(cfg.seed * 1009),
              cfg.data.prefetch)
    content = ""  # the training data's fingerprint; streamed, only data.train's hash identifies it
    if cfg.data.streaming:
        stream, eval_examples, reports = streamed_data(cfg, plugin, objective.spec.paired, layout, main_log)
    else:
        if algorithm is None:
            train_examples, eval_examples, reports = load_data(cfg, plugin, objective.spec.paired, main_log)
            content = plugin.content_fingerprint(train_examples)
        else:  # the prompts the policy answers; the plugin reads each record's context when it samples
            train_examples, reports = prompt_records(cfg, cfg.data.train, "data.train"), []
            eval_examples = prompt_records(cfg, cfg.data.eval, "data.eval") if cfg.data.eval else []
            main_log(f"{cfg.data.train}: {len(train_examples)} records read, each a prompt for {cfg.algorithm.name}")
        stream = BatchStream(train_examples, *layout)
        check_enough_data(cfg, stream, len(eval_examples))
    out, store = Path(cfg.output_dir), make_run_store(cfg, reg, accelerator, main_log)
    # bad data was refused above, before --overwrite moves a run aside
    store.claim(content, fresh=not resume, overwrite=overwrite, cleanup=cleanup)
    steps_per_epoch = stream.per_epoch // (stream.batch_size * stream.accumulation * stream.world)
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    source_reference = algorithm is not None and algorithm.source_needs_reference  # KL in the reward
    needs_reference = (objective.spec.needs_reference or source_reference) and \
        (algorithm is None or cfg.loss.beta > 0)
    policy, optimizer, scheduler, reference = build_models(cfg, reg, plugin, needs_reference, accelerator,
                                                           total_steps, main_log)
    if algorithm is not None:  # the online source replaces the offline stream (same data state)
        stream = algorithm.make_source(source_context(cfg, reg, plugin, accelerator, policy, reference,
                                                      train_examples, main_log))
        if not objective.spec.needs_reference:  # only the source scores with it: no pass per micro-step
            reference = None
    callbacks = build_callbacks(cfg, reg, out, accelerator) if accelerator.is_main_process else []
    contexts = sample_contexts(cfg) if cfg.eval.samples and accelerator.is_main_process else []
    return Run(cfg, accelerator, plugin, objective, policy, accelerator.unwrap_model(policy), optimizer,
               scheduler, reference, stream, eval_examples, out, store, total_steps, main_log, reports,
               callbacks, contexts)


def bind_objective(cfg: Config, reg: Any, plugin: Any) -> tuple[Any, Objective]:
    """(the online algorithm or None, the loss bound to its options), checked against the plugin."""
    lookup = lambda name, where: reg.get("losses", name, where)  # noqa: E731
    if not cfg.algorithm.name:
        spec = reg.get("losses", cfg.loss.name, "loss.name")
        check_fits(spec, plugin)
        return None, make_objective(spec, beta=cfg.loss.beta, options=cfg.loss.options,
                                    sft_weight=cfg.loss.sft_weight, lookup=lookup)
    algorithm = reg.get("algorithms", cfg.algorithm.name, "algorithm.name")
    options = build_options(algorithm, cfg.algorithm.options, cfg.source or "config")
    spec = algorithm_loss(algorithm, options, reg, cfg.source or "config")
    check_fits(spec, plugin, key="algorithm.name")
    loss_options = {k: getattr(options, k) for k in spec.options if hasattr(options, k)}
    return algorithm, make_objective(spec, beta=cfg.loss.beta, options=loss_options,
                                     sft_weight=cfg.loss.sft_weight, lookup=lookup)


def prompt_records(cfg: Config, path: str, key: str) -> list:
    """The records at ``path`` (data.train, data.eval) for an online algorithm: each needs a "prompt"."""
    records = read_records(path, cfg.data.format, key, cfg.data.columns)
    bad = [r.where for r in records if "prompt" not in r.fields]
    if bad:
        raise DataError(f"{bad[0]}: an online algorithm ({cfg.algorithm.name}) needs a \"prompt\" in every "
                        f"record of {key} ({len(bad)} lack one); other fields (e.g. \"answer\") go "
                        f"to the reward functions.")
    return records


def source_context(cfg: Config, reg: Any, plugin: Any, accelerator: Any, policy: Any, reference: Any,
                   records: list, log: Callable) -> SourceContext:
    algorithm = reg.get("algorithms", cfg.algorithm.name, "algorithm.name")
    return SourceContext(plugin, accelerator.unwrap_model(policy), reference, records,
                         build_options(algorithm, cfg.algorithm.options, cfg.source or "config"),
                         cfg.loss.beta, cfg.seed, cfg.train.batch_size, cfg.train.gradient_accumulation_steps,
                         accelerator.num_processes, accelerator.process_index, accelerator.device, reg, log,
                         autocast=accelerator.autocast, prepare_model=accelerator.prepare_model)


def prepare_file(cfg: Config, plugin: Any, paired: bool, path: str, key: str, log: Callable) -> tuple[list, Any]:
    """(the examples of the data file at ``path``, its data report), logged."""
    records = read_records(path, cfg.data.format, key, cfg.data.columns)
    examples, report = prepare_examples(plugin, records, paired=paired, strict=cfg.data.strict, path=path,
                                        duplicates=cfg.data.duplicates, allow_outside=cfg.data.allow_outside_paths)
    log(report.table())
    return examples, report


def load_data(cfg: Config, plugin: Any, paired: bool, log: Callable) -> tuple[list, list, list]:
    """(training examples, held-out examples, data reports)."""
    train, report = prepare_file(cfg, plugin, paired, cfg.data.train, "data.train", log)
    if cfg.data.eval:
        held_out, eval_report = prepare_file(cfg, plugin, paired, cfg.data.eval, "data.eval", log)
        return train, held_out, [report, eval_report]
    if cfg.data.eval_size:
        return train[:-cfg.data.eval_size], train[-cfg.data.eval_size:], [report]
    return train, [], [report]


def streamed_data(cfg: Config, plugin: Any, paired: bool, layout: tuple, log: Callable) -> tuple:
    """(the StreamingStream of data.train, held-out examples read whole, data reports)."""
    from functools import partial

    from mmalign.data import DataReport
    from mmalign.streaming import StreamingStream, prepare_record, stream_records

    records = stream_records(cfg.data.train, cfg.data.format, "data.train", cfg.data.columns)
    per_step = layout[0] * layout[1] * layout[2]
    if records.count < per_step:
        raise DataError(f"{cfg.data.train}: {records.count} records, fewer than one optimizer step needs "
                        f"({per_step} = batch_size x gradient_accumulation_steps x processes). Add data or "
                        f"lower train.batch_size.")
    report = DataReport(cfg.data.train, skipped={})  # filled as training reads (the result's data_reports)
    prepare = partial(prepare_record, plugin, paired=paired, strict=cfg.data.strict,
                      allow_outside=cfg.data.allow_outside_paths)
    stream = StreamingStream(records, prepare, report, *layout, buffer=cfg.data.shuffle_buffer)
    log(f"data {cfg.data.train}: {records.count} records, streamed (each is checked when training reaches it)")
    if not cfg.data.eval:
        return stream, [], [report]
    held_out, eval_report = prepare_file(cfg, plugin, paired, cfg.data.eval, "data.eval", log)
    return stream, held_out, [report, eval_report]


def check_enough_data(cfg: Config, stream: BatchStream, held_out: int) -> None:
    per_step = stream.batch_size * stream.accumulation * stream.world
    if len(stream.examples) < per_step:
        held = f" after data.eval_size held {held_out} out" if cfg.data.eval_size else ""
        raise DataError(f"{cfg.data.train}: {len(stream.examples)} usable records{held}, fewer than one "
                        f"optimizer step needs ({per_step} = batch_size x gradient_accumulation_steps "
                        f"x processes). Add data or lower train.batch_size"
                        f"{' or data.eval_size' if held else ''}.")


def build_models(cfg: Config, reg: Any, plugin: Any, needs_reference: bool, accelerator: Any, total_steps: int,
                 log: Callable) -> tuple:
    """The policy (fp32 master weights, dropout off), the reference, the optimizer and the schedule,
    prepared by accelerate."""
    policy = plugin.load_policy()
    # fp32 master weights for what trains (before the reference copy: it then computes as the policy)
    precision.set_master_weights(policy, cfg.train.master_weights, log)
    disable_dropout(policy)
    policy.train()
    reference = make_reference(cfg.reference.strategy, policy, plugin, cfg.reference.name_or_path,
                               needs_reference, accelerator.device, accelerator.autocast)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg.train, params, reg)
    warmup = cfg.train.warmup_steps or int(cfg.train.warmup_ratio * total_steps)
    scheduler = make_scheduler(optimizer, cfg.train.lr_scheduler, warmup, total_steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    if isinstance(reference, FrozenCopy) and is_sharded(accelerator):  # FSDP: shard it too
        reference.model = accelerator.prepare_model(reference.model, evaluation_mode=True)
    return policy, optimizer, scheduler, reference


def cache_reference(run: Run) -> None:
    """``reference.cache``: score every training example with the reference once."""
    from mmalign.reference_cache import CachedReference, fingerprint

    cfg = run.cfg
    if run.reference is None or cfg.reference.cache == "none":
        return
    if run.objective.spec.extras:
        raise ConfigError(f"reference.cache: loss '{run.objective.spec.name}' uses scores that depend on "
                          f"the whole batch (e.g. KTO's mismatched pairs), which cannot be cached per "
                          f"record. Set reference.cache: none.")
    if not run.plugin.deterministic_collate:
        raise ConfigError(f"reference.cache: the '{cfg.model.reward}' plugin draws randomness per "
                          f"batch, so its reference scores cannot be reused. Set reference.cache: none.")
    path = None
    if cfg.reference.cache == "disk":
        root = Path(cfg.reference.cache_dir) if cfg.reference.cache_dir else run.out / "reference_cache"
        content = run.plugin.content_fingerprint(run.stream.examples)
        key = fingerprint(cfg, [cfg.data.train], content)
        path = root / f"ref-{key}-rank{run.accelerator.process_index}.safetensors"
    run.reference = CachedReference(run.reference, run.plugin, run.stream.examples, batch_size=cfg.eval.batch_size,
                                    device=run.accelerator.device, path=path, log=run.log)


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off (as TRL does by default): scores are deterministic, so at step 0 the policy's
    and reference's scores are identical and the DPO loss is exactly ln 2."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def any_process(accelerator: Any, *flags: bool) -> list[bool]:
    """Each flag, true if it is true on any process: one all-reduce, so that every process takes
    the same decision (skip, stop, save); one acting alone would leave the others waiting."""
    if accelerator.num_processes == 1:
        return list(flags)
    votes = torch.tensor([float(f) for f in flags], device=accelerator.device)
    return [v > 0 for v in accelerator.reduce(votes, reduction="sum").tolist()]


def _quiet(*args: Any) -> None:
    pass
