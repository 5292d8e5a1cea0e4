"""`mmalign sweep`: the reward-KL frontier of the DPO paper (figure 2, left) on the text demo, every
method (offline, online with a learned reward model, PPO with the gold reward, Best-of-N)."""

import json
import math

import pytest

from mmalign.cli import main
from mmalign_text.sweep import METHODS


def dominated_by_dpo(point, dpo_points) -> bool:
    """Some DPO run reaches a higher gold reward at a KL no larger than the baseline's (25% + 0.1
    nats of slack, since KL is a sampled estimate)."""
    return any(d["kl"] <= 1.25 * point["kl"] + 0.1 and d["gold_reward"] > point["gold_reward"] for d in dpo_points)


@pytest.mark.slow
def test_quick_sweep_has_every_method_and_dpo_beats_the_offline_baselines(tmp_path):
    assert main(["sweep", "--out", str(tmp_path), "--quick"]) == 0
    frontier = json.loads((tmp_path / "frontier.json").read_text())
    runs = frontier["runs"]
    assert {r["method"] for r in runs} == set(METHODS) and (tmp_path / "frontier.png").exists()
    for r in runs:
        for key in ("gold_reward", "kl", "win_rate_vs_reference", "mean_length", "seconds"):
            assert math.isfinite(r[key]), (r["run"], key, r[key])
    bon = {r["n"]: r["kl"] for r in runs if r["method"] == "best_of_n"}
    assert bon == {n: pytest.approx(math.log(n) - (n - 1) / n) for n in (4, 16)}
    assert len([r for r in runs if r["method"] == "ppo_gt"]) == 2
    dpo = [r for r in runs if r["method"] == "dpo"]
    assert len(dpo) == 4
    for baseline in ("preferred_ft", "unlikelihood"):
        (point,) = [r for r in runs if r["method"] == baseline]
        assert dominated_by_dpo(point, dpo), (baseline, point, dpo)


def test_an_unknown_method_exits_2_before_any_work(tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path / "out"), "--methods", "dpo,ppo_gold"]) == 2
    assert "--methods" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
