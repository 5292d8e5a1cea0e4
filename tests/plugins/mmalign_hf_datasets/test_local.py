"""Parquet, CSV, Arrow files and save_to_disk folders, written here with ``datasets``: each trains
as its JSONL twin does, names its file and row in errors, and hands image columns to the image
plugins as bytes."""

from __future__ import annotations

import io
import json

import datasets
import pytest
import yaml
from PIL import Image

from conftest import base_config
from mmalign import train
from mmalign.cli import main
from mmalign_data.reading import read_records
from mmalign.errors import DataError
from mmalign_formats import read_jsonl


@pytest.fixture
def rows(pairs_file) -> list[dict]:
    return [json.loads(line) for line in pairs_file.read_text().splitlines()[:8]]


def write(kind: str, rows: list[dict], directory):
    """``rows`` as a data set of ``kind`` under ``directory``; returns the path to give data.train."""
    dataset = datasets.Dataset.from_list(rows)
    if kind == "save_to_disk":
        dataset.save_to_disk(str(directory / "saved"))
        return directory / "saved"
    if kind == "arrow":  # the shard save_to_disk writes
        dataset.save_to_disk(str(directory / "saved"))
        return next((directory / "saved").glob("*.arrow"))
    path = directory / f"pairs.{kind}"
    getattr(dataset, f"to_{kind}")(str(path), **({"index": False} if kind == "csv" else {}))
    return path


@pytest.mark.parametrize("kind", ["parquet", "csv", "save_to_disk", "arrow"])
def test_trains_as_the_jsonl_file_does(kind, rows, pairs_file, tmp_path, tokenizer_dir):
    path = write(kind, rows, tmp_path)
    records = read_records(str(path), "auto", "data.train")
    assert [r.fields for r in records] == [r.fields for r in read_jsonl(pairs_file)[:8]]
    assert [r.where for r in records[:2]] == [f"{path}:row 1", f"{path}:row 2"]
    result = train(base_config(tmp_path, tokenizer_dir, path, train={"max_steps": 2}), log=lambda *a: None)
    assert len(result.history) == 2 and result.history[0]["loss"] == pytest.approx(0.693147, abs=1e-4)


def _train_cli(tmp_path, tokenizer_dir, data, **data_keys) -> int:
    tmp_path.mkdir(exist_ok=True)
    cfg = base_config(tmp_path, tokenizer_dir, data, data=data_keys, train={"max_steps": 1})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return main(["train", str(tmp_path / "cfg.yaml")])


def test_a_bad_row_names_the_file_and_row(rows, tmp_path, tokenizer_dir, capsys):
    rows[2]["chosen"] = "  "
    path = write("parquet", rows, tmp_path)
    assert _train_cli(tmp_path, tokenizer_dir, path) == 2
    err = capsys.readouterr().err
    assert f'{path}:row 3: "chosen" is empty' in err and "Traceback" not in err


def test_columns_are_renamed_and_an_unknown_one_is_named(rows, tmp_path, tokenizer_dir, capsys):
    renamed = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in rows]
    path = write("parquet", renamed, tmp_path)
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    records = read_records(str(path), "auto", "data.train", columns)
    assert records[0].fields == rows[0]
    assert _train_cli(tmp_path, tokenizer_dir, path, columns=columns) == 0
    assert _train_cli(tmp_path / "b", tokenizer_dir, path, columns={**columns, "prompt": "questoin"}) == 2
    err = capsys.readouterr().err
    assert f"{path}:row 1: no column 'questoin' (named in data.columns)" in err
    assert "columns are: question, good, bad" in err and "Traceback" not in err


def test_a_folder_of_splits_names_each_split(rows, tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:2])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=f"name the folder of one of them instead: {tmp_path}/dd/train"):
        read_records(str(tmp_path / "dd"), "auto", "data.train")
    assert len(read_records(str(tmp_path / "dd" / "test"), "auto", "data.train")) == 2


def test_a_directory_that_is_no_dataset_is_refused(tmp_path):
    with pytest.raises(DataError, match="is a directory that no format recognizes"):
        read_records(str(tmp_path), "auto", "data.train")
    with pytest.raises(DataError, match="data.format hf reads a folder written by datasets' save_to_disk"):
        read_records(str(tmp_path), "hf", "data.train")


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_image_columns_reach_the_diffusion_plugin_as_bytes(tmp_path):
    from mmalign_diffusion.records import parse_record

    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    dataset = datasets.Dataset.from_dict({"caption": ["a red square"], "jpg_0": [red], "jpg_1": [blue],
                                          "label_0": [0]})
    dataset = dataset.cast_column("jpg_0", datasets.Image()).cast_column("jpg_1", datasets.Image())
    dataset.to_parquet(str(tmp_path / "pap.parquet"))
    (record,) = read_records(str(tmp_path / "pap.parquet"), "auto", "data.train")
    example = parse_record(record, paired=True)
    assert (example.chosen.data, example.rejected.data) == (blue, red)  # label_0 = 0 prefers jpg_1
    assert example.chosen.size == (16, 24)
    record.fields["jpg_0"] = b"\x89PNG not an image"
    with pytest.raises(DataError, match=r'pap.parquet:row 1 "jpg_0": not a readable image \(the image bytes'):
        parse_record(record, paired=True)


def test_image_columns_reach_the_vlm_plugin_as_bytes(tmp_path):
    from mmalign_vlm.examples import load_image, resolve_image

    dataset = datasets.Dataset.from_dict({"prompt": ["describe"], "image": [[_png((0, 255, 0)), _png((9, 9, 9))]]})
    dataset.cast_column("image", datasets.Sequence(datasets.Image())).save_to_disk(str(tmp_path / "saved"))
    (record,) = read_records(str(tmp_path / "saved"), "auto", "data.train")
    images = [resolve_image(v, record) for v in record.fields["image"]]
    assert images == [_png((0, 255, 0)), _png((9, 9, 9))]
    assert load_image(images[0], record.where).getpixel((0, 0)) == (0, 255, 0)


def test_a_file_datasets_cannot_read_is_exit_2_naming_it(tmp_path, tokenizer_dir, capsys):
    bad = tmp_path / "pairs.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    assert _train_cli(tmp_path, tokenizer_dir, bad) == 2
    err = capsys.readouterr().err
    assert f"Cannot read data file '{bad}' (from 'data.train')" in err and "valid .parquet file" in err
    assert "Traceback" not in err
