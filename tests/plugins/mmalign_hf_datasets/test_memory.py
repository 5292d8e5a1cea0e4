"""Datasets passed to mmalign.train from Python (mmalign/in_memory.py, mmalign_hf_datasets/memory.py):
a list of dicts or a datasets.Dataset trains exactly as the same records in a file do; the address
carries a fingerprint of the content, so a resume accepts the same data and refuses other data;
objects that are not datasets are refused with exit 2."""

import json

import pytest
from conftest import DEMO_DATA, base_config

import mmalign
from mmalign.errors import ConfigError

TOKENIZER, PAIRS = DEMO_DATA / "tokenizer", DEMO_DATA / "train.jsonl"


def rows(n=64):
    return [json.loads(line) for line in PAIRS.read_text().splitlines()[:n]]


def losses(result):
    return [row["loss"] for row in result.history]


def test_a_list_of_dicts_and_a_dataset_train_as_the_same_file_does(tmp_path):
    import datasets

    file = tmp_path / "pairs.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    from_file = mmalign.train(base_config(tmp_path / "file", TOKENIZER, file), log=lambda *a: None)
    cfg = base_config(tmp_path / "list", TOKENIZER, file)
    del cfg["data"]["train"]
    lines = []
    from_list = mmalign.train(cfg, train_dataset=rows(), eval_dataset=rows(8), log=lines.append)
    assert losses(from_list) == losses(from_file)
    assert any("train_dataset" in str(line) and "64 read" in str(line) for line in lines)
    cfg["output_dir"] = str(tmp_path / "dataset" / "run")
    from_dataset = mmalign.train(cfg, train_dataset=datasets.Dataset.from_list(rows()), log=lambda *a: None)
    assert losses(from_dataset) == losses(from_file)


def test_resume_accepts_the_same_data_and_refuses_other_data(tmp_path):
    cfg = base_config(tmp_path, TOKENIZER, PAIRS, train={"max_steps": 2, "save_every": 1})
    del cfg["data"]["train"]
    mmalign.train(cfg, train_dataset=rows(), log=lambda *a: None)
    cfg["train"]["max_steps"] = 3
    assert mmalign.train(cfg, train_dataset=rows(), resume=True, log=lambda *a: None).history[-1]["step"] == 3
    other = rows(65)[1:]
    with pytest.raises(ConfigError, match="data.train"):
        mmalign.train(cfg, train_dataset=other, resume=True, log=lambda *a: None)


@pytest.mark.parametrize("dataset,message", [({"prompt": "a"}, "not a dict"), ("pairs.jsonl", "not a str"),
                                             ([{"prompt": "a"}, "b"], r"train_dataset\[1\] is a str")])
def test_what_is_not_a_dataset_is_refused(tmp_path, dataset, message):
    cfg = base_config(tmp_path, TOKENIZER, PAIRS)
    del cfg["data"]["train"]
    with pytest.raises(ConfigError, match=message) as caught:
        mmalign.train(cfg, train_dataset=dataset, log=lambda *a: None)
    assert caught.value.exit_code == 2 and not (tmp_path / "run").exists()
