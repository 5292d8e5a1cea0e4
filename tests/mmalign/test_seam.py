"""The seam: group-shaped scores, losses that declare what they need (checked once, at start-up),
one calling convention, one implicit reward, and in-process plugins through mmalign.register."""

from __future__ import annotations

import math

import pytest
import torch

import mmalign
from mmalign.errors import ConfigError
from mmalign.losses import LossSpec
from mmalign.losses.objective import check_fits, loss_values, make_objective, objective_loss
from mmalign.plugins import registry
from mmalign.protocol import ModalityPlugin, move_tensors
from mmalign.scores import Scores, implicit_reward

T = torch.tensor


def test_pairs_are_groups_of_two_with_chosen_first():
    s = Scores.pairs(T([-1.0, -2.0]), T([-3.0, -4.0]), T([2, 3]), T([4, 5]))
    assert s.sums.tolist() == [[-1.0, -3.0], [-2.0, -4.0]] and s.k == 2
    assert s.chosen.tolist() == [-1.0, -2.0] and s.rejected.tolist() == [-3.0, -4.0]
    assert s.chosen_lengths.tolist() == [2, 3] and s.rejected_lengths.tolist() == [4, 5]
    single = Scores.pairs(T([-1.0]), None, T([2]), None)
    assert single.k == 1 and single.rejected is None and single.rejected_lengths is None


def test_implicit_reward_is_beta_times_the_log_ratio():
    assert implicit_reward(T([-1.0, -2.0]), T([-1.5, -1.0]), 0.5).tolist() == [0.25, -0.5]
    assert implicit_reward(T([-2.0]), None, 0.1).tolist() == pytest.approx([-0.2])  # reference-free


def centered(policy: Scores, reference: Scores | None, *, beta: float, values: dict) -> torch.Tensor:
    """A toy group loss: -mean_k(A_k * beta * (s_k - s_ref_k)), A = values["advantages"] [C, k]."""
    rewards = implicit_reward(policy.sums, reference.sums, beta)
    return -(values["advantages"] * rewards).mean(-1)


def test_a_group_loss_gets_both_scores_and_the_batch_values():
    spec = LossSpec("centered", centered, responses="group")
    assert spec.options == {}  # beta and values come from the engine
    pol = Scores(T([[-1.0, -2.0, -3.0]]), T([[1, 1, 1]]))
    ref = Scores(T([[-1.5, -2.0, -2.0]]), T([[1, 1, 1]]))
    advantages = T([[1.0, 0.0, -1.0]])
    out = loss_values(spec, pol, ref, beta=2.0, options={}, values={"advantages": advantages})
    # rewards 2 * (0.5, 0, -1) = (1, 0, -2); -(1*1 + 0 + -1*-2) / 3 = -1
    assert out.tolist() == pytest.approx([-1.0])


def test_extras_arrive_as_policy_and_reference_pairs():
    seen = {}

    def uses_extra(pc, pr, rc, rr, *, beta, corrupted):
        seen["corrupted"] = corrupted
        return pc * 0

    spec = LossSpec("uses_extra", uses_extra, extras=("corrupted",))
    assert spec.options == {}
    pol = Scores.pairs(T([-1.0]), T([-2.0]), T([1]), T([1]), extras={"corrupted": T([-5.0])})
    ref = Scores.pairs(T([-1.0]), T([-2.0]), T([1]), T([1]), extras={"corrupted": T([-6.0])})
    loss_values(spec, pol, ref, beta=1.0, options={})
    assert [t.tolist() for t in seen["corrupted"]] == [[-5.0], [-6.0]]
    with pytest.raises(ConfigError, match="needs the 'corrupted' score"):
        loss_values(spec, Scores.pairs(T([-1.0]), T([-2.0]), T([1]), T([1])), ref, beta=1.0, options={})


class Counting(ModalityPlugin):
    name = "counting"
    score_kind = "denoising"
    provides_extras = ("corrupted",)

    def extra_scores(self):
        return ()

    def extra_hint(self, name):
        return ": turn corruption on"


def test_check_fits_refuses_at_start_up_with_the_fix():
    plugin = Counting()
    with pytest.raises(ConfigError, match="defined on log_prob scores"):
        check_fits(LossSpec("odds", lambda *a, **k: None, score_kinds=("log_prob",)), plugin)
    with pytest.raises(ConfigError, match="does not compute with these settings: turn corruption on"):
        check_fits(LossSpec("x", lambda *a, **k: None, extras=("corrupted",)), plugin)
    with pytest.raises(ConfigError, match="needs per-unit scores"):
        check_fits(LossSpec("x", lambda *a, **k: None, per_unit=True), plugin)
    check_fits(LossSpec("x", lambda *a, **k: None), plugin)  # fits


def test_the_weighted_loss_parses_its_terms_once_at_binding():
    spec = registry().get("losses", "weighted")
    obj = make_objective(spec, beta=0.5, options={"terms": {"sigmoid": 1.0}},
                         lookup=lambda name, key: registry().get("losses", name, key))
    assert isinstance(obj.options["terms"], list) and obj.options["terms"][0][0].name == "sigmoid"
    pol = Scores.pairs(T([-1.0]), T([-1.0]), T([1]), T([1]))
    loss, metrics = objective_loss(obj, pol, pol)
    assert float(loss) == pytest.approx(math.log(2)) and float(metrics["rewards/margins"]) == 0.0


def test_an_in_process_plugin_registers_and_unregisters():
    class Extra:
        @mmalign.hookimpl
        def mmalign_register_losses(self, register):
            register(LossSpec("centered", centered, responses="group"))

    with mmalign.register(Extra(), name="test-extra"):
        assert registry().entry("losses", "centered").source == "test-extra"
    assert "centered" not in registry().names("losses")


def test_a_reward_that_is_not_a_modality_plugin_is_refused():
    class NotAPlugin:
        @mmalign.hookimpl
        def mmalign_register_rewards(self, register):
            register("bad", object)

    with pytest.raises(mmalign.errors.RegistryError, match="subclass of mmalign.protocol.ModalityPlugin"):
        mmalign.register(NotAPlugin(), name="test-bad")
    assert "bad" not in registry().names("rewards")


def test_the_default_to_device_moves_only_tensors():
    from dataclasses import dataclass

    @dataclass
    class B:
        x: torch.Tensor
        names: list
        n: int

    moved = move_tensors(B(T([1.0]), ["a"], 3), torch.device("meta"))
    assert moved.x.device.type == "meta" and moved.names == ["a"] and moved.n == 3
