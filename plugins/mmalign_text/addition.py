"""Two-digit addition with an imperfect teacher: the task of ``mmalign demo rl`` (online RL with a
verifiable reward, in miniature).

A problem is ``aa+bb=`` (both operands padded to two digits); its answer is the sum's digits, then
EOS. The teacher writing the SFT demonstrations drops every carry in ``TEACHER_BIAS`` of its
examples: digit i of its answer is (a_i + b_i) mod 10, with no carry into the next digit and no
hundreds digit. The error is systematic (always on problems with a carry), so SFT learns it and
greedy decoding reproduces it, while sampling still finds the right answer often enough for an
exact-match verifier to teach the model the carry.

The 10,000 problems are split once (fixed permutation): ``HELD_OUT`` problems for evaluation, the
rest for SFT demonstrations and RL prompts, so the held-out accuracy is measured on unseen sums.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch

TEACHER_BIAS = 0.6   # share of demonstrations in which the teacher drops every carry
HELD_OUT = 500
SPLIT_SEED = 1234    # the held-out split does not move with the demo's seed
MAX_NEW_TOKENS = 4   # the longest answer (3 digits) + EOS

# eager attention: about 20% faster than SDPA on CPU for rows of 11 tokens
TINY_LLAMA = dict(model_type="llama", hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16,
                  tie_word_embeddings=True, attn_implementation="eager")

_PROMPT = re.compile(r"^\s*(\d\d)\+(\d\d)=\s*$")


def prompt_text(a: int, b: int) -> str:
    return f"{a:02d}+{b:02d}="


def parse_prompt(prompt: str) -> tuple[int, int]:
    match = _PROMPT.match(prompt)
    if match is None:
        raise ValueError(f"not an addition prompt 'aa+bb=': {prompt!r}")
    return int(match.group(1)), int(match.group(2))


def has_carry(a: int, b: int) -> bool:
    """True when column addition carries anywhere (into the tens or into the hundreds)."""
    return a % 10 + b % 10 >= 10 or a + b >= 100


def carry_free_sum(a: int, b: int) -> int:
    """The biased teacher's answer: sum_i ((a_i + b_i) mod 10) * 10^i, every carry dropped."""
    return (a % 10 + b % 10) % 10 + 10 * ((a // 10 + b // 10) % 10)


def split_problems() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(train, held_out): all 10,000 (a, b) in a fixed random order, the first ``HELD_OUT`` held out."""
    problems = [(a, b) for a in range(100) for b in range(100)]
    random.Random(SPLIT_SEED).shuffle(problems)
    return problems[HELD_OUT:], problems[:HELD_OUT]


def held_out_problems() -> list[tuple[int, int]]:
    return split_problems()[1]


def draw_problems(rng: random.Random, n: int) -> list[tuple[int, int]]:
    """``n`` training problems drawn uniformly (with replacement) from the non-held-out ones."""
    train = split_problems()[0]
    return [rng.choice(train) for _ in range(n)]


def teacher_answer(a: int, b: int, rng: random.Random, bias: float = TEACHER_BIAS) -> int:
    """The imperfect teacher: the carry-free sum with probability ``bias``, else the true sum."""
    return carry_free_sum(a, b) if rng.random() < bias else a + b


def sft_records(rng: random.Random, n: int, bias: float = TEACHER_BIAS) -> list[dict]:
    """Unpaired SFT records {"prompt", "completion"} written by the imperfect teacher (the text
    plugin appends EOS to each completion). Repeats are meant: train them with
    ``data.duplicates: keep`` (skipping them would even out the teacher's 60/40 bias per problem)."""
    return [{"prompt": prompt_text(a, b), "completion": str(teacher_answer(a, b, rng, bias))}
            for a, b in draw_problems(rng, n)]


def prompt_records(rng: random.Random, n: int) -> list[dict]:
    """``n`` distinct RL prompts {"prompt", "answer"} (training problems, drawn without
    replacement); the verifier receives ``answer`` as a keyword column."""
    return [{"prompt": prompt_text(a, b), "answer": str(a + b)} for a, b in rng.sample(split_problems()[0], n)]


def build_tokenizer(directory: str | Path):
    """A 15-token tokenizer built offline with ``tokenizers``: <pad> <bos> <eos>, the ten digits,
    '+' and '='. One token per character, BOS prepended (so prompt and prompt + completion tokenize
    alike), and decoding joins tokens with nothing between them ("52"). Saved with
    ``save_pretrained`` so that ``model.tokenizer: directory`` loads it. A character outside the
    vocabulary is an error (no unknown token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + list("0123456789") + ["+", "="])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.Punctuation()])
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                  eos_token="<eos>")
    tok.save_pretrained(directory)
    return tok


def addition_exact(prompts: list[str], responses: list[str], answer: list | None = None,
                   **columns) -> list[float]:
    """The verifier: 1.0 when the response is exactly the sum's digits, else 0.0.

    ``responses`` are the decoded completions of the text plugin's ``sample`` (EOS removed by
    ``skip_special_tokens``). A completion that ran out of tokens without EOS is still wrong: with
    ``max_new_tokens`` = 4 it then shows 4 characters, and no sum of two 2-digit numbers has more
    than 3. ``answer`` (the prompt records' column) gives the sums; without it they are computed
    from the prompts."""
    sums = [str(a) for a in answer] if answer is not None else [str(sum(parse_prompt(p))) for p in prompts]
    return [1.0 if "".join(r.split()) == s else 0.0 for r, s in zip(responses, sums)]


def addition_exact_scorer(**options):
    """Scorer factory for ``mmalign_register_scorers`` (no options)."""
    return addition_exact


@torch.no_grad()
def greedy_accuracy(model, tokenizer, problems: list[tuple[int, int]] | None = None,
                    batch_size: int = 500) -> dict:
    """Greedy decoding on the held-out problems (default: all ``HELD_OUT``). A completion is right
    when its ids are exactly the sum's digits then EOS. Returns accuracy overall, with and without
    a carry, the carry-free share (the teacher's bias reproduced) and the mean completion length
    in tokens (EOS included)."""
    from mmalign_text.sampling import generate_ids

    problems = held_out_problems() if problems is None else problems
    prompts = [tokenizer(prompt_text(a, b))["input_ids"] for a, b in problems]
    new = generate_ids(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS, seed=0,
                       batch_size=batch_size, greedy=True)

    def target(n: int) -> list[int]:
        return tokenizer(str(n), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    right = [ids == target(a + b) for ids, (a, b) in zip(new, problems)]
    biased = [ids == target(carry_free_sum(a, b)) and has_carry(a, b) for ids, (a, b) in zip(new, problems)]
    carry = [has_carry(a, b) for a, b in problems]

    def share(flags, where) -> float:
        picked = [f for f, w in zip(flags, where) if w]
        return sum(picked) / len(picked) if picked else float("nan")

    return {"accuracy": sum(right) / len(right),
            "accuracy_carry": share(right, carry),
            "accuracy_no_carry": share(right, [not c for c in carry]),
            "carry_dropped": share(biased, carry),
            "mean_length": sum(len(ids) for ids in new) / len(new),
            "problems": len(problems), "with_carry": sum(carry)}


def addition_accuracy(ctx) -> dict[str, float]:
    """Evaluator (``eval.evaluators: [addition_accuracy]``): :func:`greedy_accuracy` of the policy
    on the held-out problems; the run's eval records are not used (they only switch evaluation on)."""
    result = greedy_accuracy(ctx.policy, ctx.reward.tokenizer)
    return {k: float(v) for k, v in result.items()}
