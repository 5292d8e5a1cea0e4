"""Typed building of config dataclasses from YAML values: every key checked against its annotation
(Literal, Optional, int, float, lists, nested dataclasses), with the dotted key, the expected type
and the fix in the error. Used for the core config and for plugin-declared keys (data options,
algorithm options)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from mmalign.errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number",
            str: "a string", dict: "a mapping"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float, dicts ->
    dataclasses). Raise ConfigError naming the key otherwise."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = {}
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key, where)
            except ConfigError as e:
                errors[arg] = e
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and value is not None:  # Optional[X]: the error about X is the useful one
            raise errors[inner[0]]
        raise _type_error(value, tp, key, where)
    if origin is Literal:
        if value is False and "no" in typing.get_args(tp):
            return "no"  # YAML 1.1 reads a bare `no` as false
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise _type_error(value, tp, key, where)
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(value, tp, key, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _type_error(value, tp, key, where)
        return _build(tp, value, key, where)
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(value, tp, key, where)
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" as a string; accept it as a number
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool, dict) and isinstance(value, tp):
        return value
    raise _type_error(value, tp, key, where)


def _type_error(value: Any, tp: Any, key: str, where: str) -> ConfigError:
    return ConfigError(
        f"{where}: key '{key}' must be {_type_name(tp)}, got {value!r} "
        f"({type(value).__name__}). Fix the value in the config or with --set {key}=VALUE."
    )


def _build(cls: type, data: dict, prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = ", ".join(fields)
            raise ConfigError(
                f"{where}: unknown key '{dotted}'. Valid keys{' of ' + prefix if prefix else ''}: "
                f"{valid}. Check the spelling (see docs/configuration.md)."
            )
        kwargs[key] = _convert(value, hints[key], dotted, where)
    return cls(**kwargs)
