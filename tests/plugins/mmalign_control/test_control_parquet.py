"""Segment pairs read through the datasets readers (mmalign_hf_datasets): a Parquet file of the
demo config's JSONL records trains exactly as the JSONL does."""

import json

import pytest
from conftest import REPO

import mmalign

CONFIG = REPO / "configs" / "demo" / "control.yaml"


@pytest.mark.slow  # two short trainings: about 10 s
def test_segments_from_parquet_train_as_from_jsonl(tmp_path):
    import datasets

    jsonl = REPO / "configs" / "demo" / "data" / "control" / "train.jsonl"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    common = ["train.max_steps=3", "train.progress=false", "data.eval=null", "train.callbacks=[]"]
    runs = [mmalign.train(CONFIG, overrides=[f"output_dir={tmp_path / name}", *common, *extra], log=lambda *a: None)
            for name, extra in (("jsonl", []), ("parquet", [f"data.train={tmp_path / 'train.parquet'}"]))]
    assert [r["loss"] for r in runs[0].history] == [r["loss"] for r in runs[1].history]
