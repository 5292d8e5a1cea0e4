"""Relative paths in a config file resolve against the file's directory: one rule, no fallback to
the current directory (docs/configuration.md, "Relative paths")."""

import pytest

from mmalign.config import dump_config, load_config
from mmalign.errors import DataError


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """configs/c.yaml with its own data/train.jsonl, and a working directory holding a decoy
    data/train.jsonl at the same relative path."""
    configs, work = tmp_path / "configs", tmp_path / "work"
    for root in (configs, work):
        (root / "data").mkdir(parents=True)
        (root / "data" / "train.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (configs / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(work)
    return configs, work


def _write(configs, text):
    path = configs / "c.yaml"
    path.write_text(text)
    return path


def test_a_decoy_in_the_current_directory_is_not_used(layout):
    configs, work = layout
    path = _write(configs, "model: {tiny: {}}\ndata: {train: data/train.jsonl, eval: data/eval.jsonl}\n"
                           "reference: {cache_dir: cache}\noutput_dir: runs/x\n")
    cfg = load_config(path)
    assert cfg.data.train == str(configs / "data" / "train.jsonl")
    # no fallback: missing next to the config means missing, even though cwd has data/eval.jsonl
    (work / "data" / "eval.jsonl").write_text("")
    assert cfg.data.eval == str(configs / "data" / "eval.jsonl")
    assert cfg.reference.cache_dir == str(configs / "cache")
    assert cfg.output_dir == "runs/x"  # outputs: relative to the current directory, as in TRL


def test_a_missing_data_file_names_the_config_relative_path(layout):
    from mmalign_data.reading import read_records

    configs, work = layout
    (configs / "data" / "train.jsonl").unlink()
    cfg = load_config(_write(configs, "model: {tiny: {}}\ndata: {train: data/train.jsonl}\n"))
    with pytest.raises(DataError, match=str(configs / "data" / "train.jsonl")):
        read_records(cfg.data.train, cfg.data.format, "data.train")


@pytest.mark.parametrize("value, expected", [
    ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),  # hub id: not a folder here
    ("gpt2", "gpt2"),
    ("models/tiny", "{configs}/models/tiny"),  # exists next to the config: a local directory
    ("./models/other", "{configs}/models/other"),  # explicit relative path: never a hub id
    ("../elsewhere/model", "{configs}/../elsewhere/model"),
])
def test_model_paths_resolve_unless_they_read_as_hub_ids(layout, value, expected):
    configs, _ = layout
    cfg = load_config(_write(configs, f"model: {{name_or_path: '{value}', tokenizer: '{value}'}}\n"
                                      f"reference: {{name_or_path: '{value}'}}\n"))
    want = expected.format(configs=configs)
    assert cfg.model.name_or_path == want and cfg.model.tokenizer == want
    assert cfg.reference.name_or_path == want


def test_command_line_overrides_and_dict_configs_are_relative_to_the_current_directory(layout):
    configs, work = layout
    path = _write(configs, "model: {tiny: {}}\ndata: {train: data/train.jsonl}\n")
    assert load_config(path, ["data.train=pairs.jsonl"]).data.train == "pairs.jsonl"
    assert load_config(data={"model": {"tiny": {}}, "data": {"train": "data/train.jsonl"}}).data.train == \
        "data/train.jsonl"


def test_the_written_config_yaml_loads_the_same_paths_from_anywhere(layout, tmp_path):
    configs, _ = layout
    cfg = load_config(_write(configs, "model: {tiny: {}}\ndata: {train: data/train.jsonl}\n"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "run" / "config.yaml").data.train == cfg.data.train
