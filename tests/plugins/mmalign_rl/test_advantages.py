"""Advantage estimators against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from mmalign.losses.spec import LossOptionError
from mmalign_rl.advantages import (dapo_keep_groups, gae, group_advantages, kl_in_reward,
                                   overlong_penalty, reinforce_pp_advantages, remax_advantages,
                                   rloo_advantages, whiten)


def assert_close_to(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_group_advantages_group_scale_uses_unbiased_std():
    # group [1, 2, 3]: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1; group [0, 0, 0]: all 0.
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert_close_to(group_advantages(rewards), [[-1 / 1.0001, 0.0, 1 / 1.0001], [0.0, 0.0, 0.0]])
    # [0, 1]: unbiased std sqrt(0.5) (the biased one would be 0.5), as TRL's nanstd.
    pair = group_advantages(torch.tensor([[0.0, 1.0]]))
    assert_close_to(pair, [[-0.5 / (math.sqrt(0.5) + 1e-4), 0.5 / (math.sqrt(0.5) + 1e-4)]])


def test_group_advantages_batch_scale_keeps_the_group_mean():
    # Centred by group: [[-1, 0, 1], [0, 0, 0]]. Batch std over the 6 rewards: mean 6 / 6 = 1,
    # squared deviations 0 + 1 + 4 + 1 + 1 + 1 = 8, unbiased variance 8 / 5 = 1.6.
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    std = math.sqrt(1.6) + 1e-4
    assert_close_to(group_advantages(rewards, scale="batch"), [[-1 / std, 0.0, 1 / std], [0.0, 0.0, 0.0]])


def test_group_advantages_none_is_dr_grpo_and_single_samples_get_zero():
    rewards = torch.tensor([[1.0, 2.0, 6.0]])
    assert_close_to(group_advantages(rewards, scale="none"), [[-2.0, -1.0, 3.0]])
    assert_close_to(group_advantages(torch.tensor([[5.0], [3.0]])), [[0.0], [0.0]])
    with pytest.raises(LossOptionError, match="scale_rewards"):
        group_advantages(rewards, scale="std")


def test_rloo_leaves_the_response_out_of_its_baseline():
    # 1 - (2 + 6) / 2 = -3; 2 - (1 + 6) / 2 = -1.5; 6 - (1 + 2) / 2 = 4.5
    assert_close_to(rloo_advantages(torch.tensor([[1.0, 2.0, 6.0]])), [[-3.0, -1.5, 4.5]])
    with pytest.raises(LossOptionError, match="at least 2"):
        rloo_advantages(torch.tensor([[1.0]]))


def test_remax_subtracts_the_greedy_reward():
    rewards = torch.tensor([[1.0, 3.0], [0.0, 2.0]])
    assert_close_to(remax_advantages(rewards, torch.tensor([2.0, 1.0])), [[-1.0, 1.0], [-1.0, 1.0]])


REWARDS = torch.tensor([[2.0, -1.0]])
KL = torch.tensor([[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]])
MASK = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]])


def test_kl_in_reward_puts_the_score_on_the_last_real_token():
    # beta 0.5: -0.05, -0.1, -0.15 + 2 | -0.2, -0.25 - 1, padding 0
    assert_close_to(kl_in_reward(REWARDS, KL, MASK, 0.5), [[[-0.05, -0.1, 1.85], [-0.2, -1.25, 0.0]]])
    assert_close_to(kl_in_reward(REWARDS, KL, MASK.bool(), 0.5), [[[-0.05, -0.1, 1.85], [-0.2, -1.25, 0.0]]])


def test_reinforce_pp_normalises_returns_over_the_batch_tokens():
    # Returns (suffix sums of the rewards above): 1.70, 1.75, 1.85 | -1.45, -1.25.
    # Mean 2.60 / 5 = 0.52; deviations 1.18, 1.23, 1.33, -1.97, -1.77; squares sum to
    # 1.3924 + 1.5129 + 1.7689 + 3.8809 + 3.1329 = 11.688; population variance 11.688 / 5 = 2.3376.
    expected = torch.tensor([[[1.18, 1.23, 1.33], [-1.97, -1.77, 0.0]]]) / math.sqrt(2.3376)
    assert_close_to(reinforce_pp_advantages(REWARDS, KL, MASK, beta=0.5), expected, atol=1e-5)


def test_gae_matches_the_hand_unrolled_recursion_with_padding():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards = torch.tensor([[[0.0, 0.5, 1.0, 7.0], [0.0, 0.0, 0.0, 1.0]]])
    values = torch.tensor([[[0.2, 0.4, 0.6, 9.0], [0.5, 0.5, 0.5, 0.5]]])
    mask = torch.tensor([[[1, 1, 1, 0], [1, 1, 1, 1]]])
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    # Response 1 (the 4th token is padding, V after the last real token is 0):
    # delta = 1.0 - 0.6 = 0.4; 0.5 + 0.9 * 0.6 - 0.4 = 0.64; 0 + 0.9 * 0.4 - 0.2 = 0.16
    # A_2 = 0.4; A_1 = 0.64 + 0.72 * 0.4 = 0.928; A_0 = 0.16 + 0.72 * 0.928 = 0.82816
    # Response 2: delta = 0.5, then 0 + 0.45 - 0.5 = -0.05 three times
    # A_3 = 0.5; A_2 = -0.05 + 0.36 = 0.31; A_1 = -0.05 + 0.2232 = 0.1732; A_0 = -0.05 + 0.124704
    assert_close_to(advantages, [[[0.82816, 0.928, 0.4, 0.0], [0.074704, 0.1732, 0.31, 0.5]]])
    assert_close_to(returns, [[[1.02816, 1.328, 1.0, 0.0], [0.574704, 0.6732, 0.81, 1.0]]])


def test_gae_with_gamma_lam_one_is_return_minus_value_on_2d_input():
    rewards, values = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.5, 0.5, 0.5]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert_close_to(advantages, [[5.5, 4.5, 2.5]])
    assert_close_to(returns, [[6.0, 5.0, 3.0]])


def test_whiten_uses_the_real_tokens_only():
    # Real tokens 1, 2, 3: mean 2, unbiased variance (1 + 0 + 1) / 2 = 1.
    x, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]])
    assert_close_to(whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]])
    assert_close_to(whiten(x, mask, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]])


def test_dapo_drops_groups_with_equal_rewards():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    assert dapo_keep_groups(rewards).tolist() == [False, True, False]


def test_overlong_penalty_ramps_down_over_the_cache():
    # max 20, cache 4: no penalty up to 16, then (16 - L) / 4, -1 beyond 20.
    lengths = torch.tensor([[10, 16, 17, 18], [20, 21, 40, 0]])
    assert_close_to(overlong_penalty(lengths, max_length=20, cache=4),
          [[0.0, 0.0, -0.25, -0.5], [-1.0, -1.0, -1.0, 0.0]])
    with pytest.raises(LossOptionError, match="overlong_cache"):
        overlong_penalty(lengths, max_length=20, cache=0)
