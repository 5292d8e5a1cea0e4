"""docs/from-trl-and-diffusers.md is code: every mmalign key it names in backticks exists, every TRL
field and trainer argument in its tables exists in the installed TRL, and its YAML examples load and
pass the run checks (the GRPO one with the page's own scorer plugin registered)."""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import re
import types
from pathlib import Path

import pytest
import yaml

import mmalign
from mmalign.config import Config, load_config
from mmalign.plugins import registry
from mmalign.run_validation import validate_for_run

PAGE = Path(__file__).resolve().parents[2] / "docs" / "from-trl-and-diffusers.md"
SECTIONS = ("model", "reference", "data", "loss", "train", "eval", "algorithm")
KEY = re.compile(r"`((?:%s)\.[a-z_][a-z0-9_.]*[a-z0-9_])" % "|".join(SECTIONS))
# TRL 1.16's DPOConfig dropped these; the page says so and maps them to mmalign keys
REMOVED_DPO_FIELDS = ("rpo_alpha", "max_prompt_length", "max_completion_length")


def _text() -> str:
    return PAGE.read_text()


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _model_options() -> set[str]:
    from mmalign_diffusion.options import OPTIONS as diffusion_options
    from mmalign_text.reward import KNOWN_OPTIONS as text_options
    from mmalign_vlm.reward import KNOWN_OPTIONS as vlm_options

    return set(text_options) | set(vlm_options) | set(diffusion_options)


def _nested_keys() -> dict[str, set[str]]:
    """The keys one level below a mapping-valued key, as the installed plugins define them."""
    from mmalign_text.data_options import TextDataOptions

    reg = registry()
    loss_options = set()
    for name in reg.names("losses"):
        options = reg.get("losses", name).options
        loss_options |= set(options() if callable(options) else options)
    algorithm_options = set()
    for name in reg.names("algorithms"):
        algorithm_options |= _field_names(reg.get("algorithms", name).options)
    config = Config()
    nested = {section: _field_names(type(getattr(config, section))) for section in SECTIONS}
    nested["data"] |= _field_names(TextDataOptions)
    nested.update({"model.options": _model_options(), "model.lora": _field_names(mmalign.config.LoraConfig),
                   "loss.options": loss_options, "algorithm.options": algorithm_options,
                   "eval.options": set(reg.names("evaluators"))})
    return nested


def _unknown_key(key: str, nested: dict[str, set[str]]) -> str | None:
    """None when ``key`` exists; else the part that does not. A key under a mapping whose keys are
    free-form beyond the checked level (a loss term's name under loss.options.terms) stops there."""
    parts = key.split(".")
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        if parent not in nested:
            return None if depth > 1 and parent in {"loss.options.terms", "algorithm.options.scorers"} \
                else f"{parent} has no documented sub-keys"
        if parts[depth] not in nested[parent]:
            return f"{parts[depth]} is not a key of {parent}"
    return None


def test_every_mmalign_key_on_the_page_exists():
    nested = _nested_keys()
    keys = sorted(set(KEY.findall(_text())))
    assert len(keys) > 40, f"the key pattern found only {keys}"
    problems = {key: why for key in keys if (why := _unknown_key(key, nested))}
    assert not problems, f"docs/from-trl-and-diffusers.md names keys that do not exist: {problems}"


def _tables() -> list[tuple[str, str, list[str]]]:
    """(the enclosing '## ' heading, the table's first header cell, each row's first cell)."""
    tables, heading, lines = [], "", _text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            heading = line
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(row.split("|")[1].strip())
            tables.append((heading, line.split("|")[1].strip(), rows))
    return tables


def _trl_names(heading: str, kind: str, trl) -> dict[str, set[str]]:
    """The TRL classes a table's rows are checked against: config fields or trainer arguments."""
    family = {"DPO": ("DPOConfig", "DPOTrainer")} if "DPOConfig" in heading else \
        {"GRPO": ("GRPOConfig", "GRPOTrainer"), "RLOO": ("RLOOConfig", "RLOOTrainer")}
    names = {}
    for tag, (config, trainer) in family.items():
        if kind == "TRL field":
            names[tag] = {f.name for f in dataclasses.fields(getattr(trl, config))}
        else:
            names[tag] = set(inspect.signature(getattr(trl, trainer).__init__).parameters) - {"self"}
    return names


def test_every_trl_name_in_the_tables_exists_in_trl_1_16():
    trl = pytest.importorskip("trl")
    checked = 0
    for heading, kind, rows in _tables():
        if kind not in ("TRL field", "TRL argument"):
            continue
        names = _trl_names(heading, kind, trl)
        for cell in rows:
            tags = [tag for tag in names if f"({tag})" in cell] or list(names)
            for name in re.findall(r"`([^`]+)`", cell):
                found = all(any(fnmatch.fnmatchcase(n, name) for n in names[tag]) for tag in tags)
                assert found, f"{heading}: TRL {'/'.join(tags)} has no {kind.split()[1]} `{name}` (TRL {trl.__version__})"
                checked += 1
    assert checked > 80, f"only {checked} TRL names were checked: did the tables' headers change?"


def test_the_fields_the_page_calls_removed_are_absent_from_dpo_config():
    trl = pytest.importorskip("trl")
    fields = {f.name for f in dataclasses.fields(trl.DPOConfig)}
    text = _text()
    for name in REMOVED_DPO_FIELDS:
        assert f"`{name}`" in text and name not in fields, name


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _text(), flags=re.S)


def _scorer_plugin() -> types.ModuleType:
    """The page's register_scorers snippet, as an in-process plugin module."""
    (source,) = [block for block in _blocks("python") if "mmalign_register_scorers" in block]
    module = types.ModuleType("migration_scorers")
    exec(compile(source, "docs/from-trl-and-diffusers.md scorer plugin", "exec"), module.__dict__)
    return module


def test_the_yaml_examples_load_and_pass_the_run_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # output_dir and the data paths are relative: nothing is read or written
    blocks = _blocks("yaml")
    assert len(blocks) == 2, "the DPO and the GRPO example"
    with mmalign.register(_scorer_plugin()):
        for block in blocks:
            cfg = load_config(data=yaml.safe_load(block))
            validate_for_run(cfg, "docs/from-trl-and-diffusers.md", command="check")


def test_the_scorers_of_the_grpo_example_compute_what_the_trl_functions_do():
    plugin = _scorer_plugin()
    entries = {}
    plugin.mmalign_register_scorers(lambda name, factory: entries.update({name: factory()}))
    assert entries["exact_answer"](["1+1="] * 2, [" 2", "3"], ["2", "2"]) == [1.0, 0.0]
    assert entries["brevity"](["p"], ["abcd"]) == [-0.04]
