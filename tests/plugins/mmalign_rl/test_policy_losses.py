"""Policy losses, KL estimators and aggregations against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mmalign.losses.spec import LossOptionError
from mmalign_rl.policy_losses import (aggregate, clipped_surrogate, explained_variance, gspo_loss,
                                      kl_k1, kl_k2, kl_k3, sequence_ratio, value_loss)

LN2 = math.log(2.0)


def assert_close_to(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_kl_estimators_known_values():
    # pi = 0.5, pi_ref = 0.25: log-ratio ln 2; k3 with d = -ln 2: 1/2 + ln 2 - 1
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert_close_to(kl_k1(logp, ref), [LN2])
    assert_close_to(kl_k2(logp, ref), [0.5 * LN2 ** 2])
    assert_close_to(kl_k3(logp, ref), [LN2 - 0.5])
    assert_close_to(kl_k3(ref, logp), [1 - LN2])  # d = ln 2: 2 - ln 2 - 1
    same = torch.tensor([-0.3, -2.0])
    for estimator in (kl_k1, kl_k2, kl_k3):
        assert_close_to(estimator(same, same), [0.0, 0.0])


def test_kl_k3_is_never_negative():
    generator = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(200, generator=generator), torch.randn(200, generator=generator)
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k1(logp, ref) < 0).any()  # k1 is not: that is why k3 exists


def test_clipped_surrogate_clips_both_sides_with_decoupled_range():
    # eps_low 0.2, eps_high 0.28: ratios are clipped to [0.8, 1.28]
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 1.25, 3.0])
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0, 2.0, 1.0, 5.0]).view(1, 1, 7)
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 0]).view(1, 1, 7)
    loss, metrics = clipped_surrogate(ratios.log().view(1, 1, 7), torch.zeros(1, 1, 7), advantages,
                                      mask, eps_low=0.2, eps_high=0.28)
    # -min(1.5, 1.28) | -min(-1.5, -1.28) | -min(-0.5, -0.8) | -min(0.5, 0.8) | -2.2 |
    # -min(1.25, 1.25) (would be -1.2 with a symmetric 0.2) | padding
    assert_close_to(loss, [[[-1.28, 1.5, 0.8, -0.5, -2.2, -1.25, 0.0]]], atol=1e-5)
    assert_close_to(metrics["clip_high"], 1 / 6)  # token 1 only
    assert_close_to(metrics["clip_low"], 1 / 6)  # token 3 only


def test_clipped_surrogate_on_policy_gradient_is_minus_advantage():
    logp = torch.tensor([[[-1.0, -2.0], [-0.5, -0.7]]], requires_grad=True)
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    loss, metrics = clipped_surrogate(logp, logp.detach(), torch.tensor([[2.0, -1.0]]), mask)
    assert_close_to(loss.detach(), [[[-2.0, -2.0], [1.0, 0.0]]])
    loss.sum().backward()
    assert_close_to(logp.grad, [[[-2.0, -2.0], [1.0, 0.0]]])
    assert_close_to(metrics["clip_low"], 0.0)


SEQ_MASK = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]])


def test_sequence_ratio_is_the_geometric_mean_of_token_ratios():
    log_ratio = torch.tensor([[[0.2, 0.4, 5.0], [0.1, 0.1, 0.1]]])  # 5.0 is padding
    assert_close_to(sequence_ratio(log_ratio, torch.zeros(1, 2, 3), SEQ_MASK), [[math.exp(0.3), math.exp(0.1)]])


def test_gspo_clips_the_sequence_ratio_and_spreads_the_gradient():
    old = torch.zeros(1, 2, 3)
    logp = torch.tensor([[[0.2, 0.4, 5.0], [0.1, 0.1, 0.1]]], requires_grad=True)
    loss, metrics = gspo_loss(logp, old, torch.tensor([[1.0, -1.0]]), SEQ_MASK)
    # s_1 = e^0.3 > 1 + 4e-4 with A = 1: clipped to -1.0004; s_2 = e^0.1 with A = -1: -min(-e^0.1,
    # -1.0004) = e^0.1, not clipped. Each value sits on every real token of its response.
    s2 = math.exp(0.1)
    assert_close_to(loss.detach(), [[[-1.0004, -1.0004, 0.0], [s2, s2, s2]]], atol=1e-5)
    assert_close_to(metrics["clip_high"], 2 / 5)
    per_context = aggregate(loss, SEQ_MASK, "sequence_mean")
    assert_close_to(per_context.detach(), [(-1.0004 + s2) / 2], atol=1e-5)
    per_context.sum().backward()
    # d/dlogp_t of 1/2 * (-A s_2) = 1/2 * s_2 / 3 on each token of response 2; clipped response: 0
    assert_close_to(logp.grad, [[[0.0, 0.0, 0.0], [s2 / 6, s2 / 6, s2 / 6]]])


def test_gspo_token_gives_each_token_its_own_advantage_gradient():
    logp = torch.tensor([[[0.1, 0.1, 0.1]]], requires_grad=True)
    advantages = torch.tensor([[[-1.0, -2.0, -3.0]]])
    loss, _ = gspo_loss(logp, torch.zeros(1, 1, 3), advantages, torch.ones(1, 1, 3), token_level=True)
    s = math.exp(0.1)  # the value is the sequence ratio on every token
    assert_close_to(loss.detach(), [[[s, 2 * s, 3 * s]]])
    loss.sum().backward()
    assert_close_to(logp.grad, [[[s, 2 * s, 3 * s]]])  # -A_t * s_t, token by token


PER_TOKEN = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]],
                          [[2.0, 2.0, 9.0], [1.0, 1.0, 1.0]]])  # 9.0 is padding
AGG_MASK = torch.tensor([[[1, 1, 1], [1, 0, 0]],
                         [[1, 1, 0], [1, 1, 1]]])


def test_aggregate_sequence_mean_is_grpo():
    # sequence means 2, 4 | 2, 1 -> per context 3, 1.5; their mean 2.25 = mean of the 4 sequences
    per_context = aggregate(PER_TOKEN, AGG_MASK, "sequence_mean")
    assert_close_to(per_context, [3.0, 1.5])
    assert_close_to(per_context.mean(), 9 / 4)


def test_aggregate_token_mean_is_dapo():
    # 9 real tokens summing to 10 + 7 = 17: loss_c = C * sum_c / 9, mean over C = 17 / 9
    per_context = aggregate(PER_TOKEN, AGG_MASK, "token_mean")
    assert_close_to(per_context, [2 * 10 / 9, 2 * 7 / 9])
    assert_close_to(per_context.mean(), 17 / 9)


def test_aggregate_constant_norm_is_dr_grpo():
    # G * max_length = 2 * 5: 10 / 10, 7 / 10; mean 17 / (C * G * 5) = 0.85
    per_context = aggregate(PER_TOKEN, AGG_MASK.bool(), "constant_norm", max_length=5)
    assert_close_to(per_context, [1.0, 0.7])
    assert_close_to(per_context.mean(), 17 / 20)
    with pytest.raises(LossOptionError, match="max_new_tokens"):
        aggregate(PER_TOKEN, AGG_MASK, "constant_norm")
    with pytest.raises(LossOptionError, match="loss_aggregation"):
        aggregate(PER_TOKEN, AGG_MASK, "mean")


def test_value_loss_takes_the_larger_error_of_the_clipped_value():
    values = torch.tensor([[1.0, 2.0, 0.0, 3.0, 8.0]])
    old_values = torch.tensor([[0.5, 2.0, 0.5, 2.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clip_fraction = value_loss(values, old_values, returns, mask, clip=0.2)
    # V_clip = 0.7, 2.0, 0.3, 2.2; errors max(1, 1.69) = 1.69, max(1, 1) = 1, max(0, 0.09) = 0.09,
    # max(9, 4.84) = 9 -> 0.5 * (1.69 + 1 + 0.09 + 9) / 4; the clipped term is larger on 2 of 4
    assert_close_to(loss, 0.5 * 11.78 / 4, atol=1e-5)
    assert_close_to(clip_fraction, 0.5)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert_close_to(explained_variance(returns, returns, mask), 1.0)
    assert_close_to(explained_variance(torch.full_like(returns, 2.5), returns, mask), 0.0)
    # residual [0, 0, 0, -1]: mean -0.25, variance (3 * 0.0625 + 0.5625) / 4 = 0.1875; Var[R] = 1.25
    values = torch.tensor([[1.0, 2.0, 3.0, 5.0, 0.0]])
    assert_close_to(explained_variance(values, returns, mask), 1 - 0.1875 / 1.25)
    assert torch.isnan(explained_variance(values, torch.ones_like(returns), mask))
