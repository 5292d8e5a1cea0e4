"""``data.train: hf://org/name?...``: the id and its options reach ``datasets.load_dataset`` (patched
here: tests never touch the hub), and offline with no cached copy the user gets exit code 2."""

from __future__ import annotations

import json

import datasets
import pytest
import yaml

from conftest import base_config
from mmalign.cli import main
from mmalign.config import load_config
from mmalign_data.reading import read_records
from mmalign.errors import ConfigError, DataError
from mmalign_hf_datasets import parse_hub_id
from mmalign_hf_datasets.hub import HubDataset


@pytest.mark.parametrize("text,expected", [
    ("hf://org/name", HubDataset("org/name")),
    ("hf://imdb?split=test", HubDataset("imdb", split="test")),
    ("hf://HuggingFaceH4/ultrafeedback_binarized?split=train_prefs[:100]&subset=default&revision=3949bf5",
     HubDataset("HuggingFaceH4/ultrafeedback_binarized", "default", "train_prefs[:100]", "3949bf5")),
])
def test_the_id_and_its_options_are_parsed(text, expected):
    assert parse_hub_id(text) == expected


@pytest.mark.parametrize("text,message", [
    ("hf://org/na me", "'org/na me' is not a hub dataset id"),
    ("hf://org/name?splt=test", "unknown option 'splt'. Options: subset, split, revision"),
    ("hf://org/name?split=a&split=b", "option 'split' is given twice"),
    ("hf://org/name?split=", "option 'split' is empty"),
])
def test_a_malformed_id_is_a_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_hub_id(text)


def test_load_dataset_gets_the_id_subset_split_and_revision(monkeypatch, pairs_file):
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()[:3]]
    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    text = "hf://org/prefs?subset=en&split=test&revision=v2"
    records = read_records(text, "auto", "data.eval")
    assert calls == [("org/prefs", "en", {"split": "test", "revision": "v2"})]
    assert [r.fields for r in records] == rows and records[2].where == f"{text}:row 3"
    read_records("hf://org/prefs", "hf", "data.train")
    assert calls[1] == ("org/prefs", None, {"split": "train", "revision": None})


def test_a_config_file_keeps_the_id_as_written_and_check_downloads_nothing(tmp_path, tokenizer_dir, capsys,
                                                                           monkeypatch):
    cfg = base_config(tmp_path, tokenizer_dir, "hf://org/prefs?split=train")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert load_config(tmp_path / "cfg.yaml").data.train == "hf://org/prefs?split=train"
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("check must not load"))
    assert main(["check", str(tmp_path / "cfg.yaml")]) == 0
    assert "data.train: hf://org/prefs?split=train is a hub dataset, not read" in capsys.readouterr().out


def test_check_reads_no_hub_prompts_of_an_online_config(tmp_path, tokenizer_dir, capsys, monkeypatch):
    cfg = base_config(tmp_path, tokenizer_dir, "hf://org/prompts?split=train")
    cfg["algorithm"] = {"name": "grpo", "options": {"scorers": {"sentiment": 1.0}}}
    cfg["loss"] = {"beta": 0.04}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("check must not load"))
    assert main(["check", str(tmp_path / "cfg.yaml")]) == 0
    assert "data.train: hf://org/prompts?split=train is a hub dataset, not read" in capsys.readouterr().out


def test_offline_without_a_cached_copy_is_exit_2_with_the_fix(tmp_path, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    cfg = base_config(tmp_path, tokenizer_dir, "hf://mmalign-tests/no-such-dataset?split=test")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 2
    err = capsys.readouterr().err
    assert "hf://mmalign-tests/no-such-dataset?split=test: cannot load the hub dataset" in err
    assert "HF_HUB_OFFLINE is set, so only a dataset already in the local datasets cache" in err
    assert "Traceback" not in err


def test_another_url_is_refused_naming_the_hub_form(tmp_path):
    with pytest.raises(DataError, match="is a URL, and nothing is downloaded from it: .* hf://org/name"):
        read_records("https://example.org/pairs.jsonl", "auto", "data.train")


def streaming_hub(monkeypatch, rows, num_examples):
    """load_dataset patched to answer a streamed split as the hub does: an IterableDataset whose
    info carries the split's size from the dataset card (None: a card without it)."""
    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        iterable = datasets.Dataset.from_list(rows).to_iterable_dataset()
        if num_examples is not None:
            iterable.info.splits = datasets.SplitDict()
            iterable.info.splits.add(datasets.SplitInfo(kwargs["split"], num_examples=num_examples))
        return iterable

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_a_streamed_hub_split_trains_as_the_same_rows_streamed_from_a_file(tmp_path, tokenizer_dir, pairs_file,
                                                                            monkeypatch):
    import mmalign

    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    train = {"max_steps": 6, "lr_scheduler": "constant", "save_every": 3}
    from_file = mmalign.train(base_config(tmp_path / "file", tokenizer_dir, pairs_file, train=train,
                                          data={"streaming": True}), log=lambda *a: None)
    calls = streaming_hub(monkeypatch, rows, len(rows))
    cfg = base_config(tmp_path / "hub", tokenizer_dir, "hf://org/prefs?split=train_prefs&revision=v1",
                      train=dict(train, max_steps=3), data={"streaming": True})
    mmalign.train(cfg, log=lambda *a: None)
    cfg["train"]["max_steps"] = 6
    resumed = mmalign.train(cfg, resume=True, log=lambda *a: None)
    assert calls[0] == ("org/prefs", None, {"split": "train_prefs", "revision": "v1", "streaming": True})
    untimed = [{k: v for k, v in row.items() if not k.startswith("time/")} for row in resumed.history]
    assert untimed == [{k: v for k, v in row.items() if not k.startswith("time/")}
                       for row in from_file.history]


@pytest.mark.parametrize("text,size,message", [("hf://org/prefs", None, "does not say how many records"),
                                               ("hf://org/prefs?split=train[:10]", 10, "cannot be streamed")])
def test_a_hub_split_that_cannot_stream_is_refused_with_the_fix(tmp_path, tokenizer_dir, pairs_file, monkeypatch,
                                                                text, size, message):
    import mmalign

    streaming_hub(monkeypatch, [json.loads(pairs_file.read_text().splitlines()[0])], size)
    with pytest.raises(ConfigError, match=message) as caught:
        mmalign.train(base_config(tmp_path, tokenizer_dir, text, data={"streaming": True}), log=lambda *a: None)
    assert caught.value.exit_code == 2
