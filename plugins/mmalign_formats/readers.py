"""The ``jsonl`` and ``json`` record readers: each turns a file into Records that remember their
line (or list element), and reports every unreadable record of the file at once."""

from __future__ import annotations

import json
from pathlib import Path

from mmalign.data import Record, UnreadableRecords, bad_records_error
from mmalign.errors import DataError
from mmalign_formats.strict_json import UTF16, UTF16_BOMS, failing_element, json_problem, parse_json, utf8_problem


def _unreadable(path: Path, records: list[Record]) -> list[Record]:
    problems = [r.problem for r in records if r.problem]
    if problems:
        raise UnreadableRecords(str(bad_records_error(path, problems)), records)
    return records


def _jsonl_record(path: Path, number: int, raw: bytes) -> Record | None:
    """Line ``number`` of a JSONL file as a Record (with ``problem`` set if it is not a JSON
    object); None for a blank line."""
    where = f"{path}:{number}"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Record({}, where, path.parent, problem=f"{where}: {utf8_problem(raw, e)}")
    if number == 1:
        line = line.removeprefix("\ufeff")  # byte-order mark written by some editors
    if not line.strip():
        return None
    try:
        obj = parse_json(line)
    except (ValueError, RecursionError) as e:
        hint = (" This looks like a JSON list of records: name the file .json or set data.format: "
                "json." if number == 1 and line.strip() == "[" else "")
        return Record({}, where, path.parent, problem=(
            f"{where}: {json_problem(e)}. Each line must be one JSON object; fix or remove "
            f"that line.{hint}"))
    if not isinstance(obj, dict):
        hint = " (a JSON list of records belongs in a .json file)" if isinstance(obj, list) else ""
        return Record({}, where, path.parent, problem=(
            f"{where}: expected a JSON object with keys such as \"prompt\", \"chosen\", "
            f"\"rejected\", got {type(obj).__name__}{hint}."))
    return Record(obj, where, path.parent)


def read_jsonl(path: str | Path) -> list[Record]:
    """One JSON object per line (``parse_json``'s rules); blank lines are ignored, a byte-order
    mark and CRLF line ends are accepted. Raises UnreadableRecords naming every line that is not
    a JSON object."""
    path = Path(path)
    with path.open("rb") as f:
        if f.read(2) in UTF16_BOMS:  # every line would fail; say it once
            raise DataError(f"{path}:1: {UTF16}")
        f.seek(0)
        records = [_jsonl_record(path, number, raw) for number, raw in enumerate(f, start=1)]
    return _unreadable(path, [r for r in records if r is not None])


def stream_jsonl(path: str | Path):
    """``data.streaming``: read_jsonl's records one line at a time. A line that is not a JSON
    object is an error when training reaches it (the data report cannot wait for the end)."""
    from mmalign.data import RecordStream

    path = Path(path)
    with path.open("rb") as f:
        if f.read(2) in UTF16_BOMS:
            raise DataError(f"{path}:1: {UTF16}")
        f.seek(0)
        count = sum(1 for number, raw in enumerate(f, start=1) if not _blank(number, raw))
    return RecordStream(lambda: _jsonl_lines(path), count)


def _blank(number: int, raw: bytes) -> bool:
    """A line _jsonl_record ignores (decoded as it decodes, without parsing)."""
    line = raw.decode("utf-8", errors="replace")
    return not (line.removeprefix("\ufeff") if number == 1 else line).strip()


def _jsonl_lines(path: Path):
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            record = _jsonl_record(path, number, raw)
            if record is not None:
                yield record


def _json_file_problem(path: Path, text: str, error: Exception) -> str:
    problem = json_problem(error)
    if isinstance(error, json.JSONDecodeError):
        hint = (" One JSON object per line is JSON Lines: name the file .jsonl or set data.format: "
                "jsonl." if error.msg == "Extra data" else "")
        return f"{path}:{error.lineno}: {problem}. Fix the file.{hint}"
    element = failing_element(text)
    where = f"{path}:record {element[0]} (line {element[1]})" if element else str(path)
    return f"{where}: {problem}. Fix or remove the record."


def read_json(path: str | Path) -> list[Record]:
    """A JSON file holding a list of objects (record N is element N, counted from 1), UTF-8 with
    or without a byte-order mark; ``parse_json``'s rules."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: {utf8_problem(raw, e, 'file')}") from None
    try:
        items = parse_json(text)
    except (ValueError, RecursionError) as e:
        raise DataError(_json_file_problem(path, text, e)) from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of records; use .jsonl for one per line.")
    out = []
    for i, obj in enumerate(items, start=1):
        where, problem = f"{path}:record {i}", None
        if not isinstance(obj, dict):
            obj, problem = {}, (f"{where}: not a JSON object (got {type(obj).__name__}); every "
                                f"element of the list must be an object with the record's keys.")
        out.append(Record(obj, where, path.parent, problem=problem))
    return _unreadable(path, out)
