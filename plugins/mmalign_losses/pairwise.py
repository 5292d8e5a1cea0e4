"""Pairwise losses with a reference: DPO and its family (everything TRL's DPOTrainer offers).
Each is a function of the scores; see mmalign/losses/__init__.py for the notation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mmalign.losses.spec import LossOptionError, log_ratio_difference, log_ratios
from mmalign_losses.builtin import _check_label_smoothing, loss


@loss("sigmoid", summary="DPO (Rafailov et al. 2023, eq. 7); label_smoothing > 0 gives cDPO")
def sigmoid(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float,
            label_smoothing: float = 0.0) -> Tensor:
    """DPO, and conservative DPO with label smoothing eps (Mitchell 2023):

        L = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

    At initialisation (policy == reference) h = 0 and L = ln 2 for every eps.
    Shapes: all inputs [B]; returns [B].
    """
    _check_label_smoothing(label_smoothing)
    logits = beta * log_ratio_difference(pc, pr, rc, rr)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


@loss("ipo", summary="IPO (Azar et al. 2023, eq. 17): squared distance of h to 1/(2 beta)")
def ipo(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17), with tau = beta:

        L = (h - 1 / (2 * beta))^2

    Note: TRL applies IPO to length-averaged log-probs; mmalign applies it to the plugin's score as
    the paper does. Shapes: all inputs [B]; returns [B].
    """
    return (log_ratio_difference(pc, pr, rc, rr) - 1.0 / (2.0 * beta)) ** 2


