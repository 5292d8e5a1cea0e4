"""The ``npz`` record format: segments as stacked numpy arrays (what rollout code writes with
``numpy.savez``), read without pickles.

Pairs: ``observations_0`` [N, T, obs_dim], ``actions_0`` [N, T, d] (or [N, T] discrete),
``observations_1``, ``actions_1`` and ``label`` [N] (the index of the preferred segment, 0.5 a
tie); optional ``rewards_0``, ``rewards_1`` [N, T]. Single segments (behaviour cloning):
``observations`` and ``actions`` (optional ``rewards``). Row i becomes the record ``file:row i``,
with the fields of the JSONL format (docs/control.md).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from mmalign.data import Record
from mmalign.errors import DataError

PAIR_KEYS, SINGLE_KEYS = ("observations_0", "actions_0", "observations_1", "actions_1", "label"), \
    ("observations", "actions")


def _segment(arrays: dict, suffix: str, row: int) -> dict:
    # lists, as JSONL gives them: a record's identity (duplicate detection) hashes its fields as JSON
    names = ("observations", "actions", "rewards")
    return {name: arrays[f"{name}{suffix}"][row].tolist() for name in names if f"{name}{suffix}" in arrays}


def read_npz(path: Path) -> list[Record]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file of numeric arrays ({e}).") from e
    if all(k in arrays for k in PAIR_KEYS):
        keys, paired = PAIR_KEYS, True
    elif all(k in arrays for k in SINGLE_KEYS):
        keys, paired = SINGLE_KEYS, False
    else:
        raise DataError(f"{path}: a control .npz holds {', '.join(PAIR_KEYS)} (pairs) or "
                        f"{', '.join(SINGLE_KEYS)} (single segments); it has {', '.join(sorted(arrays)) or 'nothing'}.")
    rows = {arrays[k].shape[0] if arrays[k].ndim else -1 for k in keys}
    if len(rows) != 1 or -1 in rows:
        raise DataError(f"{path}: the arrays {', '.join(keys)} must have the same number of rows (first axis).")
    records = []
    for row in range(rows.pop()):
        if paired:
            label = arrays["label"][row].item()
            fields = {"segment_0": _segment(arrays, "_0", row), "segment_1": _segment(arrays, "_1", row),
                      "label": int(label) if label in (0, 1) else label}
        else:
            fields = {"segment": _segment(arrays, "", row)}
        records.append(Record(fields, f"{path}:row {row}", path.parent))
    return records
