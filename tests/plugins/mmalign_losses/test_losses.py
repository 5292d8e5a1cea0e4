"""Every loss against hand-computed values, and ln 2 at initialisation."""

import math

import pytest
import torch

from mmalign.losses.objective import preference_loss
from mmalign.losses import call_loss, nll_term
from mmalign_losses import BUILTIN_LOSSES, hinge, ipo, sft, sigmoid
from mmalign.scores import Scores

T = torch.tensor


def scores():
    # h = (pc - rc) - (pr - rr) = (-5 + 6) - (-8 + 7) = 1 - (-1) = 2
    return T([-5.0]), T([-8.0]), T([-6.0]), T([-7.0])


def test_sigmoid_hand_computed():
    out = sigmoid(*scores(), beta=0.5)  # -log sigmoid(0.5 * 2) = log(1 + e^-1)
    assert out.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)


def test_cdpo_label_smoothing_hand_computed():
    eps = 0.2
    out = sigmoid(*scores(), beta=0.5, label_smoothing=eps)
    expected = (1 - eps) * math.log(1 + math.exp(-1.0)) + eps * math.log(1 + math.exp(1.0))
    assert out.item() == pytest.approx(expected, abs=1e-6)


def test_ipo_hand_computed():
    out = ipo(*scores(), beta=0.25)  # (2 - 1 / 0.5)^2 = 0
    assert out.item() == pytest.approx(0.0, abs=1e-7)
    out = ipo(*scores(), beta=1.0)  # (2 - 0.5)^2 = 2.25
    assert out.item() == pytest.approx(2.25, abs=1e-6)


def test_hinge_hand_computed():
    assert hinge(*scores(), beta=0.25).item() == pytest.approx(0.5)  # max(0, 1 - 0.5)
    assert hinge(*scores(), beta=1.0).item() == pytest.approx(0.0)  # max(0, 1 - 2)


def test_sft_and_nll_term_are_per_token():
    pc, lengths = T([-6.0, -3.0]), T([3, 1])
    assert sft(pc, None, None, None, beta=0.1, lengths=(lengths, None)).tolist() == [2.0, 3.0]
    assert nll_term(pc, lengths).tolist() == [2.0, 3.0]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_dpo_is_ln2_when_policy_equals_reference(eps):
    s = torch.randn(8)
    r = torch.randn(8)
    out = sigmoid(s, r, s.clone(), r.clone(), beta=0.1, label_smoothing=eps)
    assert torch.allclose(out, torch.full((8,), math.log(2.0)), atol=0, rtol=1e-7)


def test_preference_loss_metrics_and_sft_weight():
    pc, pr, rc, rr = scores()
    pol = Scores.pairs(pc, pr, T([4]), T([4]))
    ref = Scores.pairs(rc, rr, T([4]), T([4]))
    spec = next(s for s in BUILTIN_LOSSES if s.name == "sigmoid")
    loss, m = preference_loss(spec, pol, ref, beta=0.5, options={}, sft_weight=2.0)
    expected = math.log(1 + math.exp(-1.0)) + 2.0 * (5.0 / 4)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(0.5)  # 0.5 * (-5 + 6)
    assert m["rewards/rejected"].item() == pytest.approx(-0.5)  # 0.5 * (-8 + 7)
    assert m["rewards/margins"].item() == pytest.approx(1.0)
    assert m["rewards/accuracies"].item() == 1.0


def test_call_loss_passes_lengths_only_when_declared():
    pc, pr, rc, rr = scores()
    spec = next(s for s in BUILTIN_LOSSES if s.name == "sft")
    out = call_loss(spec, pc, None, None, None, beta=1.0, lengths=(T([5]), None), options={})
    assert out.item() == pytest.approx(1.0)


def test_label_smoothing_out_of_range_is_refused():
    with pytest.raises(ValueError):
        sigmoid(*scores(), beta=0.1, label_smoothing=0.5)


def test_loss_options_come_from_the_signature():
    spec = next(s for s in BUILTIN_LOSSES if s.name == "sigmoid")
    assert spec.options == {"label_smoothing": 0.0}
