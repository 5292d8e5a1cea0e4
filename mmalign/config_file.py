"""Reading a YAML config file into a mapping: every way the file itself can be unusable (a
directory, a missing or unreadable file, text that is not UTF-8, invalid YAML, a key given twice in
one section, an alias bomb, a top level that is not a mapping) is a
:class:`mmalign.errors.ConfigError` naming the file and, where there is one, the line. What the
values mean is checked afterwards (:mod:`mmalign.validation`). ``--set KEY=VALUE`` overrides are
applied to that mapping here too (:func:`apply_overrides`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmalign.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error, not a silent
    'the last one wins'."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice in "
                                  f"one section (first at line {seen[key]}). Keep one of them.")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_config_file(path: str | Path) -> dict:
    """The mapping in a YAML config file. Every way the file can be unusable is a ConfigError
    naming it (and the line, where there is one)."""
    p = Path(path)
    example = "Pass the path of a YAML file, e.g. configs/demo/text.yaml."
    if p.is_dir():
        raise ConfigError(f"Config '{path}' is a directory, not a file. {example}")
    if not p.exists():
        raise ConfigError(f"Config file '{path}' does not exist. {example}")
    if not p.is_file():
        raise ConfigError(f"Config '{path}' is not a regular file (a device, pipe or socket). {example}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"Config file '{path}' cannot be read ({e.strerror or e}). Check its "
                          f"permissions (e.g. chmod u+r).") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line} is not UTF-8 text (byte 0x{raw[e.start]:02x}). Save the "
                          f"file as UTF-8.") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} is not valid YAML ({getattr(e, 'problem', e)}). "
                          f"Fix the syntax at that line.") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read. A config is a few levels of "
                          f"sections; check the file.") from None
    if _expanded_size(data, MAX_VALUES) > MAX_VALUES:
        raise ConfigError(f"{path}: expands to more than {MAX_VALUES} values (YAML anchors and aliases "
                          f"repeating one another?). A config is a few dozen keys; check the file.")
    return check_top_level(data, str(path))


MAX_VALUES = 100_000


def _expanded_size(value: Any, cap: int) -> int:
    """Values in ``value`` with every YAML alias expanded, counted up to just past ``cap`` (so an
    alias bomb, a billion values from a few lines, costs no more than ``cap`` steps)."""
    count, stack = 0, [value]
    while stack and count <= cap:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def check_top_level(data: Any, where: str) -> dict:
    if data is None:
        return {}  # an empty file: all defaults (model is then required by validate)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections (output_dir, model, "
                          f"data, loss, train, eval), got {type(data).__name__} {short_repr(data)}. See "
                          f"configs/demo/text.yaml for the shape.")
    return data


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to 60 characters for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- --set KEY=VALUE ------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], yaml value of c)."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected KEY=VALUE, e.g. --set train.lr=1e-5.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: '{part}' is not a section.")
            node = child
        node[path[-1]] = value
    return data
