"""A catalogue of malformed inputs, run through ``mmalign train`` (mmalign.cli.main): each one is
either a clear error (file, line, key and the fix; exit code 2; nothing written) or a counted skip
in the data report. Text records for now; a modality adds its own cases the same way.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import DEMO_DATA, base_config

from mmalign.cli import main

GOOD = [json.loads(line) for line in (DEMO_DATA / "train.jsonl").read_text().splitlines()[:40]]
LONG_PROMPT = " ".join(["didi"] * 40)  # 40 tokens > max_length 32 of base_config
LONG_TEXT = " great" * 40


def pair(**fields):
    return json.dumps({"prompt": "didi great", "chosen": " superb didi", "rejected": " awful didi", **fields})


def write_data(tmp_path, lines: list, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def with_bad_line(tmp_path, line):
    """7 good records, then ``line`` as line 8."""
    return write_data(tmp_path, [json.dumps(r) for r in GOOD[:7]] + [line])


def train_cli(tmp_path, data_file, capsys, **sections):
    cfg = base_config(tmp_path, DEMO_DATA / "tokenizer", data_file, **sections)
    cfg["train"].update(max_steps=1, callbacks=[])
    path = tmp_path / "config.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    code = main(["train", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


# (case, line 8 of the data file, what the error must say besides "FILE:8:")
LINE_ERRORS = [
    ("invalid JSON", '{"prompt": "a", "chosen": "b",', ["invalid JSON", "fix or remove that line"]),
    ("array, not an object", "[1, 2]", ["expected a JSON object", "got list"]),
    ("string, not an object", '"just text"', ["expected a JSON object", "got str"]),
    ("number, not an object", "42", ["expected a JSON object", "got int"]),
    ("not UTF-8", b'{"prompt": "caf\xe9"}', ["not valid UTF-8", "Save the file as UTF-8"]),
    # (a pair without "prompt" has it taken from chosen and rejected: tests/plugins/mmalign_text/test_implicit_prompt.py)
    ("missing prompt", json.dumps({"chosen": "a"}), ['missing key "prompt"', '"chosen"']),
    ("missing chosen", json.dumps({"prompt": "a", "rejected": "b"}), ['missing key "chosen"']),
    ("missing rejected", json.dumps({"prompt": "a", "chosen": "b"}), ['missing key "rejected"']),
    ("empty chosen", pair(chosen=""), ['"chosen" is empty', "fix or remove"]),
    ("blank rejected", pair(rejected=" \t "), ['"rejected" is empty']),
    ("null prompt", pair(prompt=None), ['"prompt" is null', "remove the record"]),
    ("chosen is a number", pair(chosen=5), ['"chosen" must be a string or a list of chat messages', "got int"]),
    ("prompt is an object", pair(prompt={"text": "a"}), ['"prompt" must be a string', "got dict"]),
    ("rejected is a bool", pair(rejected=True), ['"rejected" must be a string', "got bool"]),
    ("message without content", pair(prompt=[{"role": "user"}]),
     ['"prompt" message 1 must be an object with "role" and "content"', "got ['role']"]),
    ("message not an object", pair(chosen=[{"role": "assistant", "content": "a"}, "b"]),
     ['"chosen" message 2 must be an object', "got str"]),
    ("empty message list", pair(rejected=[]), ['"rejected" has no content']),
    ("assistant turn without text", pair(prompt=[{"role": "user", "content": "a"}],
                                         chosen=[{"role": "assistant", "content": "  "}],
                                         rejected=[{"role": "assistant", "content": "b"}]),
     ['"chosen" has no content']),
    ("string prompt, chat completion", pair(chosen=[{"role": "assistant", "content": "a"}]),
     ["must both be strings or both be chat message lists"]),
    ("chat record, tokenizer without chat template",
     pair(prompt=[{"role": "user", "content": "a"}], chosen=[{"role": "assistant", "content": "b"}],
          rejected=[{"role": "assistant", "content": "c"}]),
     ["tokenizer has no chat template", "plain-string records"]),
]


@pytest.mark.parametrize("case,line,expected", LINE_ERRORS, ids=[c[0] for c in LINE_ERRORS])
def test_bad_record_is_a_clear_error(tmp_path, capsys, case, line, expected):
    data = with_bad_line(tmp_path, line)
    code, _, err = train_cli(tmp_path, data, capsys)
    assert code == 2, err
    assert f"{data}:8: " in err and all(e in err for e in expected), err
    assert "Traceback" not in err and not (tmp_path / "run").exists()  # nothing written


def _json_list(tmp_path, text):
    path = tmp_path / "pairs.json"
    path.write_text(text)
    return {"data": {"train": str(path)}}


# (case, config changes made by setup(tmp_path), what the error must say)
FILE_ERRORS = [
    ("missing file", lambda t: {"data": {"train": str(t / "nope.jsonl")}},
     ["nope.jsonl' (from 'data.train') does not exist", "Check the path"]),
    ("missing eval file", lambda t: {"data": {"eval": str(t / "nope.jsonl")}},
     ["(from 'data.eval') does not exist"]),
    ("no data.train", lambda t: {"data": {"train": None}}, ["set 'data.train' in the config"]),
    ("empty file", lambda t: {"data": {"train": str(write_data(t, []))}},
     ["holds no records", "Point 'data.train' at a file with records"]),
    ("only blank lines", lambda t: {"data": {"train": str(write_data(t, ["", "  ", ""]))}},
     ["holds no records"]),
    ("a directory", lambda t: {"data": {"train": str(t)}}, ["is a directory", "must name a data file"]),
    ("unknown data.format", lambda t: {"data": {"format": "csvx"}},
     ["Unknown dataset format 'csvx' (config key 'data.format')", "jsonl"]),
    ("suffix of no format", lambda t: {"data": {"train": str(write_data(t, ["a,b"], "pairs.txt"))}},
     ["Cannot tell the format", "Set data.format"]),
    ("JSON file that is not a list", lambda t: _json_list(t, '{"prompt": "a"}'),
     ["expected a JSON list of records"]),
    ("JSON list with a non-object", lambda t: _json_list(t, json.dumps([GOOD[0], "x"])),
     ["pairs.json:record 2: not a JSON object", "got str"]),
    ("invalid JSON file", lambda t: _json_list(t, '[{"prompt": }]'), ["pairs.json:1: invalid JSON"]),
    ("unknown data.too_long", lambda t: {"data": {"too_long": "cut"}},
     ["key 'data.too_long' must be one of 'truncate', 'skip'"]),
    ("legacy length key under trl tokenization", lambda t: {"data": {"max_completion_length": 16}},
     ["key 'data.max_completion_length' only applies with data.tokenization: legacy",
      "set data.max_length (default 1024)"]),
    ("unknown data.truncation_mode", lambda t: {"data": {"truncation_mode": "left"}},
     ["key 'data.truncation_mode' must be one of 'keep_start', 'keep_end'"]),
    ("data.max_length 0", lambda t: {"data": {"max_length": 0}}, ["key 'data.max_length' must be at least 1"]),
]


@pytest.mark.parametrize("case,setup,expected", FILE_ERRORS, ids=[c[0] for c in FILE_ERRORS])
def test_bad_data_file_or_key_is_a_clear_error(tmp_path, capsys, case, setup, expected):
    good = write_data(tmp_path, [json.dumps(r) for r in GOOD[:8]], "good.jsonl")
    code, _, err = train_cli(tmp_path, good, capsys, **setup(tmp_path))
    assert code == 2, err
    assert all(e in err for e in expected), err
    assert "Traceback" not in err


# (case, line 8, data config, the reason counted in the report)
SKIPS = [
    ("chosen identical to rejected", pair(chosen="same didi", rejected="same didi"), {},
     "chosen identical to rejected"),
    ("identical chat turns", pair(prompt=[{"role": "user", "content": "a"}],
                                  chosen=[{"role": "assistant", "content": "b"}],
                                  rejected=[{"role": "assistant", "content": "b"}]), {},
     "chosen identical to rejected"),
    ("duplicate of line 3 (other id)", json.dumps({**GOOD[2], "id": "copy"}), {},
     "duplicate of an earlier record (same fields)"),
    ("prompt fills max_length", pair(prompt=LONG_PROMPT), {},
     "prompt fills data.max_length (32 tokens): no completion token would remain"),
    ("completion too long, too_long: skip", pair(rejected=LONG_TEXT), {"too_long": "skip"},
     'prompt + "rejected" longer than data.max_length (32 tokens)'),
]


@pytest.mark.parametrize("case,line,data_cfg,reason", SKIPS, ids=[c[0] for c in SKIPS])
def test_unusable_record_is_a_counted_skip_or_an_error_when_strict(tmp_path, capsys, case, line,
                                                                   data_cfg, reason):
    data = with_bad_line(tmp_path, line)
    code, out, err = train_cli(tmp_path, data, capsys, data=data_cfg)
    assert code == 0, err
    assert f"data {data}: 8 read, 7 used, 1 skipped" in out
    assert f"  skipped      1  {reason} (lines 8)" in out
    code, _, err = train_cli(tmp_path / "strict", data, capsys, data={**data_cfg, "strict": True})
    assert code == 2 and f"{data}:8: {reason}" in err and "data.strict is true" in err, err


@pytest.mark.parametrize("line,data_cfg,note", [
    (pair(chosen=LONG_TEXT), {}, 'prompt + "chosen" longer than data.max_length (32 tokens): its end truncated'),
    (pair(prompt=LONG_PROMPT), {"truncation_mode": "keep_end"},
     'prompt + "chosen" longer than data.max_length (32 tokens): its start truncated'),
    (pair(chosen=LONG_TEXT), {"tokenization": "legacy", "max_completion_length": 16},
     '"chosen" longer than data.max_completion_length (16 tokens): its end truncated'),
])
def test_truncation_is_the_default_and_is_counted(tmp_path, capsys, line, data_cfg, note):
    data = with_bad_line(tmp_path, line)
    code, out, err = train_cli(tmp_path, data, capsys, data=data_cfg)
    assert code == 0, err
    assert f"data {data}: 8 read, 8 used, 0 skipped" in out and f"  note         1  {note} (lines 8)" in out


def test_every_bad_line_of_a_file_is_reported_at_once_and_only_those(tmp_path, capsys):
    lines = [json.dumps(r) for r in GOOD[:30]]
    bad = {4: '{"prompt": "a",', 9: json.dumps({"prompt": "a", "chosen": "b"}), 15: pair(chosen=3),
           22: "[]"}
    skips = {6: pair(chosen="same", rejected="same"), 12: lines[1]}
    for number, line in {**bad, **skips}.items():
        lines[number - 1] = line
    lines[26] = pair(chosen=LONG_TEXT)  # line 27: truncated, counted, used
    data = write_data(tmp_path, lines)
    code, _, err = train_cli(tmp_path, data, capsys)
    assert code == 2 and "4 bad records" in err
    assert [int(n) for n in re.findall(rf"{re.escape(str(data))}:(\d+):", err)] == sorted(bad)

    for number in bad:  # fix the bad lines: the skips are reported with exactly their lines
        lines[number - 1] = json.dumps(GOOD[30 + number % 10])
    write_data(tmp_path, lines)
    code, out, err = train_cli(tmp_path, data, capsys)
    assert code == 0, err
    assert f"data {data}: 30 read, 28 used, 2 skipped" in out
    assert "  skipped      1  chosen identical to rejected (lines 6)" in out
    assert "  skipped      1  duplicate of an earlier record (same fields) (lines 12)" in out
    assert "(lines 27)" in out and out.count(" (lines ") == 3


def test_many_bad_lines_are_listed_up_to_ten_and_counted(tmp_path, capsys):
    data = write_data(tmp_path, [json.dumps(r) for r in GOOD[:5]] + ["{oops"] * 13)
    code, _, err = train_cli(tmp_path, data, capsys)
    assert code == 2 and "13 bad records" in err and "... and 3 more" in err
    assert [int(n) for n in re.findall(rf"{re.escape(str(data))}:(\d+):", err)] == list(range(6, 16))


def test_byte_order_mark_is_accepted(tmp_path, capsys):
    data = write_data(tmp_path, [json.dumps(r) for r in GOOD[:8]])
    data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    code, out, err = train_cli(tmp_path, data, capsys)
    assert code == 0 and "8 read, 8 used" in out, err
