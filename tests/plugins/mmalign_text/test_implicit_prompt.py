"""Preference records with an implicit prompt (ultrafeedback_binarized style): the prompt is the
start chosen and rejected share, split off as TRL 1.16's extract_prompt does, for every reader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import TINY, base_config
from mmalign.cli import main
from mmalign.data import Record
from mmalign.errors import DataError
from mmalign_text.implicit_prompt import EXTRACTED, split_implicit_prompt
from mmalign_text.records import tokenize_record
from tokenizers_offline import chatml_tokenizer

USER = {"role": "user", "content": "What color is the sky?"}
SKY = [
    {"chosen": [USER, {"role": "assistant", "content": "It is blue."}],
     "rejected": [USER, {"role": "assistant", "content": "It is green."}]},
    {"chosen": [{"role": "system", "content": "Be brief."}, USER, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}],
     "rejected": [{"role": "system", "content": "Be brief."}, USER, {"role": "assistant", "content": "Blue."},
                  {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "No."}]},
    {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    {"chosen": "The sky is", "rejected": "The sky is blue."},  # one is the start of the other
    {"chosen": "Hello there", "rejected": "Hellothere"},
]


def record(**fields) -> Record:
    return Record(fields, "pairs.jsonl:3", Path("."))


@pytest.mark.parametrize("example", SKY, ids=range(len(SKY)))
def test_the_split_equals_trls_extract_prompt(example):
    from trl.data_utils import extract_prompt

    rec = record(**example)
    assert split_implicit_prompt(rec) == {**example, **extract_prompt(example)}
    assert rec.notes == [EXTRACTED]


def test_a_string_prompt_beside_conversations_is_replaced_as_trl_does():
    from trl.data_utils import maybe_extract_prompt

    example = {"prompt": "What color is the sky?", **SKY[0]}  # ultrafeedback_binarized's columns
    split = split_implicit_prompt(record(**example))
    assert split["prompt"] == [USER] and split == {**example, **maybe_extract_prompt(example)}
    explicit = {"prompt": [USER], "chosen": SKY[0]["chosen"][1:], "rejected": SKY[0]["rejected"][1:]}
    assert split_implicit_prompt(record(**explicit)) == explicit  # an explicit prompt is kept


def test_tokens_equal_those_of_the_explicit_record():
    tok = chatml_tokenizer()
    implicit = tokenize_record(tok, record(**SKY[1]), paired=True)
    split = split_implicit_prompt(record(**SKY[1]))
    explicit = tokenize_record(tok, record(**split), paired=True)
    assert (implicit.prompt_ids, implicit.chosen_ids, implicit.rejected_ids) == \
        (explicit.prompt_ids, explicit.chosen_ids, explicit.rejected_ids)
    assert tok.decode(implicit.chosen_ids).startswith("Yes.")


@pytest.mark.parametrize("fields,message", [
    ({"chosen": "The sky is blue.", "rejected": [USER]}, "both to be strings or both lists of chat messages"),
    ({"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]},
     "differ from their first message"),
])
def test_pairs_that_share_no_prompt_name_the_record(fields, message):
    with pytest.raises(DataError, match=message) as e:
        tokenize_record(chatml_tokenizer(), record(**fields), paired=True)
    assert str(e.value).startswith("pairs.jsonl:3: no \"prompt\"")


def test_trains_from_implicit_prompt_conversations(tmp_path, capsys):
    tok = chatml_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    rows = [{"chosen": [{"role": "user", "content": f"Count to {n}."}, {"role": "assistant", "content": "1 2 3"}],
             "rejected": [{"role": "user", "content": f"Count to {n}."}, {"role": "assistant", "content": "no"}]}
            for n in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = base_config(tmp_path, tmp_path / "tok", data, model={"tiny": {**TINY, "vocab_size": max(tok.get_vocab().values()) + 1}},
                      data={"max_length": 64}, train={"max_steps": 2})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "cfg.json")]) == 0
    out = capsys.readouterr()
    assert f"note         8  {EXTRACTED}" in out.out + out.err
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
