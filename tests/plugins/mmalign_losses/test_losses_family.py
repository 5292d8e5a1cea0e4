"""The DPO loss family beyond sigmoid/ipo/hinge/sft: hand-computed values on a few pairs, the known
value at initialisation, weighted combinations (MPO), KTO as a pure function, the registry listing,
and a short training run for a few representative losses."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import base_config, write_jsonl
import mmalign_losses as L
from mmalign.losses import LossSpec, call_loss
from mmalign.cli import main
from mmalign.errors import ConfigError, MmalignError

T = torch.tensor
BUILTIN = {spec.name: spec for spec in L.BUILTIN_LOSSES}
DOCS = Path(__file__).resolve().parents[3] / "docs" / "losses.md"


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# Three pairs. rho_w = pc - rc = [1, 0, 0], rho_l = pr - rr = [-1, 1, -1], h = [2, -1, 1].
PC, PR, RC, RR = [-5.0, -3.0, -10.0], [-8.0, -4.0, -9.0], [-6.0, -3.0, -10.0], [-7.0, -5.0, -8.0]
LEN_W, LEN_L = [4, 2, 5], [2, 4, 3]
RHO_W, RHO_L, H = [1.0, 0.0, 0.0], [-1.0, 1.0, -1.0], [2.0, -1.0, 1.0]


def three_pairs():
    return T(PC), T(PR), T(RC), T(RR)


def lengths():
    return T(LEN_W), T(LEN_L)


def approx(values):
    return pytest.approx(values, abs=1e-5)


# --- hand-computed values -------------------------------------------------------------------------

def test_robust_hand_computed():
    eps, beta = 0.2, 0.5
    out = L.robust(*three_pairs(), beta=beta, label_smoothing=eps)
    expected = [((1 - eps) * softplus(-beta * h) - eps * softplus(beta * h)) / (1 - 2 * eps) for h in H]
    assert out.tolist() == approx(expected)
    # eps = 0 is plain DPO; h = 2, beta = 0.5: log(1 + e^-1)
    assert L.robust(*three_pairs(), beta=beta)[0].item() == pytest.approx(math.log(1 + math.exp(-1)))
    with pytest.raises(ValueError, match="label_smoothing"):
        L.robust(*three_pairs(), beta=beta, label_smoothing=0.5)
    # the same error is a ConfigError naming the key, so the CLI prints it and exits with code 2
    with pytest.raises(ConfigError, match=r"loss.options.label_smoothing: must be in \[0, 0.5\); got 0.7"):
        L.sigmoid(*three_pairs(), beta=beta, label_smoothing=0.7)


def test_exo_pair_hand_computed_and_minimum():
    eps, beta = 0.1, 0.5
    out = L.exo_pair(*three_pairs(), beta=beta, label_smoothing=eps)
    expected = []
    for h in H:
        qw, ql = sig(beta * h), sig(-beta * h)
        expected.append(qw * math.log(qw / (1 - eps)) + ql * math.log(ql / eps))
    assert out.tolist() == approx(expected)
    # KL(q || p) = 0 exactly when q = p, i.e. beta * h = ln((1 - eps) / eps) = ln 9
    h_star = math.log(9.0) / beta
    at_min = L.exo_pair(T([h_star]), T([0.0]), T([0.0]), T([0.0]), beta=beta, label_smoothing=eps)
    assert at_min.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        L.exo_pair(*three_pairs(), beta=beta, label_smoothing=0.0)


def test_exo_pair_at_init_is_2_761_as_documented():
    """At init (h = 0) q = (1/2, 1/2): L = 1/2 ln(1/2 / 0.999) + 1/2 ln(1/2 / 0.001) = 2.76123 nats,
    the number docs/losses.md and the docstring give."""
    zero = T([0.0, 0.0])
    value = L.exo_pair(zero, zero, zero, zero, beta=0.1)  # default label_smoothing 1e-3
    assert value.tolist() == pytest.approx([2.761231] * 2, abs=1e-6)
    assert "about 2.761 for eps = 1e-3" in DOCS.read_text()
    assert "2.761 nats for eps = 1e-3" in (L.exo_pair.__doc__ or "")


def test_nca_pair_hand_computed():
    beta = 0.5
    out = L.nca_pair(*three_pairs(), beta=beta)
    expected = [softplus(-beta * w) + 0.5 * softplus(beta * w) + 0.5 * softplus(beta * l)
                for w, l in zip(RHO_W, RHO_L)]
    assert out.tolist() == approx(expected)


def test_bco_pair_uses_the_batch_mean_reward_as_delta_without_gradient():
    # rho_w = [2, 0], rho_l = [0, 1], beta = 1: rewards [2, 0 | 0, 1], batch mean delta = 0.75
    pc = T([-1.0, -2.0], requires_grad=True)
    pr, rc, rr = T([-3.0, -3.0]), T([-3.0, -2.0]), T([-3.0, -4.0])
    out = L.bco_pair(pc, pr, rc, rr, beta=1.0)
    # pair 0: -log s(2 - .75) - log s(-(0 - .75)); pair 1: -log s(0 - .75) - log s(-(1 - .75))
    assert out.tolist() == approx([softplus(-1.25) + softplus(-0.75), softplus(0.75) + softplus(0.25)])
    out.sum().backward()
    # d/d pc_i of -log s(r_w,i - delta) is -s(-(r_w,i - delta)); none through delta (detached)
    assert pc.grad.tolist() == approx([-sig(-1.25), -sig(0.75)])
    fixed = L.bco_pair(pc.detach(), pr, rc, rr, beta=1.0, delta=0.0)
    assert fixed.tolist() == approx([softplus(-2.0) + softplus(0.0), softplus(0.0) + softplus(1.0)])


def test_sppo_hard_hand_computed():
    # beta = 0.5: targets rho_w -> 1, rho_l -> -1
    # (1-1)^2 + (-1+1)^2 = 0; (0-1)^2 + (1+1)^2 = 5; (0-1)^2 + (-1+1)^2 = 1
    assert L.sppo_hard(*three_pairs(), beta=0.5).tolist() == approx([0.0, 5.0, 1.0])


def test_aot_sorts_margins_and_ignores_pair_order():
    beta = 0.5
    # policy margins pc - pr = [3, 1, -1] -> sorted [-1, 1, 3]; reference rc - rr = [1, 2, -2] -> [-2, 1, 2]
    out = L.aot(*three_pairs(), beta=beta)
    assert out.tolist() == approx([softplus(-beta * d) for d in (1.0, 0.0, 1.0)])
    perm = T([2, 0, 1])
    shuffled = L.aot(*(t[perm] for t in three_pairs()), beta=beta)
    assert shuffled.tolist() == approx(out.tolist())
    smoothed = L.aot(*three_pairs(), beta=beta, label_smoothing=0.1)
    assert smoothed[0].item() == pytest.approx(0.9 * softplus(-0.5) + 0.1 * softplus(0.5), abs=1e-6)
    # a per-pair loss would differ: DPO on the same pairs gives h = [2, -1, 1]
    assert L.sigmoid(*three_pairs(), beta=beta).tolist() != approx(out.tolist())


def test_aot_unpaired_sorts_each_side_separately():
    beta = 0.5
    # sort(rho_w) = [0, 0, 1], sort(rho_l) = [-1, -1, 1] -> d = [1, 1, 0]
    out = L.aot_unpaired(*three_pairs(), beta=beta)
    assert out.tolist() == approx([softplus(-0.5), softplus(-0.5), math.log(2)])


def test_apo_zero_and_apo_down_hand_computed():
    beta = 0.5
    zero = L.apo_zero(*three_pairs(), beta=beta)
    assert zero.tolist() == approx([1 - sig(beta * w) + sig(beta * l) for w, l in zip(RHO_W, RHO_L)])
    down = L.apo_down(*three_pairs(), beta=beta)
    assert down.tolist() == approx([sig(beta * w) + 1 - sig(beta * h) for w, h in zip(RHO_W, H)])
    # pair 1 (rho_w = 0, rho_l = 1): apo_zero = 1/2 + s(0.5); apo_down = 1/2 + 1 - s(-0.5)
    assert zero[1].item() == pytest.approx(0.5 + 0.6224593, abs=1e-6)
    assert down[1].item() == pytest.approx(1.5 - 0.3775407, abs=1e-6)


def test_discopop_hand_computed_and_finite_for_large_negative_margins():
    beta, tau = 0.5, 0.05
    out = L.discopop(*three_pairs(), beta=beta)
    expected = []
    for h in H:
        x = beta * h
        m = sig(x / tau)
        expected.append((1 - m) * softplus(-x) + m * math.exp(-x))
    assert out.tolist() == approx(expected)
    # exp(200) overflows float32, but its weight sigmoid(-4000) is 0: the loss is log(1 + e^200) = 200
    pc = T([-200.0], requires_grad=True)
    far = L.discopop(pc, T([0.0]), T([0.0]), T([0.0]), beta=1.0)
    far.backward()
    assert far.item() == pytest.approx(200.0) and torch.isfinite(pc.grad).all()
    with pytest.raises(ConfigError, match="loss.options.tau: must be positive"):
        L.discopop(*three_pairs(), beta=beta, tau=0.0)


def test_sigmoid_norm_divides_each_log_ratio_by_its_length():
    beta = 0.5
    out = L.sigmoid_norm(*three_pairs(), beta=beta, lengths=lengths())
    # rho_w / |y_w| = [1/4, 0, 0], rho_l / |y_l| = [-1/2, 1/4, -1/3]
    assert out.tolist() == approx([softplus(-beta * d) for d in (0.75, -0.25, 1 / 3)])


def test_simpo_hand_computed_and_reference_free():
    # average scores: chosen [-5/4, -3/2, -2], rejected [-4, -1, -3]; beta = 2, gamma = 0.5
    # beta * (avg_w - avg_l) - gamma = [5, -1.5, 1.5]
    pc, pr, _, _ = three_pairs()
    out = L.simpo(pc, pr, None, None, beta=2.0, lengths=lengths(), gamma=0.5)
    assert out.tolist() == approx([math.log(1 + math.exp(-5)), math.log(1 + math.exp(1.5)),
                                   math.log(1 + math.exp(-1.5))])
    assert not BUILTIN["simpo"].needs_reference and BUILTIN["simpo"].options == {"gamma": 0.5}


def test_cpo_hand_computed():
    pc, pr, _, _ = three_pairs()  # pc - pr = [3, 1, -1], beta = 0.5
    out = L.cpo(pc, pr, None, None, beta=0.5)
    assert out.tolist() == approx([softplus(-1.5), softplus(-0.5), softplus(0.5)])


def test_orpo_hand_computed():
    pc, pr, _, _ = three_pairs()
    beta = 0.25
    out = L.orpo(pc, pr, None, None, beta=beta, lengths=lengths())

    def log_odds(a):  # log(p / (1 - p)) with p = e^a
        p = math.exp(a)
        return math.log(p / (1 - p))

    avg_w, avg_l = [-1.25, -1.5, -2.0], [-4.0, -1.0, -3.0]
    expected = [beta * softplus(-(log_odds(w) - log_odds(l))) for w, l in zip(avg_w, avg_l)]
    assert out.tolist() == approx(expected)
    # odds of p = 0.5 are 1: log odds(log 0.5) = 0
    assert L.log_odds(T([math.log(0.5)])).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(L.log_odds(T([0.0])))  # a certain response: clamped, not infinite
    spec = BUILTIN["orpo"]
    assert not spec.needs_reference and spec.score_kinds == ("log_prob",)


def test_kto_hand_computed():
    # rho = [1, 0, -2]; desirable, undesirable, undesirable; beta = 1, z0 = 0.5, lambda_U = 2
    out = L.kto(T([-1.0, -2.0, -3.0]), T([-2.0, -2.0, -1.0]), T([True, False, False]), beta=1.0,
                reference_point=0.5, desirable_weight=1.0, undesirable_weight=2.0)
    assert out.tolist() == approx([1 - sig(0.5), 2 * (1 - sig(0.5)), 2 * (1 - sig(2.5))])


def test_kto_reference_point_is_a_clamped_detached_mean():
    policy = T([-1.0, -2.0], requires_grad=True)
    z0 = L.kto_reference_point(policy, T([-2.0, -3.5]))  # mean(1, 1.5)
    assert z0.item() == pytest.approx(1.25) and not z0.requires_grad
    assert L.kto_reference_point(T([-3.0, -3.0]), T([-2.0, -2.0])).item() == 0.0  # mean -1 -> 0


def test_kto_is_not_registered_until_kto_data_is_wired():
    assert "kto" not in BUILTIN


# --- values at initialisation ---------------------------------------------------------------------

BETA = 0.5
AT_INIT = {  # policy == reference
    "sigmoid": math.log(2), "robust": math.log(2), "aot": math.log(2), "aot_unpaired": math.log(2),
    "sigmoid_norm": math.log(2), "hinge": 1.0, "ipo": 1 / (4 * BETA ** 2),
    "nca_pair": 2 * math.log(2), "bco_pair": 2 * math.log(2), "sppo_hard": 1 / (2 * BETA ** 2),
    "apo_zero": 1.0, "apo_down": 1.0, "discopop": (math.log(2) + 1) / 2,
    "exo_pair": -math.log(2) - (math.log(1 - 1e-3) + math.log(1e-3)) / 2,
}


@pytest.mark.parametrize("name", sorted(AT_INIT))
def test_value_at_initialisation(name):
    gen = torch.Generator().manual_seed(0)
    pc, pr = -10 * torch.rand(6, generator=gen), -10 * torch.rand(6, generator=gen)
    lens = (torch.randint(1, 9, (6,), generator=gen), torch.randint(1, 9, (6,), generator=gen))
    out = call_loss(BUILTIN[name], pc, pr, pc.clone(), pr.clone(), beta=BETA, lengths=lens, options={})
    assert out.shape == (6,)
    assert out.tolist() == approx([AT_INIT[name]] * 6)


@pytest.mark.parametrize("name, expected", [("simpo", softplus(0.5)), ("cpo", math.log(2)),
                                            ("orpo", BETA * math.log(2))])
def test_reference_free_value_when_both_responses_score_the_same(name, expected):
    lens = (T([2, 4]), T([2, 4]))
    s = T([-3.0, -6.0])  # equal sums and equal averages
    out = call_loss(BUILTIN[name], s, s.clone(), None, None, beta=BETA, lengths=lens, options={})
    assert out.tolist() == approx([expected] * 2)


# --- every registered built-in ------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_is_differentiable_documented_and_in_the_docs(name):
    spec = BUILTIN[name]
    pc = T(PC, requires_grad=True)
    pr = T(PR, requires_grad=True) if spec.paired else None
    rc, rr = (T(RC), T(RR)) if spec.needs_reference else (None, None)
    options = {"terms": {"sigmoid": 1.0}} if name == "weighted" else {}
    out = call_loss(spec, pc, pr, rc, rr, beta=0.5, lengths=lengths(), options=options)
    assert out.shape == (3,) and torch.isfinite(out).all()
    out.mean().backward()
    assert torch.isfinite(pc.grad).all() and pc.grad.abs().sum() > 0
    assert "Shapes" in (spec.fn.__doc__ or "") and spec.summary
    assert f"`{name}`" in DOCS.read_text(), f"docs/losses.md does not document loss '{name}'"


def test_mmalign_plugins_lists_at_least_20_losses(capsys):
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("losses:")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    listed = [line.split()[0] for line in lines[start + 1:end]]
    assert len(listed) >= 20
    assert {"simpo", "orpo", "robust", "bco_pair", "discopop", "mpo", "weighted"} <= set(listed)


# --- weighted combinations ----------------------------------------------------------------------

def test_weighted_equals_the_sum_of_its_terms_and_mpo_is_that_mix():
    kw = dict(beta=0.5, lengths=lengths())
    expected = (0.8 * L.sigmoid(*three_pairs(), beta=0.5)
                + 0.2 * L.bco_pair(*three_pairs(), beta=0.5)
                + 1.0 * L.sft(*three_pairs(), **kw))
    terms = {"sigmoid": 0.8, "bco_pair": 0.2, "sft": 1.0}
    out = L.weighted(*three_pairs(), **kw, terms=terms)
    assert out.tolist() == approx(expected.tolist())
    mpo = BUILTIN["mpo"]
    assert mpo.needs_reference and mpo.paired and mpo.options == {}
    assert call_loss(mpo, *three_pairs(), options={}, **kw).tolist() == approx(expected.tolist())


def test_weighted_terms_take_their_own_options():
    kw = dict(beta=0.5, lengths=lengths())
    out = L.weighted(*three_pairs(), **kw, terms={"sigmoid": {"weight": 2, "label_smoothing": 0.1},
                                                  "simpo": {"weight": 0.5, "gamma": 1.0}})
    expected = (2 * L.sigmoid(*three_pairs(), beta=0.5, label_smoothing=0.1)
                + 0.5 * L.simpo(*three_pairs(), **kw, gamma=1.0))
    assert out.tolist() == approx(expected.tolist())


@pytest.mark.parametrize("terms, message", [
    (None, "loss.options.terms: give the losses"),
    ({}, "loss.options.terms: give the losses"),
    ({"sigmoid": "heavy"}, "loss.options.terms.sigmoid: the weight must be a finite number"),
    ({"sigmoid": {"label_smoothing": 0.1}}, "loss.options.terms.sigmoid: the weight"),
    ({"sigmoid": {"weight": 1, "gamma": 1}}, "'gamma' is not an option of loss 'sigmoid'"),
    ({"sigmod": 1.0}, "Unknown loss 'sigmod' \\(config key 'loss.options.terms.sigmod'\\)"),
])
def test_weighted_config_mistakes_are_clear_errors(terms, message):
    with pytest.raises(MmalignError, match=message):
        L.weighted(*three_pairs(), beta=0.5, lengths=lengths(), terms=terms)


def test_combination_of_reference_free_terms_skips_the_reference():
    spec = L.combination("simpo_sft", {"simpo": 1.0, "orpo": 0.5, "sft": 0.1})
    assert not spec.needs_reference and spec.paired and spec.score_kinds == ("log_prob",)
    assert spec.summary == "L = 1 * simpo + 0.5 * orpo + 0.1 * sft"
    pc, pr, _, _ = three_pairs()
    out = call_loss(spec, pc, pr, None, None, beta=0.5, lengths=lengths(), options={})
    expected = (L.simpo(pc, pr, None, None, beta=0.5, lengths=lengths())
                + 0.5 * L.orpo(pc, pr, None, None, beta=0.5, lengths=lengths())
                + 0.1 * L.sft(pc, pr, None, None, beta=0.5, lengths=lengths()))
    assert out.tolist() == approx(expected.tolist())
    with pytest.raises(ConfigError, match="combination 'x' terms.kto: 'kto' is not one of"):
        L.combination("x", {"kto": 1.0})


def test_a_term_that_needs_more_than_scores_is_refused():
    def needs_extras(pc, pr, rc, rr, *, beta, extras):
        return pc

    spec = LossSpec("needs_extras", needs_extras)
    with pytest.raises(ConfigError, match="loss 'needs_extras' needs 'extras'"):
        L.combination("x", {"needs_extras": 1.0}, specs=[spec])


# --- training smoke test --------------------------------------------------------------------------

def _fixed_batch(tmp_path: Path, pairs_file: Path) -> Path:
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()[:4]]
    return write_jsonl(tmp_path / "four.jsonl", rows)  # batch_size 4: every step sees these pairs


TRAINING_CASES = [  # (loss section, expected first logged loss where known)
    ({"name": "simpo", "beta": 2.0, "options": {"gamma": 0.5}}, None),
    ({"name": "orpo", "beta": 0.5, "sft_weight": 1.0}, None),
    ({"name": "ipo", "beta": 0.25}, 4.0),  # (0 - 1 / (2 * 0.25))^2 at initialisation
    ({"name": "robust", "beta": 0.1, "options": {"label_smoothing": 0.1}}, math.log(2)),
    ({"name": "weighted", "beta": 0.1, "options": {"terms": {"sigmoid": 0.8, "bco_pair": 0.2}}},
     1.2 * math.log(2)),  # 0.8 ln 2 + 0.2 * 2 ln 2
]


@pytest.mark.parametrize("loss, first", TRAINING_CASES, ids=[c[0]["name"] for c in TRAINING_CASES])
def test_training_decreases_the_loss(tmp_path, tokenizer_dir, pairs_file, loss, first):
    from mmalign import train

    cfg = base_config(tmp_path, tokenizer_dir, _fixed_batch(tmp_path, pairs_file), loss=loss,
                      train={"max_steps": 8, "lr": 1e-2, "log_every": 1, "lr_scheduler": "constant"})
    out = train(cfg, log=lambda *a: None).output_dir
    history = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 8
    if first is not None:
        assert history[0] == pytest.approx(first, abs=1e-5)
    assert history[-1] < history[0], history


def test_weighted_with_a_bad_term_fails_as_a_config_error_in_training(tmp_path, tokenizer_dir, pairs_file):
    from mmalign import train

    cfg = base_config(tmp_path, tokenizer_dir, _fixed_batch(tmp_path, pairs_file),
                      loss={"name": "weighted", "options": {"terms": {"sigmoid": "lots"}}})
    with pytest.raises(ConfigError, match="loss.options.terms.sigmoid"):
        train(cfg, log=lambda *a: None)
