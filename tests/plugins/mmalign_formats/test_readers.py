"""The built-in ``jsonl`` and ``json`` readers (the ``formats`` plugin) and their strict JSON rules."""

import pytest

from conftest import write_jsonl
from mmalign.data import UnreadableRecords
from mmalign.errors import DataError
from mmalign_formats import parse_json, read_json, read_jsonl


def test_read_jsonl_remembers_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    records = read_jsonl(path)
    assert [r.where for r in records] == [f"{path}:1", f"{path}:3"]


def test_invalid_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": oops}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: invalid JSON"):
        read_jsonl(path)


def test_non_object_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [])
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="d.jsonl:1: expected a JSON object"):
        read_jsonl(path)


# --- the JSON rules of both readers ------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ('{"a": NaN}', "NaN is not JSON"),
    ('{"a": -Infinity}', "-Infinity is not JSON"),
    ('{"a": 1e400}', "too large for a float"),
    ('{"a": 1, "a": 2}', 'key "a" appears twice'),
    ('{"a": ' + "9" * 5000 + "}", "4300"),
])
def test_parse_json_refuses_what_python_json_would_guess(text, expected):
    with pytest.raises(ValueError, match=expected):
        parse_json(text)
    assert parse_json('{"a": 1.5, "b": [1, {"c": null}]}') == {"a": 1.5, "b": [1, {"c": None}]}


def test_unreadable_lines_are_all_named_with_their_reason(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [b'{"a": 1}', b'{"a": NaN}', b"[" * 3000 + b"]" * 3000, b'{"a": "caf\xe9"}', b'{"a": 1, "a": 1}']
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    with pytest.raises(UnreadableRecords) as err:
        read_jsonl(path)
    message = str(err.value)
    assert "4 bad records" in message
    for number, reason in [(2, "NaN"), (3, "nested deeper"), (4, "byte 0xe9 at byte 11 of the line"), (5, "twice")]:
        assert f"d.jsonl:{number}: " in message and reason in message
    assert [r.problem is None for r in err.value.records] == [True, False, False, False, False]


def test_a_json_file_names_the_record_and_line_of_a_problem(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n {"a": 1},\n {"a": 2},\n {"a": Infinity}\n]')
    with pytest.raises(DataError, match=r"d.json:record 3 \(line 4\): Infinity is not JSON"):
        read_json(path)
    path.write_bytes('[\n{"a": 1},\n{"a": "café"}]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"d.json:3: not valid UTF-8 \(byte 0xe9 at byte \d+ of the file"):
        read_json(path)


def test_boms_and_crlf_are_accepted(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n{"a": 2}\r\n')
    assert [r.fields for r in read_jsonl(tmp_path / "d.jsonl")] == [{"a": 1}, {"a": 2}]
    (tmp_path / "d.json").write_bytes(b'\xef\xbb\xbf[{"a": 1}]')
    assert [r.fields for r in read_json(tmp_path / "d.json")] == [{"a": 1}]
