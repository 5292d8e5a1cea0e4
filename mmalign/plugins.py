"""The plugin manager: every plugin, the built-in ones included, comes from the ``mmalign``
entry-point group (then in-process ones from :func:`register`); the core imports none of them.

``registry()`` collects everything the hooks register into one :class:`Registry`. Block a plugin
by name with the environment variable ``MMALIGN_BLOCK_PLUGINS=name1,name2`` or ``block=[...]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from mmalign import hookspecs
from mmalign.errors import RegistryError
from mmalign.protocol import ModalityPlugin

ENTRY_POINT_GROUP = "mmalign"
KINDS = ("rewards", "losses", "datasets", "evaluators", "callbacks", "final_files", "scorers", "demos", "commands",
         "algorithms", "run_stores", "optimizers", "data_sources",
         "references")
_SINGULAR = {"rewards": "reward", "losses": "loss", "datasets": "dataset format",
             "evaluators": "evaluator", "callbacks": "callback", "final_files": "final-file writer",
             "scorers": "scorer", "demos": "demo", "commands": "command", "algorithms": "algorithm",
             "run_stores": "run store", "optimizers": "optimizer", "data_sources": "data source",
             "references": "reference strategy"}


@dataclass
class Entry:
    name: str
    obj: Any
    source: str  # the plugin that registered it
    meta: dict = field(default_factory=dict)


class Registry:
    """Name -> registered object, per kind, with the plugin that provided it."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, name: str, obj: Any, source: str, **meta: Any) -> None:
        self.entries[kind][name] = Entry(name, obj, source, meta)

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def entry(self, kind: str, name: str, key: str | None = None) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            known = ", ".join(self.names(kind)) or "(none)"
            where = f" (config key '{key}')" if key else ""
            raise RegistryError(
                f"Unknown {_SINGULAR[kind]} '{name}'{where}. Registered {kind}: {known}. Check the "
                f"spelling, or install the plugin that provides it (`mmalign plugins` lists them)."
            ) from None

    def get(self, kind: str, name: str, key: str | None = None) -> Any:
        return self.entry(kind, name, key).obj


def _blocked(block: Iterable[str] | None) -> set[str]:
    names = set(block or ())
    env = os.environ.get("MMALIGN_BLOCK_PLUGINS", "")
    names.update(n.strip() for n in env.split(",") if n.strip())
    return names


def plugin_manager(block: Iterable[str] | None = None) -> pluggy.PluginManager:
    """A fresh manager with every entry point of the ``mmalign`` group, then the in-process plugins."""
    pm = pluggy.PluginManager("mmalign")
    pm.add_hookspecs(hookspecs)
    for name in _blocked(block):
        pm.set_blocked(name)
    _register_entry_points(pm)
    for name, plugin in _IN_PROCESS.items():  # mmalign.register(...): last, so they override
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
    return pm


def _built_in(ep: Any) -> bool:
    """An entry point of mmalign's own distribution (text, vlm, diffusion, losses, ...)."""
    return ep.dist is not None and ep.dist.metadata["name"] == "mmalign"


def _register_entry_points(pm: pluggy.PluginManager) -> None:
    import importlib.metadata

    # mmalign's own plugins first, then installed ones: a later registration of a name wins
    points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                    key=lambda ep: (not _built_in(ep), ep.name))
    for ep in points:
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        dist = f"{ep.dist.metadata['name']} {ep.dist.version}" if ep.dist else None
        try:
            plugin = ep.load()
        except Exception as e:  # a broken plugin must not look like a crash of mmalign
            raise RegistryError(_broken(ep.name, dist, f"failed to import ({type(e).__name__}: {e})")) from None
        pm.register(plugin, name=ep.name)
        _DISTRIBUTIONS[id(plugin)] = dist


_DISTRIBUTIONS: dict[int, str | None] = {}


def _broken(name: str, dist: str | None, what: str) -> str:
    return (f"Plugin '{name}'{f' ({dist})' if dist else ''} {what}. Fix or uninstall it, or run "
            f"with MMALIGN_BLOCK_PLUGINS={name} to skip it.")


def build_registry(pm: pluggy.PluginManager) -> Registry:
    reg = Registry()
    # Implementations are called oldest first, so a later plugin (an entry point) overrides a
    # built-in that registered the same name.
    for kind in KINDS:
        hook = getattr(pm.hook, f"mmalign_register_{kind}")
        for impl in hook.get_hookimpls():  # pluggy returns them in registration order
            source = pm.get_name(impl.plugin) or repr(impl.plugin)
            dist = _DISTRIBUTIONS.get(id(impl.plugin))
            label = f"{source} ({dist})" if dist else source

            def register(*args: Any, _kind: str = kind, _label: str = label, **kwargs: Any) -> None:
                _register(reg, _kind, _label, *args, **kwargs)

            # Pass only the arguments the implementation declares (pluggy's own rule), so a hook
            # can gain arguments without breaking plugins written against fewer.
            available = {"register": register}
            try:
                impl.function(**{name: available[name] for name in impl.argnames})
            except Exception as e:
                raise RegistryError(_broken(source, dist, f"failed in mmalign_register_{kind} "
                                                          f"({type(e).__name__}: {e})")) from None
    return reg


def _register(reg: Registry, kind: str, source: str, *args: Any, **kwargs: Any) -> None:
    if kind in ("losses", "algorithms"):  # a LossSpec / Algorithm carries its own name
        (spec,) = args
        reg.add(kind, spec.name, spec, source)
        return
    name, obj = args
    if kind == "rewards" and not (isinstance(obj, type) and issubclass(obj, ModalityPlugin)):
        raise TypeError(f"reward '{name}' must be a subclass of mmalign.protocol.ModalityPlugin "
                        f"(got {obj!r})")
    if kwargs.get("implied_by") is not None:
        from mmalign.callbacks import is_config_key

        if not is_config_key(kwargs["implied_by"]):
            raise TypeError(f"{kind} '{name}': implied_by '{kwargs['implied_by']}' is not a config key")
    reg.add(kind, name, obj, source, **kwargs)


_REGISTRY: Registry | None = None
_IN_PROCESS: dict[str, Any] = {}


class Registration:
    """What :func:`register` returns: ``remove()`` (or leaving a ``with`` block) unregisters."""

    def __init__(self, name: str):
        self.name = name

    def remove(self) -> None:
        _IN_PROCESS.pop(self.name, None)
        registry(refresh=True)

    def __enter__(self) -> "Registration":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def register(plugin: Any, name: str | None = None) -> Registration:
    """Register an in-process plugin (a module, class or object with ``@mmalign.hookimpl``
    functions), e.g. in a test or a notebook, after the built-in and installed ones (it overrides
    a name they registered). Returns a :class:`Registration`; use it as a context manager to
    unregister on leaving the block."""
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    _IN_PROCESS[name] = plugin
    try:
        registry(refresh=True)
    except Exception:  # a broken plugin is not kept: the registry stays as it was
        del _IN_PROCESS[name]
        raise
    return Registration(name)


def registry(refresh: bool = False) -> Registry:
    """The process-wide registry (built once; ``refresh=True`` rebuilds it, e.g. after installs)."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = build_registry(plugin_manager())
    return _REGISTRY
