"""ReMax and REINFORCE++ on the text plugin: ReMax's baseline is the greedy response's reward, and
REINFORCE++'s advantages are token-level with the reference scored once, by the source."""

from __future__ import annotations

import pytest
import torch
from conftest import DEMO_DATA, TINY

import mmalign
from mmalign.hookspecs import hookimpl
from mmalign_reference.strategies import FrozenCopy
from mmalign_rl.source import OnlineSource

CALLS: list[tuple[list, list]] = []  # (responses, rewards) of each call of the recording scorer


def recording_scorer(prompts, responses, **columns):
    rewards = [-len(r.split()) / 8 for r in responses]
    CALLS.append((list(responses), rewards))
    return rewards


class Scorers:
    @hookimpl
    def mmalign_register_scorers(self, register):
        register("recorded", lambda: recording_scorer)


@pytest.fixture(autouse=True)
def scorers():
    CALLS.clear()
    with mmalign.register(Scorers(), name="test-reinforce-scorers"):
        yield


@pytest.fixture
def batches(monkeypatch):
    """Every Batch the online source hands the engine."""
    seen = []
    original = OnlineSource.next_batch

    def recording(self, plugin, device):
        seen.append(original(self, plugin, device))
        return seen[-1]

    monkeypatch.setattr(OnlineSource, "next_batch", recording)
    return seen


def config(tmp_path, algorithm, **options):
    return {
        "output_dir": str(tmp_path / "run"),
        "model": {"reward": "text", "tokenizer": str(DEMO_DATA / "tokenizer"), "tiny": dict(TINY)},
        "data": {"train": str(DEMO_DATA / "train.jsonl"), "max_length": 32},
        "algorithm": {"name": algorithm, "options": {"samples_per_prompt": 3, "max_new_tokens": 8,
                                                     "scorers": {"recorded": 1.0}, **options}},
        "loss": {"beta": 0.04},
        "train": {"max_steps": 1, "batch_size": 4, "lr": 3e-2, "log_every": 1, "progress": False,
                  "callbacks": [], "save_every": 0},
        "eval": {"evaluators": []},
    }


def test_remax_baseline_is_the_greedy_responses_reward(tmp_path, batches):
    row = mmalign.train(config(tmp_path, "remax"), log=lambda *a: None).history[-1]
    (sampled, sampled_rewards), (greedy, greedy_rewards) = CALLS  # one call each, same scorer
    assert len(sampled) == 4 * 3 and len(greedy) == 4
    values = batches[0].values
    expected = torch.tensor(sampled_rewards).view(4, 3) - torch.tensor(greedy_rewards)[:, None]
    assert torch.allclose(values["advantages"].cpu(), expected)
    assert torch.allclose(values["greedy_rewards"].cpu(), torch.tensor(greedy_rewards))
    assert row["rewards/greedy"] == pytest.approx(sum(greedy_rewards) / 4)


def test_greedy_decoding_through_the_protocol_ignores_the_generator():
    from mmalign.config import load_config
    from mmalign_text.reward import TextReward

    cfg = load_config(data={"model": {"tiny": dict(TINY), "tokenizer": str(DEMO_DATA / "tokenizer")},
                            "data": {"max_length": 32}})
    torch.manual_seed(0)
    plugin = TextReward(cfg.model, cfg.data)
    model = plugin.load_policy()
    contexts = [{"prompt": "The movie was"}, {"prompt": "I think"}]
    first = plugin.sample(model, contexts, 2, torch.Generator().manual_seed(1), max_new_tokens=6, temperature=0)
    second = plugin.sample(model, contexts, 1, torch.Generator().manual_seed(2), max_new_tokens=6, temperature=0)
    assert [g[0] for g in first.responses] == [g[1] for g in first.responses] == [g[0] for g in second.responses]


def test_reinforce_pp_advantages_are_token_level_and_the_engine_skips_the_reference(tmp_path, batches,
                                                                                    monkeypatch):
    calls = []
    original = FrozenCopy.scores
    monkeypatch.setattr(FrozenCopy, "scores", lambda self, batch, per_unit=False:
                        calls.append(per_unit) or original(self, batch, per_unit))
    row = mmalign.train(config(tmp_path, "reinforce_pp"), log=lambda *a: None).history[-1]
    assert calls == [True]  # the source's pass only: none in the engine's micro-step
    values = batches[0].values
    advantages = values["advantages"]
    assert advantages.dim() == 3 and advantages.shape[:2] == (4, 3)
    mask = (advantages != 0)
    lengths = mask.sum(-1)
    assert (lengths >= 1).all() and advantages.shape[2] == int(lengths.max())  # U as the plugin's unit_mask
    real = advantages[mask]
    assert real.mean().abs() < 1e-4 and (real.var(unbiased=False) - 1).abs() < 1e-3  # batch-normalised
    assert "kl" in row and "clip_low" in row
