"""A modality plugin's own ``data.*`` keys, kept out of the core config.

Users write every ``data.*`` key flat, as with TRL (``data: {train: pairs.jsonl, max_length: 512}``).
The core :class:`mmalign.config.DataConfig` declares only the modality-neutral ones; the reward
factory named by ``model.reward`` may declare the rest as a dataclass type, ``data_options`` (same
typing conventions as mmalign/config.py). ``load_config``:

    1. split_plugin_keys   takes the non-core keys out of the ``data`` section
    2. builds the core Config from what is left
    3. attach_data_options checks those keys against the plugin's dataclass (types as for every
                           key) and stores the instance as ``cfg.data.options`` (NoDataOptions
                           when the plugin declares none)
    4. validate            calls ``cfg.data.options.problem()`` (ranges, rules across the keys)

``to_flat_dict`` writes them back flat under ``data:``, so a dumped config.yaml loads again
identically. The core looks the plugin up through the registry only, never by importing it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from mmalign.errors import ConfigError, RegistryError


def core_data_keys() -> list[str]:
    from mmalign.config import DataConfig

    return [f.name for f in dataclasses.fields(DataConfig) if not f.metadata.get("internal")]


def split_plugin_keys(data: dict) -> dict:
    """Remove from ``data["data"]`` (in place) the keys that are not core keys; return them. A
    ``data`` section that is not a mapping stays as it is (building the config reports it)."""
    section = data.get("data")
    if not isinstance(section, dict):
        return {}
    core = set(core_data_keys())
    data["data"] = {k: v for k, v in section.items() if k in core}
    return {k: v for k, v in section.items() if k not in core}


def data_options_class(reward: str) -> Optional[type]:
    """The ``data_options`` dataclass the reward ``reward`` declares; None when it declares none.
    An unknown reward raises the registry's RegistryError (naming the registered rewards)."""
    from mmalign.plugins import registry

    cls = getattr(registry().entry("rewards", reward, "model.reward").obj, "data_options", None)
    if cls is not None and not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"model.reward '{reward}': its data_options must be a dataclass type, got "
                          f"{cls!r}. Fix the plugin (see docs/writing-a-plugin.md).")
    return cls


def attach_data_options(cfg: Any, plugin_keys: dict, where: str) -> Optional[RegistryError]:
    """Build ``cfg.data.options`` from ``plugin_keys`` and the plugin of ``cfg.model.reward``.

    An unknown reward is not raised here when no plugin key was written: the run's checks report
    it as before (validate_for_run). Otherwise it is returned, to be raised once the core values
    are checked (so that, e.g., an empty model.reward is reported as such)."""
    from mmalign.config import NoDataOptions
    from mmalign.config_types import _build

    reward = cfg.model.reward
    try:
        cls = data_options_class(reward)
    except RegistryError as e:
        cfg.data.options = NoDataOptions()
        return RegistryError(f"{where}: {e}") if plugin_keys else None
    declared = [f.name for f in dataclasses.fields(cls)] if cls is not None else []
    for key in plugin_keys:
        if key not in declared:
            raise ConfigError(
                f"{where}: unknown key 'data.{key}'. Valid keys of data: {', '.join(core_data_keys())}; "
                f"and of the '{reward}' plugin (model.reward): {', '.join(declared) or '(none)'}. "
                f"Check the spelling (see docs/configuration.md).")
    cfg.data.options = _build(cls, plugin_keys, "data", where) if cls is not None else NoDataOptions()
    return None


def to_flat_dict(cfg: Any) -> dict:
    """``dataclasses.asdict(cfg)`` with the plugin's data options flat under ``data`` (as users
    write them), after the core keys."""
    data = dataclasses.asdict(cfg)
    options = data["data"].pop("options", None)
    if isinstance(options, dict):
        data["data"].update(options)
    return data
