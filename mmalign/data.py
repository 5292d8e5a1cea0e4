"""Reading records. A reader turns a file into :class:`Record` objects that remember where they
came from (file and line), so every later error can name them. Readers are plugins (``jsonl`` and
``json`` come from the built-in ``formats`` plugin); :func:`read_records` picks one by name or suffix."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from mmalign.errors import ConfigError, DataError, MmalignError


@dataclass
class Record:
    fields: dict
    where: str  # "path:line" (or "path:row N"), used in every error about this record
    root: Path  # directory that relative paths inside the record (images) resolve against
    # what a plugin's ``prepare`` did to a record it kept (e.g. "prompt truncated to ..."): counted
    # in the data report; see :meth:`note`
    notes: list[str] = field(default_factory=list)
    # set by a reader on a record it could not read (invalid JSON, say), in place of its fields:
    # read_records returns such records, and prepare_examples reports them with the file's other
    # bad records, so that one run names every bad line
    problem: str | None = None
    # data.allow_outside_paths: may paths inside this record leave ``root``? (set by
    # prepare_examples; see mmalign_formats.files.resolve_data_path)
    allow_outside: bool = False

    def note(self, reason: str) -> None:
        """Count a change made to this record (truncation, say) in the run's data report."""
        self.notes.append(reason)


MAX_LISTED = 10  # bad records listed in one error; the others are counted


def bad_records_error(path: str | Path, problems: list[str]) -> DataError:
    """One error for every bad record of a file, so a user fixes them all in one pass."""
    if len(problems) == 1:
        return DataError(problems[0])
    listed = "\n".join(f"  {p}" for p in problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return DataError(f"{path}: {len(problems)} bad records; fix or remove each of them "
                     f"(the first {min(len(problems), MAX_LISTED)} are listed):\n{listed}{more}")


class UnreadableRecords(DataError):
    """A reader read its file to the end but could not read some records. ``records`` holds every
    record in file order, those it could not read with ``problem`` set."""

    def __init__(self, message: str, records: list[Record]):
        super().__init__(message)
        self.records = records


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


@dataclass
class DataReport:
    """What happened to the records of one file: read, used, skipped (with reasons)."""

    path: str
    read: int = 0
    used: int = 0
    skipped: dict | None = None  # reason -> count
    notes: dict = field(default_factory=dict)  # reason -> count, for records used after a change
    skipped_at: dict = field(default_factory=dict)  # reason -> where of the records (first few)
    noted_at: dict = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped = self.skipped if self.skipped is not None else {}
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        _keep_place(self.skipped_at, reason, where)

    def note(self, reason: str, where: str) -> None:
        self.notes[reason] = self.notes.get(reason, 0) + 1
        _keep_place(self.noted_at, reason, where)

    def _places(self, wheres: list[str], count: int) -> str:
        prefix = f"{self.path}:"
        short = [w.removeprefix(prefix) for w in wheres[:PLACES]]
        label = "lines " if all(s.isdigit() for s in short) else "at "
        more = f", ... (+{count - len(short)})" if count > len(short) else ""
        return f" ({label}{', '.join(short)}{more})"

    def table(self) -> str:
        n_skipped = sum((self.skipped or {}).values())
        lines = [f"data {self.path}: {self.read} read, {self.used} used, {n_skipped} skipped"]
        for reason, count in sorted((self.skipped or {}).items()):
            lines.append(f"  skipped {count:>6}  {reason}{self._places(self.skipped_at.get(reason, []), count)}")
        for reason, count in sorted(self.notes.items()):
            lines.append(f"  note    {count:>6}  {reason}{self._places(self.noted_at.get(reason, []), count)}")
        return "\n".join(lines)


PLACES = 5  # places of a reason kept and shown in the data report (a streamed run reads millions)


def _keep_place(places: dict, reason: str, where: str) -> None:
    kept = places.setdefault(reason, [])
    if len(kept) < PLACES:
        kept.append(where)


DUPLICATE = "duplicate of an earlier record (same fields)"


def _identity(record: Record) -> bytes:
    """What makes two records the same example: every field but an ``id`` (a digest, so that
    remembering a million records costs megabytes, not the records)."""
    text = json.dumps({k: v for k, v in record.fields.items() if k != "id"}, sort_keys=True,
                      default=repr)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def prepare_examples(reward, records: list[Record], *, paired: bool, strict: bool, path: str,
                     duplicates: str = "skip", allow_outside: bool = False):
    """Run the plugin's ``prepare`` on every record before training starts, so bad input fails
    now rather than an hour in (plugins check every file a record names, images decoded in full).
    Every bad record of the file is named in one DataError (the first ``MAX_LISTED``); valid but
    unusable records (the plugin's SkipRecord, and duplicates unless ``duplicates="keep"``) are
    counted with their reason and place, or are errors too with ``strict``. ``allow_outside`` is
    ``data.allow_outside_paths`` (see mmalign_formats.files). Returns (examples, DataReport)."""
    from mmalign.errors import SkipRecord

    report = DataReport(path, read=len(records), skipped={})
    examples, problems = [], []
    first_seen: dict[bytes, str] = {}

    def skip(record: Record, reason: str, detail: str = "") -> None:
        if strict:
            problems.append(f"{record.where}: {reason}{detail} (data.strict is true; fix or remove "
                            f"the record, or set data.strict: false to skip such records).")
        else:
            report.skip(reason, record.where)

    for record in records:
        if record.problem:
            problems.append(record.problem)
            continue
        record.notes.clear()  # prepare may run again on the same records (train, then eval)
        record.allow_outside = allow_outside
        try:
            example = reward.prepare(record, paired=paired)
        except DataError as err:
            problems.append(str(err))
            continue
        except SkipRecord as err:
            skip(record, err.reason)
            continue
        identity = _identity(record) if duplicates == "skip" else b""
        if identity in first_seen:
            skip(record, DUPLICATE, f", the same as {first_seen[identity]}")
            continue
        if duplicates == "skip":
            first_seen[identity] = record.where
        for reason in record.notes:
            report.note(reason, record.where)
        examples.append(example)
    if problems:
        raise bad_records_error(path, problems)
    report.used = len(examples)
    return examples, report
