"""Preparing records: the modality plugin's ``prepare`` run on every record of a file before
training starts (bad input fails now, every bad record named at once), and the data report of
what was read, used, skipped and changed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from mmalign.data import Record, bad_records_error
from mmalign.errors import DataError

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
