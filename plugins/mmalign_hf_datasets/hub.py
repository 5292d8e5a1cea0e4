"""Hub datasets: ``data.train: hf://org/name?subset=S&split=SPLIT&revision=R`` (every option
optional; ``split`` defaults to ``train`` and takes the ``datasets`` slice syntax, ``train[:1000]``),
loaded with ``datasets.load_dataset`` into the user's ``datasets`` cache. The options live in the
id rather than in ``data.*`` keys so that ``data.train`` and ``data.eval`` can name two splits."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qsl

from mmalign.data import Record
from mmalign.errors import ConfigError, DataError
from mmalign_hf_datasets.rows import BATCH_ROWS, arrow_records, dataset_records, quiet_datasets

HUB_SCHEME = "hf://"
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # name or org/name
OPTIONS = ("subset", "split", "revision")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class HubDataset:
    repo_id: str
    subset: Optional[str] = None  # the dataset's configuration (load_dataset's ``name``)
    split: str = "train"
    revision: Optional[str] = None  # a branch, tag or commit: pin it to train on the same rows


def parse_hub_id(text: str) -> HubDataset:
    """``hf://org/name?split=test&subset=x`` -> HubDataset; a ConfigError naming what is wrong."""
    form = f"{HUB_SCHEME}org/name?subset=...&split=...&revision=..."
    rest = text.removeprefix(HUB_SCHEME)
    repo_id, _, query = rest.partition("?")
    if not REPO_ID.fullmatch(repo_id):
        raise ConfigError(f"'{text}': '{repo_id}' is not a hub dataset id (name or org/name). Write "
                          f"{form}, every option optional.")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ConfigError(f"'{text}': cannot read the options '{query}'. Write {form}.") from None
    options = {}
    for key, value in pairs:
        if key not in OPTIONS:
            raise ConfigError(f"'{text}': unknown option '{key}'. Options: {', '.join(OPTIONS)} ({form}).")
        if key in options or not value:
            raise ConfigError(f"'{text}': option '{key}' is {'given twice' if key in options else 'empty'}. "
                              f"Give it once, with a value ({form}).")
        options[key] = value
    return HubDataset(repo_id, **options)


def _load_failure(text: str, hub: HubDataset, error: Exception) -> DataError:
    offline = [v for v in OFFLINE_VARIABLES
               if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
    if offline:
        hint = (f"{' and '.join(offline)} is set, so only a dataset already in the local datasets cache "
                f"can be read: load it once with network access, or save it to local files (Parquet, "
                f"save_to_disk) and point the config at them.")
    else:
        hint = ("Check the id, the subset and the split on the dataset's hub page, the network, and "
                "for a gated or private dataset your login (hf auth login).")
    return DataError(f"{text}: cannot load the hub dataset '{hub.repo_id}' (subset "
                     f"{hub.subset or '(default)'}, split {hub.split}, revision {hub.revision or '(latest)'}): "
                     f"{type(error).__name__}: "
                     f"{str(error)[:300]}. {hint}")


def read_hub(text: str) -> list[Record]:
    """The rows of the hub dataset ``text`` names; ``where`` is ``hf://...:row N``. Paths inside
    rows resolve against the current directory (hub rows normally hold image bytes)."""
    return dataset_records(_load_dataset(text, parse_hub_id(text)), text, Path.cwd())


def _load_dataset(text: str, hub: HubDataset, **options):
    """``datasets.load_dataset`` of the id, subset, split and revision (``options``: streaming);
    any failure is one DataError with the fix (exit code 2)."""
    import datasets

    try:
        with quiet_datasets():
            return datasets.load_dataset(hub.repo_id, hub.subset, split=hub.split, revision=hub.revision, **options)
    except Exception as e:  # network, unknown id or split, offline mode
        raise _load_failure(text, hub, e) from None


def stream_hub(text: str):
    """``data.streaming`` of a hub dataset: ``load_dataset(..., streaming=True)``, its rows read
    BATCH_ROWS at a time as training reaches them, nothing downloaded ahead. The number of records
    in the split (a pass's length: the data position is counted in passes) comes from the
    dataset's card metadata; a split slice cannot be streamed."""
    from mmalign.data import RecordStream

    hub = parse_hub_id(text)
    if "[" in hub.split:
        raise ConfigError(f"'{text}': a split slice ({hub.split}) cannot be streamed; name a whole split, or "
                          f"set data.streaming: false.")
    dataset = _load_dataset(text, hub, streaming=True)
    split = (dataset.info.splits or {}).get(hub.split)
    if split is None or not split.num_examples:
        raise ConfigError(f"'{text}': the dataset's card does not say how many records the split "
                          f"'{hub.split}' holds, which streaming needs (a pass's length). Save the split "
                          f"as Parquet or with save_to_disk and stream that, or set data.streaming: false.")
    return RecordStream(lambda: arrow_records(dataset.with_format("arrow").iter(batch_size=BATCH_ROWS), text,
                                              Path.cwd()), split.num_examples)