@loss("hinge", summary="SLiC hinge (Zhao et al. 2023): max(0, 1 - beta * h)")
def hinge(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """SLiC-HF calibration loss with the reference-normalised margin (as TRL's ``hinge``):

        L = max(0, 1 - beta * h)

    Shapes: all inputs [B]; returns [B].
    """
    return torch.relu(1.0 - beta * log_ratio_difference(pc, pr, rc, rr))


@loss("robust", summary="robust DPO (Chowdhury et al. 2024): unbiased DPO under label-flip rate "
                        "label_smoothing")
def robust(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float,
           label_smoothing: float = 0.0) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024): an unbiased estimate of the DPO loss when each
    label is flipped with probability eps (``label_smoothing``, in [0, 0.5)):

        L = ((1 - eps) * -log sigmoid(beta * h) - eps * -log sigmoid(-beta * h)) / (1 - 2 * eps)

    Unlike cDPO it can go below 0 for confidently ranked pairs. L = ln 2 at initialisation (h = 0).
    Shapes: all inputs [B]; returns [B].
    """
    _check_label_smoothing(label_smoothing)
    logits = beta * log_ratio_difference(pc, pr, rc, rr)
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)


@loss("exo_pair", summary="EXO (Ji et al. 2024, eq. 16, K = 2): reverse KL to the smoothed label")
def exo_pair(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float,
             label_smoothing: float = 1e-3) -> Tensor:
    """EXO-pref for a pair (Ji et al. 2024, eq. 16 with K = 2): the KL divergence from the policy's
    preference distribution q = (sigmoid(beta * h), sigmoid(-beta * h)) to the label distribution
    p = (1 - eps, eps), eps = ``label_smoothing`` in (0, 1) (the paper uses 1e-3; the paper's
    reward temperature beta_r is folded into eps as in TRL):

        L = q_w * (log q_w - log(1 - eps)) + q_l * (log q_l - log eps)

    At initialisation L = -ln 2 - (ln(1 - eps) + ln eps) / 2 (2.761 nats for eps = 1e-3); its minimum
    0 is reached at beta * h = ln((1 - eps) / eps). Shapes: all inputs [B]; returns [B].
    """
    if not 0.0 < label_smoothing < 1.0:
        raise LossOptionError(f"loss.options.label_smoothing: exo_pair needs it in (0, 1) (the paper "
                              f"uses 1e-3); got {label_smoothing}.")
    logits = beta * log_ratio_difference(pc, pr, rc, rr)
    log_qw, log_ql = F.logsigmoid(logits), F.logsigmoid(-logits)
    return (log_qw.exp() * (log_qw - math.log1p(-label_smoothing))
            + log_ql.exp() * (log_ql - math.log(label_smoothing)))


@loss("nca_pair", summary="NCA (Chen et al. 2024): pairwise noise-contrastive alignment")
def nca_pair(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """Pairwise NCA (Chen et al. 2024, "Noise Contrastive Alignment", K = 2), rewards
    r = beta * rho with rho = s_theta - s_ref of each response:

        L = -log sigmoid(r_w) - 1/2 * log sigmoid(-r_w) - 1/2 * log sigmoid(-r_l)

    It optimises absolute rewards, so the chosen likelihood is not pushed down with the rejected.
    L = 2 ln 2 at initialisation. Shapes: all inputs [B]; returns [B].
    """
    rho_w, rho_l = log_ratios(pc, pr, rc, rr)
    r_w, r_l = beta * rho_w, beta * rho_l
    return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)


@loss("bco_pair", summary="BCO (Jung et al. 2024): chosen vs rejected as a binary classifier, "
                          "reward shift delta (default: the batch's mean reward)")
def bco_pair(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float,
             delta: float | None = None) -> Tensor:
    """Binary Classifier Optimization on pairs (Jung et al. 2024): logistic regression of
    "chosen" on the reward r = beta * rho, shifted by delta:

        L = -log sigmoid(r_w - delta) - log sigmoid(-(r_l - delta))

    The paper's delta is a running mean of the rewards over training. A loss here is a pure
    function, so there is no running state: with ``delta: null`` (default) delta is the mean of
    the 2B rewards of this batch, detached; a number fixes it. L = 2 ln 2 at initialisation.
    Shapes: all inputs [B]; returns [B].
    """
    rho_w, rho_l = log_ratios(pc, pr, rc, rr)
    r_w, r_l = beta * rho_w, beta * rho_l
    shift = torch.cat([r_w, r_l]).mean().detach() if delta is None else delta
    return -F.logsigmoid(r_w - shift) - F.logsigmoid(-(r_l - shift))


@loss("sppo_hard", summary="SPPO (Wu et al. 2024), hard win probabilities: rho_w -> 1/(2 beta), "
                           "rho_l -> -1/(2 beta)")
def sppo_hard(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """Self-Play Preference Optimization (Wu et al. 2024, eq. 4.7) with the win probability set to
    1 for the chosen and 0 for the rejected response, and eta = 1 / beta:

        L = (rho_w - 1 / (2 * beta))^2 + (rho_l + 1 / (2 * beta))^2

    with rho = s_theta - s_ref. L = 1 / (2 * beta^2) at initialisation.
    Shapes: all inputs [B]; returns [B].
    """
    rho_w, rho_l = log_ratios(pc, pr, rc, rr)
    half = 0.5 / beta
    return (rho_w - half) ** 2 + (rho_l + half) ** 2


def _smoothed_logistic(logits: Tensor, eps: float) -> Tensor:
    return -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)


@loss("aot", summary="AOT paired (Melnyk et al. 2024): DPO on sorted margins (stochastic dominance)")
def aot(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float,
        label_smoothing: float = 0.0) -> Tensor:
    """Alignment via Optimal Transport, paired (Melnyk et al. 2024): the policy's margins
    m = pc - pr should dominate the reference's m_ref = rc - rr in distribution, so the batch's
    margins are sorted and compared quantile by quantile (the 1-D optimal transport plan):

        d_(i) = sort(m)_(i) - sort(m_ref)_(i)
        L_(i) = -(1 - eps) * log sigmoid(beta * d_(i)) - eps * log sigmoid(-beta * d_(i))

    Element i of the output belongs to the i-th quantile, not to pair i; only the batch mean is
    meaningful, and it needs batches of several pairs. L = ln 2 at initialisation.
    Shapes: all inputs [B]; returns [B].
    """
    _check_label_smoothing(label_smoothing)
    d = torch.sort(pc - pr).values - torch.sort(rc - rr).values
    return _smoothed_logistic(beta * d, label_smoothing)


@loss("aot_unpaired", summary="AOT unpaired (Melnyk et al. 2024): sorted chosen log-ratios vs sorted "
                              "rejected log-ratios")
def aot_unpaired(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float,
                 label_smoothing: float = 0.0) -> Tensor:
    """Alignment via Optimal Transport, unpaired (Melnyk et al. 2024): the distribution of chosen
    log-ratios rho_w should dominate that of rejected log-ratios rho_l, compared by quantiles:

        d_(i) = sort(rho_w)_(i) - sort(rho_l)_(i)
        L_(i) = -(1 - eps) * log sigmoid(beta * d_(i)) - eps * log sigmoid(-beta * d_(i))

    As in ``aot``, element i belongs to the i-th quantile, not to pair i. L = ln 2 at
    initialisation. Shapes: all inputs [B]; returns [B].
    """
    _check_label_smoothing(label_smoothing)
    rho_w, rho_l = log_ratios(pc, pr, rc, rr)
    d = torch.sort(rho_w).values - torch.sort(rho_l).values
    return _smoothed_logistic(beta * d, label_smoothing)


@loss("apo_zero", summary="APO-zero (D'Oosterlinck et al. 2024, eq. 7): raise chosen, lower rejected")
def apo_zero(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """Anchored Preference Optimization, zero anchor (D'Oosterlinck et al. 2024, eq. 7), for
    chosen responses better than the model's own:

        L = (1 - sigmoid(beta * rho_w)) + sigmoid(beta * rho_l)

    L = 1 at initialisation. Shapes: all inputs [B]; returns [B].
    """
    rho_w, rho_l = log_ratios(pc, pr, rc, rr)
    return (1 - torch.sigmoid(beta * rho_w)) + torch.sigmoid(beta * rho_l)


@loss("apo_down", summary="APO-down (D'Oosterlinck et al. 2024, eq. 8): lower both, rejected more")
def apo_down(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """Anchored Preference Optimization, down anchor (D'Oosterlinck et al. 2024, eq. 8), for
    chosen responses worse than the model's own:

        L = sigmoid(beta * rho_w) + (1 - sigmoid(beta * (rho_w - rho_l)))

    L = 1 at initialisation. Shapes: all inputs [B]; returns [B].
    """
    rho_w, rho_l = log_ratios(pc, pr, rc, rr)
    return torch.sigmoid(beta * rho_w) + (1 - torch.sigmoid(beta * (rho_w - rho_l)))


@loss("discopop", summary="DiscoPOP (Lu et al. 2024, eq. 5): log-ratio modulated logistic/exponential")
def discopop(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float,
             tau: float = 0.05) -> Tensor:
    """DiscoPOP, the log-ratio modulated loss found by LLM-driven search (Lu, Holt, Fanconi, Chan
    et al. 2024, eq. 5), with x = beta * h and mixing weight m = sigmoid(x / tau):

        L = (1 - m) * -log sigmoid(x) + m * exp(-x)

    The second term is computed as exp(log sigmoid(x / tau) - x), which is the same number but
    finite where exp(-x) alone overflows. L = (ln 2 + 1) / 2 at initialisation.
    Shapes: all inputs [B]; returns [B].
    """
    if tau <= 0:
        raise LossOptionError(f"loss.options.tau: must be positive (the paper uses 0.05); got {tau}.")
    x = beta * log_ratio_difference(pc, pr, rc, rr)
    return torch.sigmoid(-x / tau) * -F.logsigmoid(x) + torch.exp(F.logsigmoid(x / tau) - x)


@loss("sigmoid_norm", lengths=True, summary="DPO on length-normalized log-ratios (TRL's sigmoid_norm)")
def sigmoid_norm(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float,
                 lengths: tuple[Tensor, Tensor]) -> Tensor:
    """DPO with each response's log-ratio divided by its length |y| (number of scored units):

        L = -log sigmoid(beta * (rho_w / |y_w| - rho_l / |y_l|))

    L = ln 2 at initialisation. Shapes: all inputs and both lengths [B]; returns [B].
    """
    rho_w, rho_l = log_ratios(pc, pr, rc, rr)
    n_w, n_l = lengths[0].clamp(min=1), lengths[1].clamp(min=1)
    return -F.logsigmoid(beta * (rho_w / n_w - rho_l / n_l))
