"""Held-out evaluation of an online run: ``online_rewards`` answers data.eval's prompts with the
policy and scores the answers with the run's reward functions."""

from __future__ import annotations

import json
import math

import pytest
from test_online import config  # noqa: F401
from test_online import scorers  # noqa: F401  (autouse: registers the test scorers)

import mmalign
from mmalign.errors import ConfigError, DataError


def with_eval(tmp_path, **eval_options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"prompt": f"kaka lo {i}"}) + "\n" for i in range(6)))
    cfg = config(tmp_path, steps=2)
    cfg["data"]["eval"] = str(held_out)
    cfg["train"]["eval_every"] = 1
    cfg["eval"] = {"evaluators": ["online_rewards"], "batch_size": 4,
                   "options": {"online_rewards": eval_options} if eval_options else {}}
    return cfg


def test_an_online_run_is_evaluated_on_held_out_prompts(tmp_path):
    history = mmalign.train(with_eval(tmp_path, temperature=0.0), log=lambda *a: None).history
    for row in history:
        for key in ("eval/rewards/mean", "eval/rewards/shorter", "eval/kl", "eval/completions/mean_length"):
            assert key in row, key
        # the scorer: minus words / 8 of the greedy answers, at most max_new_tokens = 8 words
        assert -1.0 <= row["eval/rewards/shorter"] <= 0 and row["eval/rewards/mean"] == row["eval/rewards/shorter"]
    assert all(math.isfinite(row["eval/kl"]) for row in history)


def test_every_evaluation_draws_the_same_noise(tmp_path):
    """Sampled at temperature 1 with the run's seed: a policy that did not move scores the same."""
    cfg = with_eval(tmp_path)
    cfg["train"]["lr"] = 1e-12
    history = mmalign.train(cfg, log=lambda *a: None).history
    assert history[0]["eval/rewards/mean"] == history[1]["eval/rewards/mean"]
    assert history[0]["eval/kl"] == pytest.approx(0.0, abs=1e-4)


def test_bad_online_eval_input_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="eval.options.online_rewards.beam"):
        mmalign.train(with_eval(tmp_path / "a", beam=4), log=lambda *a: None)
    cfg = with_eval(tmp_path / "b")
    (tmp_path / "b" / "held_out.jsonl").write_text(json.dumps({"question": "no prompt"}) + "\n")
    with pytest.raises(DataError, match="data.eval"):
        mmalign.train(cfg, log=lambda *a: None)
