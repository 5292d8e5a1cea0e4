"""JSON as data files need it: stricter than Python's ``json`` where that module guesses (NaN,
Infinity, numbers that overflow, a key twice in one object), and error texts that say where and
what to do for what it raises (RecursionError, UnicodeDecodeError, the 4300-digit integer limit)."""

from __future__ import annotations

import json
import math
import re


class JSONProblem(ValueError):
    """Valid for Python's json module, refused in a data file (see :func:`parse_json`)."""


def _no_constant(name: str):
    raise JSONProblem(f"{name} is not JSON (RFC 8259 has no NaN or Infinity); write null or a number "
                      f"instead (Python's json.dumps writes them unless allow_nan=False)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONProblem(f"the number {text[:40]} is too large for a float; write a smaller number")
    return value


def _unique_keys(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise JSONProblem(f"key \"{twice[:80]}\" appears twice in one object (which one is meant?); "
                          f"keep one")
    return obj


def parse_json(text: str):
    """``json.loads``, stricter where Python's json module guesses: NaN, Infinity, numbers that
    overflow a float and repeated keys in one object are refused (JSONProblem). Other errors are
    json's: JSONDecodeError, RecursionError (nesting deeper than Python's recursion limit) and
    ValueError (an integer of more than 4300 digits)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite,
                      object_pairs_hook=_unique_keys)


def json_problem(error: Exception) -> str:
    """Why ``parse_json`` failed, for an error message."""
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON ({error.msg} at column {error.colno})"
    if isinstance(error, RecursionError):
        return ("nested deeper than Python's JSON reader can follow (about a thousand levels of "
                "[ and {); flatten the record")
    if isinstance(error, JSONProblem):
        return str(error)
    return f"{error} (an integer that long cannot be meant; write it as a string)"


def failing_element(text: str) -> tuple[int, int] | None:
    """(number, line) of the first element of a JSON list that ``parse_json`` refuses: where to
    point the user when the error itself carries no position."""
    decoder = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite,
                               object_pairs_hook=_unique_keys)
    blank = re.compile(r"[ \t\n\r]*")
    pos = blank.match(text).end()
    if not text.startswith("[", pos):
        return None
    pos, number = pos + 1, 1
    while True:
        pos = blank.match(text, pos).end()
        try:
            _, end = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return number, text.count("\n", 0, pos) + 1
        pos = blank.match(text, end).end()
        if not text.startswith(",", pos):
            return None
        pos, number = pos + 1, number + 1


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
UTF16 = ("the file is UTF-16 (it starts with a UTF-16 byte-order mark). Save it as UTF-8 (e.g. iconv "
         "-f utf-16 -t utf-8 in > out).")


def utf8_problem(raw: bytes, error: UnicodeDecodeError, unit: str = "line") -> str:
    bad = raw[error.start:error.start + 1].hex()
    if raw.startswith(UTF16_BOMS):
        return f"not valid UTF-8: {UTF16}"
    return (f"not valid UTF-8 (byte 0x{bad} at byte {error.start + 1} of the {unit}; the file was "
            f"probably saved as Latin-1 or Windows-1252). Save the file as UTF-8 (e.g. iconv -f "
            f"latin1 -t utf-8 in > out).")
