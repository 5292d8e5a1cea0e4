"""The task of ``mmalign demo rl``: problems, the biased teacher, the tokenizer, the exact-match
verifier and greedy held-out accuracy (mmalign_text.addition)."""

import random

import pytest
import torch

from mmalign_text import addition


def test_split_is_fixed_and_held_out_problems_are_unseen():
    train, held_out = addition.split_problems()
    assert len(held_out) == addition.HELD_OUT and len(train) + len(held_out) == 10_000
    assert held_out == addition.held_out_problems()
    assert not set(held_out) & set(addition.draw_problems(random.Random(0), 5000))
    assert not set(held_out) & {addition.parse_prompt(r["prompt"]) for r in addition.prompt_records(random.Random(0), 3000)}


def test_prompts_and_carries():
    assert addition.prompt_text(5, 7) == "05+07="
    assert addition.parse_prompt("05+07=") == (5, 7)
    with pytest.raises(ValueError):
        addition.parse_prompt("5+7=")
    assert addition.has_carry(5, 7) and addition.has_carry(50, 70) and not addition.has_carry(12, 34)
    assert addition.carry_free_sum(58, 67) == 15  # 8+7 -> 5, 5+6 -> 1, no hundreds
    assert addition.carry_free_sum(12, 34) == 46


def test_teacher_drops_the_carry_in_its_share_of_examples():
    records = addition.sft_records(random.Random(0), 20_000)
    sums = [(addition.parse_prompt(r["prompt"]), r["completion"]) for r in records]
    carry = [(a, b, c) for (a, b), c in sums if addition.has_carry(a, b)]
    wrong = [c != str(a + b) for a, b, c in carry]
    assert abs(sum(wrong) / len(carry) - addition.TEACHER_BIAS) < 0.02
    assert all(c == str(addition.carry_free_sum(a, b)) for (a, b, c), w in zip(carry, wrong) if w)
    assert all(c == str(a + b) for (a, b), c in sums if not addition.has_carry(a, b))


def test_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    addition.build_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) == 15
    ids = tok("58+67=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 7
    assert tok("58+67=125")["input_ids"][:7] == ids  # prompt + completion starts with the prompt
    assert tok.decode(ids, skip_special_tokens=True) == "58+67="
    assert tok.decode(tok("125", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                      skip_special_tokens=True) == "125"


def test_scorer_is_an_exact_match():
    prompts = ["58+67=", "58+67=", "58+67=", "58+67=", "12+34="]
    responses = ["125", "15", "1255", " 125 ", "46"]
    assert addition.addition_exact(prompts, responses, answer=["125"] * 4 + ["46"]) == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert addition.addition_exact(prompts, responses) == [1.0, 0.0, 0.0, 1.0, 1.0]  # sums from prompts
    # missing EOS: max_new_tokens = 4 digits with no EOS decode to 4 characters, never a sum
    assert addition.addition_exact(["58+67="], ["1250"]) == [0.0]


def test_scorer_is_registered():
    from mmalign.plugins import registry

    scorer = registry(refresh=True).get("scorers", "addition_exact")()
    assert scorer(["01+02="], ["3"], answer=["3"]) == [1.0]


def test_greedy_accuracy_on_a_tiny_model(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = addition.build_tokenizer(tmp_path)
    kwargs = dict(addition.TINY_LLAMA, hidden_size=16, intermediate_size=32, vocab_size=len(tok),
                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs))
    problems = [(58, 67), (12, 34), (3, 4)]
    result = addition.greedy_accuracy(model, tok, problems)
    assert result["problems"] == 3 and result["with_carry"] == 1
    assert 0.0 <= result["accuracy"] <= 1.0 and 1.0 <= result["mean_length"] <= addition.MAX_NEW_TOKENS
    # a model that always answers "46" then EOS: right on 12+34 only
    answer = tok("46", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def parameters(self, recurse=True):
            return model.parameters(recurse)

        def generate(self, input_ids, max_new_tokens, **kwargs):
            tail = torch.tensor(answer + [tok.pad_token_id] * (max_new_tokens - len(answer)))
            return torch.cat([input_ids, tail.expand(len(input_ids), -1)], dim=1)

    fixed = addition.greedy_accuracy(Fixed(), tok, problems)
    assert fixed["accuracy"] == pytest.approx(1 / 3)
    assert fixed["accuracy_no_carry"] == pytest.approx(0.5) and fixed["accuracy_carry"] == 0.0
    assert fixed["mean_length"] == 3.0
