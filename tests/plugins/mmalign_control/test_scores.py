"""The control plugin's score of a segment, sum_t log pi(a_t | s_t), against a direct computation
with torch.distributions (the tanh change of variables included), to 1e-5."""

import pytest
import torch
from torch.distributions import AffineTransform, Categorical, Normal, TanhTransform, TransformedDistribution

from mmalign.data import Record
from mmalign_control.policy import gaussian_head

from control_helpers import pair_record, plugin, segment

BOX = {"obs_dim": 4, "action_dim": 2, "action_low": [-1.0, 0.0], "action_high": [3.0, 0.5], "hidden": [8]}


def direct_log_probs(policy, config, observations, actions):
    """log pi(a | s) per step, by torch.distributions: u ~ N(mu, sigma), a = loc + scale tanh(u)."""
    mean, log_std = gaussian_head(config, policy(observations))
    low, high = torch.tensor(config.action_low), torch.tensor(config.action_high)
    dist = TransformedDistribution(Normal(mean.double(), log_std.exp().double()),
                                   [TanhTransform(), AffineTransform((high + low).double() / 2, (high - low).double() / 2)])
    return dist.log_prob(actions.double()).sum(-1)


def test_continuous_score_is_the_tanh_gaussian_log_likelihood():
    reward = plugin(BOX)
    torch.manual_seed(0)
    policy = reward.load_policy()
    records = [Record({"chosen": segment(n, 4, 2, seed=n), "rejected": segment(m, 4, 2, seed=10 + n)}, f"f:{n}", None)
               for n, m in ((6, 2), (3, 7))]
    # actions inside the box: dimension 0 in [-1, 3], dimension 1 in [0, 0.5]
    for r in records:
        for s in (r.fields["chosen"], r.fields["rejected"]):
            s["actions"] = [[a[0] + 1.0, abs(a[1]) % 0.5] for a in s["actions"]]
    examples = [reward.prepare(r, paired=True) for r in records]
    batch = reward.collate(examples, torch.Generator())
    scores = reward.score(policy, batch, per_unit=True)
    for c, example in enumerate(examples):
        for j, seg in enumerate(example):
            expected = direct_log_probs(policy, reward.policy_config, seg.observations, seg.actions)
            n = seg.observations.shape[0]
            assert scores.sums[c, j].item() == pytest.approx(expected.sum().item(), abs=1e-5)
            assert torch.allclose(scores.unit_scores[c, j, :n].double(), expected, atol=1e-5)
            assert scores.units[c, j].item() == n and scores.unit_mask[c, j].sum().item() == n
            assert torch.all(scores.unit_scores[c, j, n:] == 0)  # padding scores nothing
    assert torch.allclose(scores.unit_scores.sum(-1), scores.sums)


def test_discrete_score_is_the_categorical_log_likelihood():
    config = {"obs_dim": 3, "action_dim": 4, "discrete": True, "hidden": [8, 8]}
    reward = plugin(config)
    torch.manual_seed(1)
    policy = reward.load_policy()
    record = Record({"chosen": segment(5, 3, 4, seed=3, discrete=True), "rejected": segment(2, 3, 4, seed=4, discrete=True)},
                    "f:1", None)
    example = reward.prepare(record, paired=True)
    scores = reward.score(policy, reward.collate([example], torch.Generator()))
    for j, seg in enumerate(example):
        expected = Categorical(logits=policy(seg.observations)).log_prob(seg.actions).sum()
        assert scores.sums[0, j].item() == pytest.approx(expected.item(), abs=1e-5)


def test_score_is_deterministic_and_differentiable():
    reward = plugin()
    policy = reward.load_policy()
    batch = reward.collate([reward.prepare(pair_record(), paired=True)], torch.Generator())
    first, second = reward.score(policy, batch), reward.score(policy, batch)
    assert torch.equal(first.sums, second.sums) and first.sums.shape == (1, 2)
    first.sums.sum().backward()
    assert all(p.grad is not None for p in policy.parameters())


def test_actions_on_the_bound_are_clipped_before_atanh():
    reward = plugin(options={"action_clip": 0.9})
    record = pair_record()
    record.fields["chosen"]["actions"][0] = [2.0]
    record.fields["rejected"]["actions"][0] = [-2.0]
    chosen, rejected = reward.prepare(record, paired=True)
    assert chosen.actions[0].item() == pytest.approx(1.8) and rejected.actions[0].item() == pytest.approx(-1.8)
    scores = reward.score(reward.load_policy(), reward.collate([[chosen, rejected]], torch.Generator()))
    assert torch.isfinite(scores.sums).all()


def test_single_segments_score_as_one_response():
    reward = plugin()
    example = reward.prepare(pair_record(), paired=False)
    scores = reward.score(reward.load_policy(), reward.collate([example], torch.Generator()))
    assert scores.sums.shape == (1, 1) and scores.units[0, 0].item() == 5
