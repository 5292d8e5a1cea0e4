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
from mmalign.callbacks import build_callbacks
from mmalign.config import Config
from mmalign.data import data_source
from mmalign.errors import ConfigError
from mmalign.algorithms import SourceContext, algorithm_loss, build_options
from mmalign.optimizers import make_optimizer
from mmalign.losses.objective import Objective, check_fits, make_objective
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
    reference: Any  # a registered reference strategy (or the cache wrapping it), or None
    stream: Any  # the batch source (mmalign.data.TrainingData.stream, or an online algorithm's)
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
    data = reg.get("data_sources", data_source(cfg))(cfg, plugin, objective.spec.paired, layout, main_log)
    stream = data.stream
    out, store = Path(cfg.output_dir), make_run_store(cfg, reg, accelerator, main_log)
    # bad data was refused above, before --overwrite moves a run aside
    store.claim(data.content, fresh=not resume, overwrite=overwrite, cleanup=cleanup)
    steps_per_epoch = stream.per_epoch // (stream.batch_size * stream.accumulation * stream.world)
    total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    source_reference = algorithm is not None and algorithm.source_needs_reference  # KL in the reward
    needs_reference = (objective.spec.needs_reference or source_reference) and \
        (algorithm is None or cfg.loss.beta > 0)
    policy, optimizer, scheduler, reference = build_models(cfg, reg, plugin, needs_reference, accelerator,
                                                           total_steps, main_log)
    if algorithm is not None:  # the online source replaces the offline stream (same data state)
        stream = algorithm.make_source(source_context(cfg, reg, plugin, accelerator, policy, reference,
                                                      stream.examples, main_log))
        if not objective.spec.needs_reference:  # only the source scores with it: no pass per micro-step
            reference = None
    callbacks = build_callbacks(cfg, reg, out, accelerator) if accelerator.is_main_process else []
    contexts = data.first_records(cfg.eval.samples) if cfg.eval.samples and accelerator.is_main_process else []
    return Run(cfg, accelerator, plugin, objective, policy, accelerator.unwrap_model(policy), optimizer,
               scheduler, reference, stream, data.eval_examples, out, store, total_steps, main_log,
               data.reports, callbacks, contexts)


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


def source_context(cfg: Config, reg: Any, plugin: Any, accelerator: Any, policy: Any, reference: Any,
                   records: list, log: Callable) -> SourceContext:
    algorithm = reg.get("algorithms", cfg.algorithm.name, "algorithm.name")
    return SourceContext(plugin, accelerator.unwrap_model(policy), reference, records,
                         build_options(algorithm, cfg.algorithm.options, cfg.source or "config"),
                         cfg.loss.beta, cfg.seed, cfg.train.batch_size, cfg.train.gradient_accumulation_steps,
                         accelerator.num_processes, accelerator.process_index, accelerator.device, reg, log,
                         autocast=accelerator.autocast, prepare_model=accelerator.prepare_model)


def build_models(cfg: Config, reg: Any, plugin: Any, needs_reference: bool, accelerator: Any, total_steps: int,
                 log: Callable) -> tuple:
    """The policy (fp32 master weights, dropout off), the reference, the optimizer and the schedule,
    prepared by accelerate."""
    policy = plugin.load_policy()
    # fp32 master weights for what trains (before the reference copy: it then computes as the policy)
    precision.set_master_weights(policy, cfg.train.master_weights, log)
    disable_dropout(policy)
    policy.train()
    reference = build_reference(cfg, reg, plugin, policy, needs_reference, accelerator)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg.train, params, reg)
    warmup = cfg.train.warmup_steps or int(cfg.train.warmup_ratio * total_steps)
    scheduler = make_scheduler(optimizer, cfg.train.lr_scheduler, warmup, total_steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    if reference is not None and is_sharded(accelerator):  # FSDP: a separate copy is sharded too
        reference.shard(accelerator)
    return policy, optimizer, scheduler, reference


def build_reference(cfg: Config, reg: Any, plugin: Any, policy: torch.nn.Module, needs_reference: bool,
                    accelerator: Any) -> Any:
    """The reference strategy ``reference.strategy`` names (mmalign_register_references); None
    when nothing needs one."""
    if not needs_reference:
        return None
    if cfg.reference.strategy == "none":
        raise ConfigError("reference.strategy is 'none' but the loss needs a reference model. "
                          "Use a reference-free loss (e.g. sft) or strategy auto/copy.")
    return reg.get("references", cfg.reference.strategy, "reference.strategy")(policy, plugin, cfg, accelerator)


def cache_reference(run: Run) -> None:
    """``reference.cache``: every training example scored with the reference once, now (the
    registered ``cache``)."""
    from mmalign.plugins import registry

    if run.reference is not None and run.cfg.reference.cache != "none":
        run.reference = registry().get("references", "cache", "reference.cache")(run)


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
