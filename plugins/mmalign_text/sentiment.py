"""A synthetic review language for the offline text demo (DPO paper, section 6.1, in miniature).

Reviews are word sequences: a few sentiment words (5 positive, 5 negative) among neutral filler.
Each review has a hidden sentiment p ~ Beta(0.3, 0.3) (mostly clearly positive or clearly negative),
shared by its prompt and its continuation, so a model trained on reviews continues a prompt in the
prompt's sentiment. The gold reward of a continuation is #positive - #negative words.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["great", "wonderful", "superb", "delightful", "brilliant"]
NEGATIVE = ["awful", "boring", "dreadful", "terrible", "dull"]
_SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sa", "vo", "pel", "di", "na", "ro", "zu"]
NEUTRAL = sorted({a + b for a in _SYLLABLES for b in _SYLLABLES})[:120]
PROMPT_WORDS = 5
COMPLETION_WORDS = 14
SENTIMENT_RATE = 0.3  # share of sentiment words in a review


def gold_reward(text: str) -> float:
    words = text.split()
    return float(sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words))


def _word(rng: random.Random, p: float) -> str:
    if rng.random() < SENTIMENT_RATE:
        return rng.choice(POSITIVE if rng.random() < p else NEGATIVE)
    # Zipf-like neutral words, so the language has some structure beyond sentiment.
    return NEUTRAL[min(int(rng.paretovariate(1.2)) - 1, len(NEUTRAL) - 1)]


def review(rng: random.Random) -> tuple[str, str]:
    p = rng.betavariate(0.3, 0.3)
    words = [_word(rng, p) for _ in range(PROMPT_WORDS + COMPLETION_WORDS)]
    # the completion starts with its space: records join prompt + completion as they are (TRL)
    return " ".join(words[:PROMPT_WORDS]), " " + " ".join(words[PROMPT_WORDS:])


def prompts(rng: random.Random, n: int) -> list[str]:
    return [review(rng)[0] for _ in range(n)]


def build_tokenizer(directory: str | Path):
    """A word-level tokenizer over the language, built offline with `tokenizers`, saved so that
    ``AutoTokenizer.from_pretrained(directory)`` loads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + POSITIVE + NEGATIVE + NEUTRAL)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                  eos_token="<eos>", unk_token="<unk>")
    tok.save_pretrained(directory)
    return tok


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_shipped_demo_data(directory: str | Path, n_train: int = 512, n_eval: int = 128,
                            seed: int = 1) -> None:
    """The small data set shipped in configs/demo/data/text: a tokenizer and preference pairs
    whose chosen review continuation has the higher gold reward (ties dropped)."""
    rng = random.Random(seed)
    directory = Path(directory)
    build_tokenizer(directory / "tokenizer")
    rows = []
    while len(rows) < n_train + n_eval:
        prompt, a = review(rng)
        b = "".join(" " + _word(rng, rng.betavariate(0.3, 0.3)) for _ in range(COMPLETION_WORDS))
        if gold_reward(a) == gold_reward(b):
            continue
        chosen, rejected = (a, b) if gold_reward(a) > gold_reward(b) else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    write_jsonl(directory / "train.jsonl", rows[:n_train])
    write_jsonl(directory / "eval.jsonl", rows[n_train:])


if __name__ == "__main__":
    import sys

    write_shipped_demo_data(sys.argv[1] if len(sys.argv) > 1 else "configs/demo/data/text")
