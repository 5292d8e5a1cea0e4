"""Reading records: a data path becomes :class:`mmalign.data.Record` objects through the reader
registered for its format (``mmalign_register_datasets``): picked by name (``data.format``), by file
suffix, by a directory's layout, or by a URL's scheme (``hf://``). ``data.columns`` renames columns
as records are read."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mmalign.data import Record, UnreadableRecords
from mmalign.errors import ConfigError, DataError, MmalignError

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # hf://org/name, https://...: not a file path


def is_url(path: str | None) -> bool:
    return path is not None and URL.match(str(path)) is not None


def data_sha256(path: str, file_sha256) -> str:
    """What identifies the content of a data path (for resume): a file's sha256; a dataset folder's
    files, names and bytes; a dataset id (``hf://org/name?revision=...``) as written, since nothing
    is downloaded to hash."""
    if is_url(path):
        return hashlib.sha256(path.encode()).hexdigest()
    p = Path(path)
    if not p.is_dir():
        return file_sha256(p)
    files = sorted(f for f in p.rglob("*") if f.is_file())
    listing = "".join(f"{f.relative_to(p)}:{file_sha256(f)}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def _scheme_reader(reg, path: str, key: str):
    """The reader registered for the scheme ``path`` starts with (``schemes=("hf://",)``)."""
    for entry in reversed(list(reg.entries["datasets"].values())):
        if any(path.startswith(s) for s in entry.meta.get("schemes", ())):
            return entry
    known = [f"{s}org/name" for e in reg.entries["datasets"].values() for s in e.meta.get("schemes", ())]
    ids = f", or a dataset id as {' or '.join(known)}" if known else ""
    raise DataError(f"'{path}' (from '{key}') is a URL, and nothing is downloaded from it: give a "
                    f"local data file{ids}.")


def read_records(path: str | None, fmt: str, key: str, columns: dict | None = None) -> list[Record]:
    """Read ``path`` with the reader registered as ``fmt`` (``auto``: by file suffix, by a
    directory's layout, or by a URL's scheme). Records the reader could not read come back with
    ``problem`` set: pass the list to prepare_examples. ``columns`` is data.columns (see
    :func:`rename_columns`)."""
    entry, source = reader_entry(path, fmt, key)
    return _checked(run_reader(entry.obj, source, path, fmt, key), path, key, columns)


def reader_entry(path: str | None, fmt: str, key: str):
    """(the registry entry of the reader for ``path``, what to pass it: a Path, or a URL as written)."""
    from mmalign.plugins import registry

    if path is None:
        raise DataError(f"No data file: set '{key}' in the config to a data file (e.g. a .jsonl).")
    if is_url(path):  # a reader that claims the scheme gets the string as written
        return _scheme_reader(registry(), str(path), key), str(path)
    p = Path(path)
    if not p.exists():
        raise DataError(f"Data file '{path}' (from '{key}') does not exist. Check the path; "
                        f"relative paths are resolved against the config file's directory.")
    if p.is_dir() and fmt in ("jsonl", "json"):
        raise DataError(f"Data path '{path}' (from '{key}') is a directory; '{key}' must name a "
                        f"data file (e.g. train.jsonl).")
    if not p.is_dir() and not p.is_file():  # a pipe or device: reading it may never end
        raise DataError(f"Data path '{path}' (from '{key}') is not a regular file (a device, pipe or "
                        f"socket); '{key}' must name a data file (e.g. train.jsonl).")
    reg = registry()
    if fmt == "auto":
        # The latest registration wins, so an installed plugin can take over a suffix.
        for entry in reversed(list(reg.entries["datasets"].values())):
            folder = entry.meta.get("folders")  # a directory the reader recognizes by its layout
            if p.is_dir() and folder is not None and folder(p) or \
                    not p.is_dir() and any(p.name.endswith(s) for s in entry.meta.get("suffixes", ())):
                return entry, p
        else:
            if p.is_dir():
                raise DataError(f"Data path '{path}' (from '{key}') is a directory that no format "
                                f"recognizes; '{key}' must name a data file (e.g. train.jsonl) or a "
                                f"dataset folder (e.g. one written by datasets' save_to_disk).")
            raise DataError(f"Cannot tell the format of '{path}' from its name. Set data.format to "
                            f"one of: {', '.join(reg.names('datasets'))}.")
    return reg.entry("datasets", fmt, "data.format"), p


def run_reader(reader, source, path, fmt: str, key: str):
    """``reader(source)``, every failure but the reader's own DataError turned into one."""
    p = Path(path)
    try:
        return reader(source)
    except UnreadableRecords as e:  # prepare_examples reports them with the other bad records
        return e.records
    except MmalignError:
        raise
    except OSError as e:
        raise DataError(f"Cannot read data file '{path}' (from '{key}'): {e.strerror or e}. Check "
                        f"the file's permissions.") from None
    except Exception as e:  # a reader's library (json, pyarrow, ...) raising on a bad file
        raise DataError(f"Cannot read data file '{path}' (from '{key}'): {type(e).__name__}: "
                        f"{str(e)[:300]}. Check that it is a valid {fmt if fmt != 'auto' else p.suffix} "
                        f"file, or set data.format to the reader it needs.") from None


def _checked(records: list[Record], path, key: str, columns: dict | None) -> list[Record]:
    if not records:
        raise DataError(f"Data file '{path}' (from '{key}') holds no records (it is empty or has "
                        f"only blank lines). Point '{key}' at a file with records.")
    return rename_columns(records, columns) if columns else records


def rename_columns(records: list[Record], columns: dict) -> list[Record]:
    """data.columns: ``{record key: column}`` (``{prompt: question}`` reads "prompt" from the column
    "question"); the renamed columns leave the record. A record without one of the columns is an
    error naming it and the columns it has."""
    for target, source in columns.items():
        if not isinstance(target, str) or not isinstance(source, str):
            raise ConfigError(f"data.columns: '{target}: {source}' must map a record key to a column "
                              f"name, both strings (e.g. columns: {{prompt: question}}).")
    for record in records:
        if record.problem:
            continue
        missing = [c for c in columns.values() if c not in record.fields]
        if missing:
            raise DataError(f"{record.where}: no column '{missing[0]}' (named in data.columns); the "
                            f"record's columns are: {', '.join(map(str, record.fields)) or '(none)'}. "
                            f"Fix data.columns.")
        kept = {k: v for k, v in record.fields.items() if k not in columns.values()}
        record.fields = {**kept, **{target: record.fields[source] for target, source in columns.items()}}
    return records
