"""The names a config uses, checked against the registry and the modality before a run: the data
source and reference strategy it picks (and their own rules), the loss (it fits the modality; its
options' names, types and ranges, by a dry run on a fake batch), evaluators, callbacks, the data format, the data keys the command needs, hardware (fp16 needs a
GPU), output_dir, and the modality plugin's own checks (``factory.check_config(model_cfg,
data_cfg)``). Runs before training, eval, score and ``mmalign check``; it never loads a model and
never downloads. The values themselves were checked when the config was built
(:func:`mmalign.validation.validate`)."""

from __future__ import annotations

from typing import Any

from mmalign.config_file import short_repr
from mmalign.errors import ConfigError, MmalignError
from mmalign.optimizers import check_optimizer
from mmalign.validation import fail


def validate_for_run(cfg: Any, where: str = "config", *, command: str = "train", reg: Any = None) -> None:
    """Everything the run will look up, checked now: nothing is loaded, nothing downloaded."""
    from mmalign.errors import RegistryError

    try:
        _validate_names(cfg, where, command, reg)
    except RegistryError as e:  # name the config file too
        raise RegistryError(f"{where}: {e}") from None


def _validate_names(cfg: Any, where: str, command: str, reg: Any) -> None:
    from mmalign.plugins import registry

    reg = reg or registry()
    _check_sources(cfg, reg, where, command)  # the rules of the data source and reference the config picks
    factory_entry = reg.entry("rewards", cfg.model.reward, "model.reward")
    modality = cfg.model.reward
    spec = _loss_of(cfg, reg, where)
    kind = factory_entry.obj.score_kind
    if spec.score_kinds is not None and kind not in spec.score_kinds:
        fits = [n for n in reg.names("rewards")
                if reg.get("rewards", n).score_kind in spec.score_kinds]
        raise fail(where, "loss.name", f"is '{spec.name}', which does not apply to modality "
                                       f"'{modality}' (model.reward; it supports: {', '.join(fits)}: "
                                       f"it is defined on {' or '.join(spec.score_kinds)} scores and "
                                       f"'{modality}' scores are {kind}). Choose another loss "
                                       f"(`mmalign plugins` lists them).")
    _check_extras(spec, factory_entry.obj, modality, reg, where)
    if not cfg.algorithm.name:  # an algorithm's loss takes its options from algorithm.options
        check_loss_options(spec, cfg.loss.options, cfg.loss.beta, where)
    if spec.per_unit and not factory_entry.obj.per_unit_scores:
        raise fail(where, "algorithm.name" if cfg.algorithm.name else "loss.name",
                   f"is '{cfg.algorithm.name or spec.name}', which needs per-unit scores (per-token "
                   f"log-probs), and the '{modality}' plugin does not provide them.")
    algorithm = reg.get("algorithms", cfg.algorithm.name) if cfg.algorithm.name else None
    if algorithm is not None:  # what the plugin samples with (text: temperature; diffusion: steps, eta)
        from mmalign.algorithms import build_options

        try:
            factory_entry.obj.sampling_options(build_options(algorithm, cfg.algorithm.options, where))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if algorithm is not None and algorithm.needs_beta and not cfg.loss.beta:
        raise fail(where, "loss.beta", f"is 0, but algorithm '{algorithm.name}' trains loss '{spec.name}', "
                                       f"whose implicit reward beta * log(pi / pi_ref) needs beta > 0 "
                                       f"(e.g. 0.1).")
    source_needs = algorithm is not None and algorithm.source_needs_reference
    if (spec.needs_reference or source_needs) and cfg.reference.strategy == "none" and cfg.loss.beta:
        raise fail(where, "reference.strategy", f"is 'none' but {'algorithm' if cfg.algorithm.name else 'loss'} "
                                                f"'{cfg.algorithm.name or spec.name}' needs a reference "
                                                f"model. Use a reference-free loss (e.g. simpo, sft) "
                                                f"or strategy auto/copy.")
    _check_evaluators(cfg, reg, modality, where)
    _check_callbacks(cfg, reg, where)
    store = reg.entry("run_stores", cfg.train.run_store, "train.run_store")
    if cfg.data.format != "auto":
        reg.entry("datasets", cfg.data.format, "data.format")
    _check_data_keys(cfg, command, where)
    check_optimizer(cfg.train.optimizer, reg, where)
    _check_hardware(cfg, where)
    if command == "train":  # the store checks where it will write (local: output_dir is writable)
        _plugin_check(store.meta.get("check"), cfg, where)
    try:  # the modality plugin's own keys (model.options, model.tiny)
        factory_entry.obj.check_config(cfg.model, cfg.data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _loss_of(cfg: Any, reg: Any, where: str) -> Any:
    """The loss the run trains: the online algorithm's (its options checked), else loss.name."""
    if not cfg.algorithm.name:
        return reg.get("losses", cfg.loss.name, "loss.name")
    from mmalign.algorithms import algorithm_loss, build_options, check_options
    from mmalign.config import LossConfig

    ignored = [k for k in ("name", "options", "sft_weight") if getattr(cfg.loss, k) != getattr(LossConfig(), k)]
    if ignored:  # silently training another loss than the one named would be worse
        raise fail(where, f"loss.{ignored[0]}", f"is set, but an online algorithm ('{cfg.algorithm.name}') "
                                                f"trains its own loss: only loss.beta applies. Set the "
                                                f"loss through algorithm.options (online_dpo: loss, "
                                                f"loss_options) or remove loss.{ignored[0]}.")

    algorithm = reg.get("algorithms", cfg.algorithm.name, "algorithm.name")
    options = build_options(algorithm, cfg.algorithm.options, where)
    check_options(options, where, cfg.train.save_every)
    if algorithm.check is not None:
        algorithm.check(options, reg)
    return algorithm_loss(algorithm, options, reg, where)


def _check_extras(spec: Any, factory: Any, modality: str, reg: Any, where: str) -> None:
    """The extra scores the loss needs against those the plugin can ever compute (the plugin
    checks its settings once it is built: mmalign.losses.objective.check_fits)."""
    missing = [e for e in spec.extras if e not in factory.provides_extras]
    if missing:
        providers = [n for n in reg.names("rewards")
                     if missing[0] in reg.get("rewards", n).provides_extras]
        raise fail(where, "loss.name", f"is '{spec.name}', which does not apply to modality '{modality}' "
                                       f"(model.reward): it needs the '{missing[0]}' score, which only "
                                       f"{', '.join(providers) or 'no installed plugin'} computes. "
                                       f"Choose another loss (`mmalign plugins` lists them).")


def check_loss_options(spec: Any, options: dict, beta: float, where: str = "config", *,
                       prefix: str = "loss.options") -> None:
    """``loss.options`` (or the options at ``prefix``: online DPO's ``algorithm.options.loss_options``)
    against the options the loss function declares (its keyword arguments): names, types (those of
    the defaults) and ranges (the function's own checks, run on a fake batch of two pairs)."""
    declared = spec.options
    listed = ", ".join(f"{k} (default {v!r})" for k, v in declared.items()) or "(none)"
    for name, value in options.items():
        key = f"{prefix}.{name}"
        if name not in declared:
            raise fail(where, key, f"is not an option of loss '{spec.name}'. Its options: {listed}.")
        default = declared[name]
        if not _same_kind(value, default):
            raise fail(where, key, f"must be {_kind_name(default)} like its default {default!r}, got "
                                   f"{short_repr(value)} ({type(value).__name__}).")
    _dry_run(spec, options, beta, where, prefix)


def _same_kind(value: Any, default: Any) -> bool:
    if default is None or default is Ellipsis:
        return True  # no default to compare with: the dry run checks it
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, (str, dict, list, tuple)):
        return isinstance(value, (list, tuple) if isinstance(default, (list, tuple)) else type(default))
    return True


