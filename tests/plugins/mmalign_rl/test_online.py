"""Online training end to end on the text plugin: each algorithm raises a reward within a few
steps, the source's metrics are logged, and a resumed run continues exactly."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from conftest import DEMO_DATA, TINY

import mmalign
from mmalign.errors import ConfigError
from mmalign.hookspecs import hookimpl
from mmalign_rl.source import response_metrics


def shorter_is_better(prompts, responses, **columns):
    """A reward any policy can learn quickly: fewer words (EOS sooner)."""
    return [-len(r.split()) / 8 for r in responses]


def sees_columns(prompts, responses, *, answer):
    """Scorers receive the record's other fields as keyword columns, one per response."""
    return [float(a == "yes") for a in answer]


class Scorers:
    @hookimpl
    def mmalign_register_scorers(self, register):
        register("shorter", lambda: shorter_is_better)
        register("sees_answer", lambda: sees_columns)


@pytest.fixture(autouse=True)
def scorers():
    with mmalign.register(Scorers(), name="test-scorers"):
        yield


def config(tmp_path, algorithm="grpo", steps=4, scorers=None, **options):
    return {
        "output_dir": str(tmp_path / "run"),
        "model": {"reward": "text", "tokenizer": str(DEMO_DATA / "tokenizer"), "tiny": dict(TINY)},
        "data": {"train": str(DEMO_DATA / "train.jsonl"), "max_length": 32},
        "algorithm": {"name": algorithm, "options": {"samples_per_prompt": 8, "max_new_tokens": 8,
                                                     "scorers": scorers or {"shorter": 1.0}, **options}},
        "loss": {"beta": 0.04},
        "train": {"max_steps": steps, "batch_size": 4, "lr": 3e-2, "lr_scheduler": "constant", "log_every": 1,
                  "progress": False,
                  "callbacks": [], "save_every": 2},
        "eval": {"evaluators": []},
    }


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "dr_grpo", "dapo", "gspo", "rloo", "remax", "reinforce_pp"])
def test_each_algorithm_raises_the_reward(tmp_path, algorithm):
    result = mmalign.train(config(tmp_path, algorithm, steps=20), log=lambda *a: None)
    rewards = [row["rewards/mean"] for row in result.history]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.3, rewards


def test_an_online_step_logs_what_online_users_read(tmp_path):
    row = mmalign.train(config(tmp_path, steps=1), log=lambda *a: None).history[-1]
    for key in ("loss", "kl", "clip_low", "clip_high", "rewards/mean", "rewards/std", "rewards/shorter",
                "advantages/abs_mean", "completions/mean_length", "completions/max_length",
                "completions/truncated", "entropy", "time/generate", "time/score", "grad_norm"):
        assert key in row, key
    assert row["records_seen"] == 4  # prompts
    assert row["epoch"] == 4 / 512
    assert row["time/samples_per_s"] * row["time/step"] == pytest.approx(4 * 8)  # prompts x samples_per_prompt
    assert row["time/tokens_per_s"] > row["time/samples_per_s"]  # every sample holds a few tokens
    assert row["time/generate"] + row["time/score"] <= row["time/data"] <= row["time/step"]  # the rollout
    assert 0 < row["entropy"] <= math.log(134)  # nats per sampled token; the demo tokenizer has 134 tokens


def test_entropy_is_the_mean_over_sampled_tokens_not_over_responses():
    samples = SimpleNamespace(trajectory={"completion_ids": [[[5, 2], [5, 6, 7, 2]]], "finished": [[True, True]],
                                          "entropy_sums": [[1.0, 5.0]]})
    metrics = response_metrics(samples, max_new_tokens=8)
    assert metrics["entropy"].item() == pytest.approx(6.0 / 6)  # (1 + 5) / (2 + 4) tokens, not (0.5 + 1.25) / 2
    del samples.trajectory["entropy_sums"]  # a sampler that records none (generation: hf): no key
    assert "entropy" not in response_metrics(samples, max_new_tokens=8)


def test_scorers_get_the_records_other_fields(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p {i}", "answer": "yes" if i % 2 else "no"}) + "\n"
                            for i in range(8)))
    cfg = config(tmp_path, steps=1, scorers={"sees_answer": 1.0})
    cfg["data"]["train"] = str(data)
    row = mmalign.train(cfg, log=lambda *a: None).history[-1]
    assert row["rewards/sees_answer"] in (0.25, 0.5, 0.75)  # the answers of this step's 4 prompts


def assert_resume_continues_exactly(tmp_path, make_config):
    """4 steps straight against 2 steps, stopped, then resumed to 4: the same metrics (wall-clock
    time/* keys aside)."""
    straight = mmalign.train(make_config(tmp_path / "a"), log=lambda *a: None)
    cfg = make_config(tmp_path / "b")
    cfg["train"]["max_steps"] = 2
    mmalign.train(cfg, log=lambda *a: None)
    cfg["train"]["max_steps"] = 4
    resumed = mmalign.train(cfg, resume=True, log=lambda *a: None)

    def untimed(history):
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in history]

    assert untimed(resumed.history) == untimed(straight.history)


def test_a_resumed_online_run_continues_exactly(tmp_path):
    assert_resume_continues_exactly(tmp_path, config)


def test_bad_algorithm_options_are_refused_before_anything_loads(tmp_path):
    cfg = config(tmp_path, samples_per_prompt=1)
    with pytest.raises(ConfigError, match="algorithm.options.samples_per_prompt"):
        mmalign.train(cfg, log=lambda *a: None)
    cfg = config(tmp_path, temperature="hot")
    with pytest.raises(ConfigError, match="algorithm.options.temperature"):
        mmalign.train(cfg, log=lambda *a: None)
    cfg = config(tmp_path, scorers={"nope": 1.0})
    with pytest.raises(mmalign.errors.RegistryError, match="Unknown scorer 'nope'"):
        mmalign.train(cfg, log=lambda *a: None)
    assert not (tmp_path / "run").exists()


def test_loss_keys_an_online_algorithm_would_ignore_are_refused(tmp_path):
    cfg = config(tmp_path)
    cfg["loss"]["name"] = "ipo"  # grpo trains its own loss: naming another must not pass silently
    with pytest.raises(ConfigError, match="loss.name.*only loss.beta applies"):
        mmalign.train(cfg, log=lambda *a: None)
    assert not (tmp_path / "run").exists()
