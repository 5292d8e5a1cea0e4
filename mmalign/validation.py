"""Config values: every key's type was checked while the config was built; this checks values
and the rules across keys (finite numbers, minimum sizes, probabilities, non-empty strings, and
the modality plugin's own ``data.*`` keys through their ``problem()``), with no registry: ``load_config`` runs :func:`validate`.

Validation happens in three stages, each in its module, all before any model, tokenizer or data
file is loaded:

    mmalign.config_file.read_config_file(path)    the YAML file -> a mapping
    mmalign.validation.validate(cfg, where)        values and cross-key rules (this module)
    mmalign.run_validation.validate_for_run(cfg)   names against the registry and the modality; the
                                                   rules of what the config picks (a data source, a
                                                   reference strategy, callbacks: their check=)

Every failure is a :class:`mmalign.errors.ConfigError` naming the file and the dotted key, and the fix.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from mmalign.config_file import short_repr
from mmalign.errors import ConfigError

INT64_MAX = 2 ** 63 - 1

# key -> smallest allowed value (and largest, when the library that reads it has one)
INT_RANGES: dict[str, tuple[int, int]] = {
    "seed": (0, 2 ** 32 - 1),  # numpy's seed range (accelerate's set_seed seeds numpy too)
    "model.lora.r": (1, INT64_MAX),
    "data.eval_size": (0, INT64_MAX),
    "data.shuffle_buffer": (1, INT64_MAX),
    "data.prefetch": (0, INT64_MAX),
    "train.max_steps": (0, INT64_MAX),
    "train.batch_size": (1, INT64_MAX),
    "train.gradient_accumulation_steps": (1, INT64_MAX),
    "train.warmup_steps": (0, INT64_MAX),
    "train.log_every": (1, INT64_MAX),
    "train.eval_every": (0, INT64_MAX),
    "train.save_every": (0, INT64_MAX),
    "train.keep_last": (1, INT64_MAX),
    "eval.batch_size": (1, INT64_MAX),
    "eval.samples": (0, INT64_MAX),
}

# key -> (test, what the value must be); every number must also be finite
NUMBER_RULES: dict[str, tuple[Any, str]] = {
    "model.lora.alpha": (lambda v: v > 0, "positive"),
    "model.lora.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "loss.beta": (lambda v: v >= 0, ">= 0 (positive for offline losses; 0 turns an online algorithm's KL off)"),
    "loss.sft_weight": (lambda v: v >= 0, ">= 0 (0 turns the NLL term off)"),
    "train.epochs": (lambda v: v > 0, "positive (a number of passes over the data, e.g. 1 or 0.5)"),
    "train.lr": (lambda v: v > 0, "positive"),
    "train.weight_decay": (lambda v: v >= 0, ">= 0"),
    "train.warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.max_grad_norm": (lambda v: v >= 0, ">= 0 (0 disables clipping)"),
}

# keys whose string value must not be empty (an empty path would mean the current directory)
NON_EMPTY = ("output_dir", "model.reward", "model.name_or_path", "model.tokenizer", "reference.strategy",
             "reference.name_or_path", "reference.cache_dir", "data.train", "data.eval", "data.source", "data.format",
             "loss.name", "eval.checkpoint", "train.push_to_hub")

# free-form mappings: string keys, finite numbers anywhere inside
FREE_MAPPINGS = ("model.tiny", "model.options", "loss.options", "eval.options")


def fail(where: str | None, key: str, message: str) -> ConfigError:
    """The error for a bad value of ``key``, with the fix; ``where`` (the config file) first,
    unless None: a plugin's check, which the core prefixes."""
    settable = key.split("[")[0]  # --set names a whole list, not one of its items
    return ConfigError(f"{where + ': ' if where else ''}key '{key}' {message} Fix it in the config file or "
                       f"with --set {settable}=VALUE (see docs/configuration.md).")


def warn(message: str) -> None:
    """A setting that is legal but probably not meant: said once on stderr, the run goes on."""
    print(f"mmalign: warning: {message}", file=sys.stderr)


