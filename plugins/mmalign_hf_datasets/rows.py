"""A ``datasets.Dataset`` -> Records: one per row, ``where`` = ``LABEL:row N`` (from 1). Rows are
read as Arrow data, so image columns are never decoded here: a ``datasets.Image`` value (stored
as ``{"bytes", "path"}``) becomes its bytes, or its path when it has no bytes, which is how the
VLM and diffusion plugins take an image (they decode it in full when they prepare the record)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from mmalign.data import Record

BATCH_ROWS = 1000  # rows converted to Python at a time


def image_value(value: Any) -> Any:
    """A stored image (``{"bytes", "path"}``) as bytes or a path; lists and other values walked
    through unchanged."""
    if isinstance(value, dict) and set(value) == {"bytes", "path"}:
        return value["bytes"] if value["bytes"] is not None else value["path"]
    if isinstance(value, list):
        return [image_value(v) for v in value]
    return value


def dataset_records(dataset, label: str, root: Path) -> list[Record]:
    """Every row of ``dataset`` as a Record (``root``: where paths inside the rows resolve)."""
    return list(arrow_records(dataset.with_format("arrow").iter(batch_size=BATCH_ROWS), label, root))


def arrow_records(batches: Iterator, label: str, root: Path) -> Iterator[Record]:
    """The rows of Arrow record batches (or tables) as Records, ``LABEL:row N`` counted from 1;
    one batch in Python at a time."""
    number = 0
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            yield Record({k: image_value(v) for k, v in row.items()}, f"{label}:row {number}", root)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars from ``datasets`` while a reader runs (mmalign prints its own data report);
    restored afterwards."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
