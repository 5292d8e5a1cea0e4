"""The text plugin tokenizes records exactly as TRL 1.16 does: hand-checked ids for four tokenizer
styles (tokenizers_offline.py explains their ids), then the same rows as TRL's own DPO, SFT and KTO
data preparation when TRL is installed."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from mmalign.data import Record
from mmalign.errors import SkipRecord
from mmalign_text.lengths import Limits
from mmalign_text.records import tokenize_record

from tokenizers_offline import STYLES

STANDARD = {"prompt": "The sky", "chosen": " is blue", "rejected": " is the sea"}
CHAT = {"prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Yes"}],
        "rejected": [{"role": "assistant", "content": "No"}]}
SKY = [84, 300, 32, 115, 107, 121]  # "The sky": T, he, Ġ, s, k, y
IS_BLUE = [304, 32, 98, 108, 117, 101]  # " is blue": Ġis, Ġ, b, l, u, e
IS_THE_SEA = [304, 302, 32, 115, 101, 97]  # " is the sea": Ġis, Ġthe, Ġ, s, e, a
CHATML_PROMPT = [257, 117, 115, 101, 114, 10, 72, 105, 258, 10, 257, 97, 115, 115, 303, 116, 97, 110, 116, 10]
LLAMA3_PROMPT = [256, 258, 117, 115, 101, 114, 259, 10, 10, 72, 105, 260, 258, 97, 115, 115, 303, 116, 97,
                 110, 116, 259, 10, 10]


def rows(style: str, fields: dict, paired: bool = True, **limits):
    """(prompt + completion ids, completion mask) per row: chosen (or completion), then rejected."""
    ex = tokenize_record(STYLES[style](), Record(dict(fields), "data.jsonl:1", Path(".")), paired=paired,
                         limits=Limits(**limits))
    out = [(ex.prompt_ids + ex.chosen_ids, [0] * len(ex.prompt_ids) + [1] * len(ex.chosen_ids))]
    if ex.rejected_ids is not None:
        p = ex.rejected_prompt
        out.append((p + ex.rejected_ids, [0] * len(p) + [1] * len(ex.rejected_ids)))
    return out


def ids(style: str, fields: dict, **limits) -> list[tuple[list[int], list[int]]]:
    """(prompt part, completion part) of each row."""
    return [([t for t, m in zip(r, mask) if not m], [t for t, m in zip(r, mask) if m])
            for r, mask in rows(style, fields, **limits)]


# --- hand-checked ids --------------------------------------------------------------------------
def test_gpt2_standard_appends_eos_and_adds_no_bos():
    assert ids("gpt2", STANDARD) == [(SKY, IS_BLUE + [256]), (SKY, IS_THE_SEA + [256])]


def test_llama3_standard_starts_with_bos_once():
    assert ids("llama3", STANDARD) == [([256] + SKY, IS_BLUE + [260]), ([256] + SKY, IS_THE_SEA + [260])]


def test_mistral_standard_starts_with_bos():
    # <s>, ▁, T, he, ▁, s, k, y | ▁, i, s, ▁, b, l, u, e, </s>  (c = 227 + ord(c))
    prompt = [1, 259, 311, 355, 259, 342, 334, 348]
    assert ids("mistral", STANDARD)[0] == (prompt, [259, 332, 342, 259, 325, 335, 344, 328, 2])


def test_chatml_conversation_ends_with_the_template_not_an_extra_eos():
    # the completion is the template's "Yes<|im_end|>\n": no EOS after it (TRL 1.16)
    assert ids("chatml", CHAT) == [(CHATML_PROMPT, [89, 101, 115, 258, 10]),
                                   (CHATML_PROMPT, [78, 111, 258, 10])]


def test_llama3_conversation_has_the_templates_bos_only():
    assert ids("llama3", CHAT)[0] == (LLAMA3_PROMPT, [89, 101, 115, 260])


def test_mistral_conversation():
    # <s> [ INST ] ▁ H i ▁ [ / INST ] | Y e s </s>
    assert ids("mistral", CHAT)[0] == ([1, 318, 359, 320, 259, 299, 332, 259, 318, 274, 359, 320],
                                       [316, 328, 342, 2])


def test_keep_start_cuts_the_row_end():
    assert ids("gpt2", STANDARD, max_length=8)[0] == (SKY, [304, 32])


def test_keep_end_cuts_each_row_start_on_its_own():
    chosen, rejected = ids("gpt2", {**STANDARD, "chosen": " is"}, max_length=6, truncation_mode="keep_end")
    assert chosen == (SKY[-4:], [304, 256])  # 2 completion tokens: the prompt keeps 4
    assert rejected == ([], IS_THE_SEA[1:] + [256])  # 7 completion tokens: the first one is cut


def test_prompt_filling_max_length_is_skipped_with_keep_start():
    with pytest.raises(SkipRecord, match="prompt fills data.max_length"):
        rows("gpt2", STANDARD, max_length=6)
    assert ids("gpt2", STANDARD, max_length=6, truncation_mode="keep_end")[0] == ([], IS_BLUE[1:] + [256])


def test_sft_completion_and_kto_label_records():
    sft = {"prompt": "The sky", "completion": " is blue"}
    assert ids("llama3", sft, paired=False) == [([256] + SKY, IS_BLUE + [260])]
    kto = {"prompt": CHAT["prompt"], "completion": CHAT["chosen"], "label": False}
    assert ids("chatml", kto, paired=False) == [(CHATML_PROMPT, [89, 101, 115, 258, 10])]


def test_legacy_keeps_the_older_convention():
    # no BOS, completion tokenized alone, EOS appended even after the template's <|im_end|>\n
    assert ids("llama3", STANDARD, tokenization="legacy")[0] == (SKY, IS_BLUE + [260])
    assert ids("chatml", CHAT, tokenization="legacy")[0] == (CHATML_PROMPT, [89, 101, 115, 258, 10, 258])
    assert ids("gpt2", STANDARD, tokenization="legacy", max_prompt_length=2,
               max_completion_length=3)[0] == (SKY[-2:], IS_BLUE[:3])


# --- against TRL itself ------------------------------------------------------------------------
LIMITS = [dict(max_length=None)] + [dict(max_length=n, truncation_mode=mode) for n in (9, 14, 26)
                                     for mode in ("keep_start", "keep_end")]
MORE = [{"prompt": "Why?", "chosen": " Because.", "rejected": " The theme is <b>é</b>"},
        {"prompt": [{"role": "user", "content": "Tell me the theme"}, {"role": "assistant", "content": "It is"},
                    {"role": "user", "content": "more"}],
         "chosen": [{"role": "assistant", "content": "the theme is the sea, the sky"}],
         "rejected": [{"role": "assistant", "content": "no"}]}]


def trl_dpo_rows(tok, records: list[dict], max_length, truncation_mode):
    """Rows of TRL 1.16's DPOTrainer: its dataset preparation, then its collator's truncation."""
    trl = pytest.importorskip("trl", minversion="1.16")
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    args = SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode=truncation_mode)
    ds = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tok), Dataset.from_list(records), tok, args, "train")
    collate = DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=max_length,
                                        truncation_mode=truncation_mode)
    out = []
    for example in ds:
        batch = collate([{k: example[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        for r in range(2):
            n = int(batch["attention_mask"][r].sum())
            out.append((batch["input_ids"][r, :n].tolist(), batch["completion_mask"][r, :n].tolist()))
    assert trl.__version__.startswith("1.16")
    return out


def mmalign_rows(style: str, records: list[dict], paired: bool = True, **limits) -> list:
    out = []
    for record in records:
        try:
            out += rows(style, record, paired=paired, **limits)
        except SkipRecord:
            pass  # TRL drops these records too
    return out


@pytest.mark.parametrize("limits", LIMITS, ids=lambda d: "-".join(f"{v}" for v in d.values()))
@pytest.mark.parametrize("style", list(STYLES))
def test_dpo_rows_equal_trls(style, limits):
    tok = STYLES[style]()
    compared = 0
    for records in ([STANDARD, MORE[0]], [CHAT, MORE[1]] if tok.chat_template else []):
        if not records:
            continue
        expected = trl_dpo_rows(tok, records, limits["max_length"], limits.get("truncation_mode", "keep_start"))
        assert mmalign_rows(style, records, **limits) == expected
        compared += len(expected)
    assert compared >= 2  # not every record dropped


@pytest.mark.parametrize("max_length", [None, 9, 12])
@pytest.mark.parametrize("style", ["llama3", "mistral", "chatml"])
def test_sft_and_kto_rows_equal_trls(style, max_length):
    pytest.importorskip("trl", minversion="1.16")
    from datasets import Dataset
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference, KTOTrainer
    from trl.trainer.sft_trainer import SFTTrainer

    tok = STYLES[style]()
    compared = 0
    for fields in (STANDARD, CHAT, MORE[0], MORE[1]):
        sft = {"prompt": fields["prompt"], "completion": fields["chosen"]}
        kto = {**sft, "label": True}
        args = SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode="keep_start",
                               dataset_text_field="text", assistant_only_loss=False, per_device_train_batch_size=1,
                               shuffle_dataset=False)
        sft_self = SimpleNamespace(_tokenizer=tok, chat_template=None, completion_only_loss=True)
        ds = SFTTrainer._prepare_dataset(sft_self, Dataset.from_list([sft]), tok, args, False, None, "train")
        expected = [(e["input_ids"], [int(x != -100) for x in e["labels"]]) for e in ds]
        assert mmalign_rows(style, [sft], paired=False, max_length=max_length) == expected

        kto_self = SimpleNamespace(_tokenizer=tok, calculate_KL=False)
        ds = KTOTrainer._prepare_dataset(kto_self, Dataset.from_list([kto]), tok, args, "eval")
        collate = DataCollatorForUnpairedPreference(pad_token_id=tok.pad_token_id, max_length=max_length)
        expected = []
        for e in ds:
            batch = collate([{k: e[k] for k in ("prompt_ids", "completion_ids", "label")}])
            expected.append((batch["input_ids"][0].tolist(), batch["completion_mask"][0].tolist()))
        assert mmalign_rows(style, [kto], paired=False, max_length=max_length) == expected
        compared += len(expected)
    assert compared >= 2  # not every record dropped