def _kind_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true/false"
    return {float: "a number", int: "an integer", str: "a string", dict: "a mapping",
            list: "a list", tuple: "a list"}.get(type(default), type(default).__name__)


def _dry_run(spec: Any, options: dict, beta: float, where: str, prefix: str = "loss.options") -> None:
    """Call the loss once on zero scores of two pairs: its own option checks (label_smoothing in
    [0, 0.5), a registered term, ...) fire now, not at step 1. Failures that are not about the
    config (a loss that needs extra scores a fake batch lacks) are left to the run."""
    import torch

    from mmalign.losses.objective import loss_values, make_objective
    from mmalign.plugins import registry
    from mmalign.scores import Scores

    if spec.extras or spec.responses == "group":
        return  # its checks are about the plugin's further scores, which a fake batch lacks
    k = 2 if spec.paired else 1
    fake = Scores(torch.zeros(2, k), torch.ones(2, k))
    try:
        obj = make_objective(spec, beta=beta, options=dict(options),
                             lookup=lambda name, key: registry().get("losses", name, key))
        loss_values(spec, fake, fake if spec.needs_reference else None, beta=beta, options=obj.options)
    except MmalignError as e:  # ConfigError, or RegistryError for a term of `weighted`
        text = str(e).replace("loss.options", prefix)  # the functions name the offline key
        key = prefix if prefix in text else prefix.rsplit(".", 1)[0]
        raise ConfigError(f"{where}: {text if key in text else f'{key}: {text}'}") from None
    except Exception:  # noqa: BLE001 (not a config problem, see the docstring)
        pass


