"""The CPL loss (Hejna et al. 2023) against hand-computed values, its option range and the engine's
reference-free path."""

import math

import pytest
import torch

from mmalign.losses.objective import preference_loss
from mmalign.losses.spec import LossOptionError
from mmalign.plugins import registry
from mmalign.scores import Scores
from mmalign_losses import cpl, cpo

T = torch.tensor


def test_cpl_hand_computed():
    # alpha = 0.5, lambda = 0.5: -log sigmoid(0.5 * -4 - 0.5 * 0.5 * -10) = -log sigmoid(0.5) = log(1 + e^-0.5)
    out = cpl(T([-4.0]), T([-10.0]), None, None, beta=0.5, conservative_bias=0.5)
    assert out.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)
    # lambda = 1: -log sigmoid(0.5 * (-4 + 10)) = log(1 + e^-3)
    out = cpl(T([-4.0]), T([-10.0]), None, None, beta=0.5, conservative_bias=1.0)
    assert out.item() == pytest.approx(math.log(1 + math.exp(-3.0)), abs=1e-6)


def test_cpl_equal_scores_and_batches():
    # both scores s = 2, alpha 1, lambda 0.25: log(1 + e^(s (lambda - 1))) = log(1 + e^-1.5)
    out = cpl(T([2.0, 2.0]), T([2.0, -2.0]), None, None, beta=1.0, conservative_bias=0.25)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(math.log(1 + math.exp(-1.5)), abs=1e-6)
    assert out[1].item() == pytest.approx(math.log(1 + math.exp(-2.5)), abs=1e-6)  # -log sigmoid(2 + 0.5)


def test_cpl_with_lambda_one_is_cpo():
    pc, pr = T([-3.0, 1.5, -0.2]), T([-1.0, 2.0, -7.0])
    assert torch.allclose(cpl(pc, pr, None, None, beta=0.3, conservative_bias=1.0),
                          cpo(pc, pr, None, None, beta=0.3))


@pytest.mark.parametrize("bias", [0.0, -0.5, 1.5])
def test_cpl_bias_out_of_range_is_an_option_error(bias):
    with pytest.raises(LossOptionError, match="conservative_bias"):
        cpl(T([0.0]), T([0.0]), None, None, beta=0.1, conservative_bias=bias)


def test_cpl_is_registered_reference_free_and_gets_its_option():
    spec = registry().get("losses", "cpl")
    assert not spec.needs_reference and spec.paired and spec.options == {"conservative_bias": 0.5}
    policy = Scores(T([[-4.0, -10.0]]), T([[2.0, 2.0]]))
    loss, metrics = preference_loss(spec, policy, None, beta=0.5, options={"conservative_bias": 0.5})
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)
    assert metrics["rewards/margins"].item() == pytest.approx(3.0)  # implicit rewards 0.5 * s
