"""Several updates per rollout: ``rollout_steps`` steps' worth of prompts sampled at once, each
rollout trained ``epochs`` times with the sampling policy's log-probs as the ratio's denominator;
checkpoints fall between rollouts, so a resumed run continues exactly."""

from __future__ import annotations

import pytest
from test_online import config  # noqa: F401  (its autouse fixture registers the test scorers)
from test_online import scorers  # noqa: F401

import mmalign

def without_time(history):
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in history]


def test_an_epoch_replays_the_rollout_it_sampled(tmp_path):
    history = mmalign.train(config(tmp_path, steps=2, epochs=2), log=lambda *a: None).history
    first, second = history
    assert first["records_seen"] == second["records_seen"] == 4  # no new prompts for the second pass
    assert first["rewards/mean"] == second["rewards/mean"]  # the same samples
    assert first["clip_low"] == first["clip_high"] == 0  # ratio 1: the policy that sampled
    assert "time/generate" in first and "time/generate" not in second  # sampled once


def test_a_rollout_spans_rollout_steps_optimizer_steps(tmp_path):
    history = mmalign.train(config(tmp_path, steps=4, rollout_steps=2), log=lambda *a: None).history
    assert [row["records_seen"] for row in history] == [8, 8, 16, 16]
    assert history[0]["rewards/mean"] != history[1]["rewards/mean"]  # different prompts


@pytest.mark.slow
def test_a_resumed_multi_epoch_run_continues_exactly(tmp_path):
    straight = mmalign.train(config(tmp_path / "a", epochs=2), log=lambda *a: None)
    cfg = config(tmp_path / "b", epochs=2)
    cfg["train"]["max_steps"] = 2
    mmalign.train(cfg, log=lambda *a: None)
    cfg["train"]["max_steps"] = 4
    resumed = mmalign.train(cfg, resume=True, log=lambda *a: None)
    assert without_time(resumed.history) == without_time(straight.history)


@pytest.mark.parametrize("algorithm,keeps", [("grpo", True), ("online_dpo", False)])
def test_old_log_probs_are_kept_only_for_a_loss_that_takes_the_ratio(tmp_path, monkeypatch, algorithm, keeps):
    """A rollout trained twice keeps the sampling policy's per-unit log-probs for GRPO's ratio;
    online DPO's pair loss takes no ratio, so it is spared that extra scoring pass."""
    from mmalign_rl import source

    calls = []
    original = source.Rollout.policy_scores
    monkeypatch.setattr(source.Rollout, "policy_scores", lambda self: calls.append(1) or original(self))
    options = {"samples_per_prompt": 2} if algorithm == "online_dpo" else {}
    mmalign.train(config(tmp_path, algorithm, steps=2, epochs=2, **options), log=lambda *a: None)
    assert bool(calls) == keeps
