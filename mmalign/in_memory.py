"""Datasets handed to :func:`mmalign.train` as Python objects (``train_dataset=``,
``eval_dataset=``): a ``datasets.Dataset`` or a list of dicts, as TRL's trainers take them.

The object is kept in this process under a ``memory://`` address that ends with a fingerprint of
its content, and ``data.train`` / ``data.eval`` are set to that address. The data layer then reads
it like any other path, through the reader registered for the scheme (mmalign_hf_datasets), so
validation, the data report and the resume check (the address, with its fingerprint, identifies
the data) work unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from mmalign.errors import ConfigError

MEMORY_SCHEME = "memory://"
_OBJECTS: dict[str, Any] = {}


def keep(name: str, dataset: Any) -> str:
    """Keep ``dataset`` for this process; its ``memory://NAME-FINGERPRINT`` address."""
    address = f"{MEMORY_SCHEME}{name}-{fingerprint(dataset, name)[:16]}"
    _OBJECTS[address] = dataset
    return address


def lookup(address: str) -> Any:
    if address not in _OBJECTS:
        raise ConfigError(f"'{address}' names a dataset passed to mmalign.train() from Python, which exists "
                          f"only in that process. Pass the dataset again (train_dataset=...), or write it "
                          f"to a file (e.g. dataset.to_json('train.jsonl')) and set data.train to it.")
    return _OBJECTS[address]


def fingerprint(dataset: Any, name: str) -> str:
    """What identifies the content: a ``datasets.Dataset``'s own fingerprint (its source files and
    the transforms applied), else the sha256 of the rows as canonical JSON (bytes by their sha256)."""
    if hasattr(dataset, "_fingerprint") and hasattr(dataset, "with_format"):
        return hashlib.sha256(str(dataset._fingerprint).encode()).hexdigest()
    if isinstance(dataset, (str, bytes, Mapping)) or not hasattr(dataset, "__iter__"):
        raise ConfigError(f"{name}: give a datasets.Dataset or a list of dicts (one per record), not a "
                          f"{type(dataset).__name__}. For a DatasetDict, pick a split: dataset['train'].")
    digest = hashlib.sha256()
    for i, row in enumerate(dataset):
        if not isinstance(row, Mapping):
            raise ConfigError(f"{name}[{i}] is a {type(row).__name__}: every record must be a dict.")
        digest.update(json.dumps(row, sort_keys=True, default=_canonical).encode() + b"\n")
    return digest.hexdigest()


def _canonical(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "bytes:" + hashlib.sha256(value).hexdigest()
    if hasattr(value, "tobytes"):  # a PIL image or an array
        return f"{type(value).__name__}:" + hashlib.sha256(value.tobytes()).hexdigest()
    return repr(value)
