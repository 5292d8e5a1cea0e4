"""The reader of ``memory://`` addresses: datasets passed to :func:`mmalign.train` from Python
(:mod:`mmalign.in_memory`). A ``datasets.Dataset`` is read as Arrow rows like a saved one (images
as bytes or paths); a list of dicts is taken as is. Each record's ``where`` is ``NAME:row N`` and
paths inside records resolve against the current directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mmalign.data import Record
from mmalign.errors import DataError
from mmalign.in_memory import MEMORY_SCHEME, lookup
from mmalign_hf_datasets.rows import dataset_records, quiet_datasets


def read_memory(address: str) -> list[Record]:
    dataset = lookup(address)
    label = address[len(MEMORY_SCHEME):].rsplit("-", 1)[0]  # train_dataset, eval_dataset
    if hasattr(dataset, "with_format"):
        with quiet_datasets():
            return dataset_records(dataset, label, Path.cwd())
    records = []
    for i, row in enumerate(dataset):
        if not isinstance(row, Mapping):
            raise DataError(f"{label}:row {i + 1}: a {type(row).__name__}, not a dict.")
        records.append(Record(dict(row), f"{label}:row {i + 1}", Path.cwd()))
    return records
