"""Local files and folders through ``datasets``: ``parquet``, ``csv``, ``arrow`` (by suffix) and
``hf`` (a folder written by ``save_to_disk``, or a hub id: :mod:`.hub`). Paths inside the rows
(images) resolve against the directory that holds the file or folder, as for JSONL."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mmalign.data import Record
from mmalign.errors import DataError
from mmalign_hf_datasets.hub import HUB_SCHEME, read_hub, stream_hub
from mmalign_hf_datasets.rows import BATCH_ROWS, arrow_records, dataset_records, quiet_datasets

SAVED_DATASET = ("dataset_info.json", "state.json")  # what Dataset.save_to_disk writes beside the data
SAVED_SPLITS = "dataset_dict.json"  # what DatasetDict.save_to_disk writes, one folder per split


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return all((path / name).is_file() for name in SAVED_DATASET) or (path / SAVED_SPLITS).is_file()


def _from_builder(method: str, path: Path) -> list[Record]:
    """``Dataset.from_parquet`` / ``from_csv``, converted in a throwaway cache: nothing is left in
    the user's datasets cache, and a changed file is never answered from a stale copy."""
    import datasets

    with quiet_datasets(), tempfile.TemporaryDirectory(prefix="mmalign-datasets-") as cache:
        dataset = getattr(datasets.Dataset, method)(str(path), cache_dir=cache)
        return dataset_records(dataset, str(path), path.parent)


def read_parquet(path: Path) -> list[Record]:
    return _from_builder("from_parquet", Path(path))


def read_csv(path: Path) -> list[Record]:
    """A CSV file with a header row; ``row N`` is the N-th row after the header. Every value is
    read as ``datasets`` reads CSV (through pandas): strings, numbers, and empty cells as null."""
    return _from_builder("from_csv", Path(path))


def read_arrow(path: Path) -> list[Record]:
    """An Arrow file as ``datasets`` writes it (a shard of a saved dataset), read in place."""
    import datasets

    path = Path(path)
    with quiet_datasets():
        return dataset_records(datasets.Dataset.from_file(str(path)), str(path), path.parent)


def _saved_split(path: Path):
    """The Dataset saved at ``path``; of a folder of splits, its only split (else an error that
    names them: point data.train at the split's own folder)."""
    import datasets

    saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.DatasetDict):
        if len(saved) != 1:
            splits = ", ".join(f"{path / name}" for name in saved)
            raise DataError(f"{path}: a dataset saved with {len(saved)} splits ({', '.join(saved)}); "
                            f"name the folder of one of them instead: {splits}.")
        saved = next(iter(saved.values()))
    return saved


def read_hf(path: str | Path) -> list[Record]:
    """``data.format: hf``: a hub dataset id (``hf://org/name``, see :mod:`.hub`) or a folder written
    by ``save_to_disk`` (found by ``format: auto`` too)."""
    if isinstance(path, str) and path.startswith(HUB_SCHEME):
        return read_hub(path)
    path = Path(path)
    if not path.is_dir() or not is_saved_dataset(path):
        raise DataError(f"{path}: data.format hf reads a folder written by datasets' save_to_disk "
                        f"(with {' and '.join(SAVED_DATASET)}) or a hub id {HUB_SCHEME}org/name; this "
                        f"is neither. Point the data path at such a folder, or set data.format to the "
                        f"file's format.")
    with quiet_datasets():
        return dataset_records(_saved_split(path), str(path), path.parent)


def stream_parquet(path: Path):
    """``data.streaming``: the row groups of a Parquet file, read BATCH_ROWS rows at a time."""
    import pyarrow.parquet as pq

    from mmalign.data import RecordStream

    path = Path(path)

    def rows():
        with pq.ParquetFile(path) as parquet:
            yield from arrow_records(parquet.iter_batches(batch_size=BATCH_ROWS), str(path), path.parent)

    with pq.ParquetFile(path) as parquet:
        return RecordStream(rows, parquet.metadata.num_rows)


def stream_hf(path: str | Path):
    """``data.streaming`` of a ``save_to_disk`` folder: its memory-mapped Arrow rows, BATCH_ROWS at
    a time; of a hub id: :func:`mmalign_hf_datasets.hub.stream_hub`."""
    from mmalign.data import RecordStream

    if isinstance(path, str) and path.startswith(HUB_SCHEME):
        return stream_hub(path)
    path = Path(path)
    with quiet_datasets():
        dataset = _saved_split(path)
    return RecordStream(lambda: arrow_records(dataset.with_format("arrow").iter(batch_size=BATCH_ROWS),
                                              str(path), path.parent), len(dataset))