def _check_evaluators(cfg: Any, reg: Any, modality: str, where: str) -> None:
    for i, name in enumerate(cfg.eval.evaluators):
        entry = reg.entry("evaluators", name, f"eval.evaluators[{i}]")
        fits = entry.meta.get("modalities")
        if fits is not None and modality not in fits:
            others = [n for n in reg.names("evaluators")
                      if modality in (reg.entry("evaluators", n).meta.get("modalities") or (modality,))]
            raise fail(where, f"eval.evaluators[{i}]", f"is '{name}', which applies to model.reward "
                                                       f"{', '.join(fits)}, not '{modality}'. Evaluators "
                                                       f"for {modality}: {', '.join(others)}.")
    for name in cfg.eval.options:
        if name not in cfg.eval.evaluators:
            raise fail(where, f"eval.options.{name}", f"gives options to '{name}', which is not in "
                                                      f"eval.evaluators ({cfg.eval.evaluators}). Add it "
                                                      f"there or remove its options.")


def _check_callbacks(cfg: Any, reg: Any, where: str) -> None:
    """Every callback the run uses is registered; one registered with ``check=`` checks the keys
    it reads (``trackers``: the trackers of train.report_to)."""
    from mmalign.callbacks import CALLBACK_KEYS, callbacks_of
    from mmalign.validation import lookup

    claimed = {entry.meta.get("implied_by") for entry in reg.entries["callbacks"].values()}
    for key in CALLBACK_KEYS:
        if lookup(cfg, key) and key not in claimed:
            raise fail(where, key, "is set, but no installed plugin registers a callback for it (implied_by=): "
                                   "install or unblock the plugin that does (`mmalign plugins` lists callbacks).")
    for name, key in callbacks_of(cfg, reg):
        _plugin_check(reg.entry("callbacks", name, key).meta.get("check"), cfg, where)


def _check_sources(cfg: Any, reg: Any, where: str, command: str) -> None:
    """The rules of the data source training reads and of the reference strategy (their ``check=``)."""
    from mmalign.data import data_source
    from mmalign.errors import RegistryError

    if command in ("train", "check"):
        key = "data.source" if cfg.data.source != "auto" else None
        _plugin_check(reg.entry("data_sources", data_source(cfg), key).meta.get("check"), cfg, where)
    if cfg.reference.strategy == "none":
        return
    strategies = [n for n in reg.names("references") if not reg.entry("references", n).meta.get("wraps")]
    if cfg.reference.strategy not in strategies:  # `cache` is registered too, but wraps a strategy
        raise RegistryError(f"Unknown reference strategy '{cfg.reference.strategy}' (config key "
                            f"'reference.strategy'). Registered: {', '.join(strategies)}; or none. Check the "
                            f"spelling, or install the plugin that provides it (`mmalign plugins` lists them).")
    _plugin_check(reg.entry("references", cfg.reference.strategy).meta.get("check"), cfg, where)


def _plugin_check(check: Any, cfg: Any, where: str) -> None:
    """A plugin's ``check(cfg)`` (registered with ``check=``), its ConfigError prefixed with ``where``."""
    try:
        if check is not None:
            check(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_data_keys(cfg: Any, command: str, where: str) -> None:
    if command in ("train", "check") and cfg.data.train is None:
        raise fail(where, "data.train", "is required to train: set 'data.train' in the config to a "
                                        "data file (e.g. train.jsonl).")
    if command in ("eval", "score") and cfg.data.train is None and cfg.data.eval is None:
        raise fail(where, "data.eval", "is required (or data.train): the records to evaluate.")


def _check_hardware(cfg: Any, where: str) -> None:
    """fp16 compute needs a GPU: on a CPU accelerate would silently compute in float32."""
    import torch

    from mmalign.precision import mixed_precision

    try:
        mixed = mixed_precision(cfg.model.dtype, cfg.train.precision)  # model.dtype implies one too
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if mixed == "fp16" and not torch.cuda.is_available():
        key = "train.precision" if cfg.train.precision == "fp16" else "model.dtype"
        raise fail(where, key, "asks for fp16 compute, which needs a CUDA GPU, and none is visible: "
                               "fp16 compute is not available on cpu (accelerate would silently "
                               "compute in float32). On CPU use train.precision: bf16 (or "
                               "model.dtype: bfloat16), or float32 (precision no).")