def lookup(cfg: Any, key: str) -> Any:
    """The value of a dotted key (``train.lr``) in a Config; None inside an unset section."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part, None) if value is not None else None
    return value


# --- values -------------------------------------------------------------------------------------


def validate(cfg: Any, where: str = "config") -> None:
    """Types are checked while the config is built; this checks values and the rules across keys."""
    for key, (low, high) in INT_RANGES.items():
        value = lookup(cfg, key)
        if value is not None and not low <= value <= high:
            bound = f"at least {low}" if high == INT64_MAX else f"in [{low}, {high}]"
            raise fail(where, key, f"must be {bound}, got {value}.")
    for key, (test, what) in NUMBER_RULES.items():
        value = lookup(cfg, key)
        if value is not None:
            _finite(value, key, where)
            if not test(value):
                raise fail(where, key, f"must be {what}, got {value}.")
    for key in NON_EMPTY:
        value = lookup(cfg, key)
        if isinstance(value, str) and not value.strip():
            raise fail(where, key, "is an empty string; give a value or remove the key.")
    for key in FREE_MAPPINGS:
        value = lookup(cfg, key)
        if value is not None:
            _check_free(value, key, where)
    _check_lists(cfg, where)
    _check_cross(cfg, where)


def _finite(value: Any, key: str, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(where, key, f"must be a finite number, got {value}.")


def _check_free(value: Any, key: str, where: str) -> None:
    """Inside free-form mappings (model.tiny, options): string keys and finite numbers."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise fail(where, key, f"has the key {k!r} ({type(k).__name__}); keys must be "
                                       f"names (strings).")
            _check_free(v, f"{key}.{k}", where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_free(v, f"{key}[{i}]", where)
    else:
        _finite(value, key, where)


def _check_lists(cfg: Any, where: str) -> None:
    betas = cfg.train.adam_betas
    if len(betas) != 2:
        raise fail(where, "train.adam_betas", f"must be two numbers, e.g. [0.9, 0.999]; got {betas}.")
    for i, b in enumerate(betas):
        _finite(b, f"train.adam_betas[{i}]", where)
        if not 0 <= b < 1:
            raise fail(where, f"train.adam_betas[{i}]", f"must be in [0, 1), got {b}.")
    names = {"train.callbacks": cfg.train.callbacks, "eval.evaluators": cfg.eval.evaluators,
             "train.report_to": cfg.train.report_to}
    lora = cfg.model.lora
    if lora is not None:
        modules = lora.target_modules
        names["model.lora.target_modules"] = [modules] if isinstance(modules, str) else modules
        if not names["model.lora.target_modules"]:
            raise fail(where, "model.lora.target_modules", "is empty; name the modules LoRA adapts, "
                                                           "e.g. all-linear or [q_proj, v_proj].")
    for key, items in names.items():
        for i, item in enumerate(items):
            if not item.strip():
                raise fail(where, f"{key}[{i}]", "is an empty string; give a name.")
        if len(set(items)) != len(items):
            raise fail(where, key, f"names an entry twice ({items}); list each once.")
    for name, options in cfg.eval.options.items():
        if not isinstance(options, dict):
            raise fail(where, f"eval.options.{name}", f"must be a mapping of that evaluator's "
                                                      f"options, got {short_repr(options)}.")


def _check_cross(cfg: Any, where: str) -> None:
    """Rules that involve two keys."""
    model, train, data = cfg.model, cfg.train, cfg.data
    if model.name_or_path is None and model.tiny is None:
        raise fail(where, "model.name_or_path", "is required (a local path or hub id), unless "
                                                "model.tiny describes a model to build.")
    if model.name_or_path is not None and model.tiny is not None:
        raise fail(where, "model.tiny", "is set together with model.name_or_path: a model is either "
                                        "loaded or built from model.tiny. Remove one of them.")
    if not cfg.algorithm.name and cfg.loss.beta <= 0:
        raise fail(where, "loss.beta", f"must be positive, got {cfg.loss.beta} (an offline loss divides "
                                       f"by it or scales the log-ratio with it; only an online "
                                       f"algorithm takes 0, for no KL penalty).")
    if train.warmup_steps and train.warmup_ratio:
        raise fail(where, "train.warmup_ratio", f"is set together with train.warmup_steps "
                                                f"({train.warmup_steps}); keep one of them.")
    if train.max_steps and train.warmup_steps >= train.max_steps:
        # a warning, not an error: short smoke runs (the demos' --quick) do this on purpose
        warn(f"{where}: train.warmup_steps ({train.warmup_steps}) is not below train.max_steps "
             f"({train.max_steps}): the learning rate never reaches train.lr and never decays.")
    _check_data_options(data.options, where)


def _check_data_options(options: Any, where: str) -> None:
    """The modality plugin's own data.* keys (mmalign/plugin_data_options.py): their ranges and
    rules, said by the plugin's ``problem()`` as (dotted key, what is wrong)."""
    problem = getattr(options, "problem", None)
    found = problem() if callable(problem) else None
    if found:
        raise fail(where, *found)
