"""The base class of training callbacks. Callbacks themselves come from plugins (``plot`` from the
built-in ``metrics`` plugin), registered by name through ``mmalign_register_callbacks``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

# config keys that only turn on a callback a plugin registers with implied_by=KEY: set while no
# installed plugin claims one, they are refused rather than silently doing nothing
CALLBACK_KEYS = ("train.report_to", "train.push_to_hub", "eval.samples")

class Callback:
    """Base class of training callbacks: override what you need (every method is a no-op here).
    Called on the main process only."""

    def on_log(self, step: int, row: dict) -> None:
        """A metrics row was written to metrics.jsonl (every ``train.log_every`` steps)."""

    def on_eval(self, step: int, metrics: dict) -> None:
        """The evaluators ran; ``metrics`` holds their ``eval/...`` values."""

    def on_samples(self, step: int, samples: list[dict]) -> None:
        """The policy answered eval.samples prompts: [{"prompt", "response" (text or a PIL image),
        "where"}] (mmalign/eval_samples.py)."""

    def on_train_end(self, history: list[dict]) -> None:
        """Training finished (``final/`` is written); ``history`` holds every row."""


def build_callbacks(cfg: Any, reg: Any, out: Path, accelerator: Any) -> list[Callback]:
    """The run's callbacks (:func:`callbacks_of`). Each factory is called as ``factory(output_dir)``,
    plus the keywords it declares among ``cfg`` and ``accelerator``."""
    context = {"cfg": cfg, "accelerator": accelerator}
    return [_make(reg.get("callbacks", name, key), out, context) for name, key in callbacks_of(cfg, reg)]


def callbacks_of(cfg: Any, reg: Any) -> list[tuple[str, str]]:
    """(name, the config key that asks for it) of every callback the run uses: those of
    ``train.callbacks``, then each registered with ``implied_by=KEY`` whose key is set (the
    ``trackers`` of ``train.report_to``, ``push_to_hub``, ``samples`` of ``eval.samples``)."""
    from mmalign.validation import lookup

    names = [(name, f"train.callbacks[{i}]") for i, name in enumerate(cfg.train.callbacks)]
    for entry in reg.entries["callbacks"].values():
        key = entry.meta.get("implied_by")
        if key and lookup(cfg, key) and entry.name not in cfg.train.callbacks:
            names.append((entry.name, key))
    return names


def is_config_key(key: str) -> bool:
    """Whether ``key`` (``train.report_to``) names a key of the config (what ``implied_by=`` must be)."""
    import dataclasses

    from mmalign.config import Config

    node: Any = Config()
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return False
        node = getattr(node, part)
    return True


def _make(factory: Any, out: Path, context: dict) -> Callback:
    """``factory(out, **the part of context it accepts)``: a factory written for ``factory(out)``
    keeps working (as pluggy lets a hook implementation take fewer arguments)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: the plain call
        return factory(out)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return factory(out, **context)
    return factory(out, **{k: v for k, v in context.items() if k in params})
