"""Text records that used to train silently wrong or crash late: each is now a DataError naming the
record and the fix, raised before training; a huge line is never tokenized whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import DEMO_DATA, TINY, base_config
from mmalign.cli import main
from mmalign.config import load_config
from mmalign.data import Record
from mmalign.errors import DataError
from mmalign_text.lengths import Limits, longest_token
from mmalign_text.records import tokenize_record
from mmalign_text.reward import TextReward
from tokenizers_offline import chatml_tokenizer, gpt2_tokenizer, mistral_tokenizer

USER = [{"role": "user", "content": "Hi"}]


def record(**fields) -> Record:
    return Record(fields, "pairs.jsonl:7", Path("."))


def test_null_message_content_is_an_error_not_an_empty_completion():
    rec = record(prompt=USER, chosen=[{"role": "assistant", "content": None}],
                 rejected=[{"role": "assistant", "content": "No"}])
    with pytest.raises(DataError, match=r'pairs.jsonl:7: "chosen" message 1 has "content": null. Give'):
        tokenize_record(chatml_tokenizer(), rec, paired=True)


def test_a_template_refusing_the_roles_names_the_record():
    rec = record(prompt=[{"role": "system", "content": "Be brief"}], chosen=[{"role": "assistant", "content": "Yes"}],
                 rejected=[{"role": "assistant", "content": "No"}])
    with pytest.raises(DataError) as e:
        tokenize_record(mistral_tokenizer(), rec, paired=True)
    text = str(e.value)
    assert text.startswith("pairs.jsonl:7: the chat template cannot render") and "['system']" in text
    assert "Conversation roles must alternate" in text and "Fix the messages" in text


def test_row_longer_than_the_models_positions_is_refused_naming_the_fix(tokenizer_dir):
    cfg = load_config(data={"model": {"tiny": dict(TINY), "tokenizer": str(tokenizer_dir)},
                            "data": {"max_length": None}})
    reward = TextReward(cfg.model, cfg.data)
    assert reward.limits.max_positions == 64
    rec = record(prompt="didi", chosen=" great" * 70, rejected=" awful")
    with pytest.raises(DataError, match=r'pairs.jsonl:7: prompt \+ "chosen" is 72 tokens, more than the '
                                        r"model's 64 positions .* Lower data.max_length to at most 64"):
        reward.prepare(rec, paired=True)


def test_too_long_for_the_model_fails_before_training_with_exit_2(tmp_path, capsys, tokenizer_dir):
    rows = [json.loads(line) for line in (DEMO_DATA / "train.jsonl").read_text().splitlines()[:8]]
    rows[4]["chosen"] = " great" * 70
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = base_config(tmp_path, tokenizer_dir, data, data={"max_length": 128})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{data}:5: prompt + \"chosen\" is" in err and "lower data.max_length to at most 64" in err.lower()
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_a_huge_text_is_cut_before_tokenizing_with_the_same_kept_tokens(monkeypatch, mode):
    tok = gpt2_tokenizer()
    huge = " the sky is blue" * 20_000  # 320,000 characters
    limits = Limits(max_length=32, truncation_mode=mode, chars_per_token=longest_token(tok))
    budget = limits.char_budget(32)
    seen = []
    call = type(tok).__call__
    monkeypatch.setattr(type(tok), "__call__", lambda self, *a, **k: seen.append(len(k.get("text") or a[0]))
                        or call(self, *a, **k))
    cut = tokenize_record(tok, record(prompt="Why?", chosen=huge, rejected=" no"), paired=True, limits=limits)
    assert max(seen) == len("Why?") + budget + len(tok.eos_token)  # not the 320,000 characters
    monkeypatch.undo()
    whole = tokenize_record(tok, record(prompt="Why?", chosen=huge, rejected=" no"), paired=True,
                            limits=Limits(max_length=32, truncation_mode=mode, chars_per_token=10**9))  # no cut
    assert (cut.prompt_ids, cut.chosen_ids, cut.rejected_ids) == (whole.prompt_ids, whole.chosen_ids, whole.rejected_ids)


def test_without_max_length_a_text_beyond_the_positions_is_refused_untokenized():
    limits = Limits(max_length=None, max_positions=64, chars_per_token=longest_token(gpt2_tokenizer()))
    with pytest.raises(DataError, match=r'pairs.jsonl:7: "chosen" has 1,000,000 characters, more than the '
                                        r"model's 64 positions can hold. Set data.max_length"):
        tokenize_record(gpt2_tokenizer(), record(prompt="a", chosen="x" * 1_000_000, rejected=" b"), paired=True,
                        limits=limits)


def test_a_cut_at_the_completions_start_does_not_move_the_prompts_end():
    """keep_end cuts a huge completion at its start; here the cut leaves "he...", which would merge
    with the prompt's last token " t" (into " the") and shift the pair's shared prompt."""
    tok = gpt2_tokenizer()
    fields = dict(prompt="Say t", chosen="." + "Q" * 5000 + "he" + "x" * 830, rejected="ank you")
    limits = dict(max_length=32, truncation_mode="keep_end")
    cut = tokenize_record(tok, record(**fields), paired=True,
                          limits=Limits(**limits, chars_per_token=longest_token(tok)))
    whole = tokenize_record(tok, record(**fields), paired=True, limits=Limits(**limits, chars_per_token=10**9))
    assert cut == whole
    assert whole.prompt_ids == [] and len(whole.chosen_ids) == 32  # the chosen row: completion only
    assert whole.rejected_prompt == [83, 97, 121, 301] and whole.rejected_ids[:3] == [97, 110, 107]  # Say Ġt | ank
