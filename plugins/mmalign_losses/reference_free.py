"""Reference-free losses: SimPO, CPO, ORPO, CPL and SFT (the engine skips the reference pass)."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor

from mmalign.losses.spec import LossOptionError
from mmalign_losses.builtin import loss


@loss("simpo", needs_reference=False, lengths=True,
      summary="SimPO (Meng et al. 2024): length-normalized margin with target gamma, no reference")
def simpo(pc: Tensor, pr: Tensor, rc: Tensor | None, rr: Tensor | None, *, beta: float,
          lengths: tuple[Tensor, Tensor], gamma: float = 0.5) -> Tensor:
    """SimPO (Meng et al. 2024): reference-free; the reward is the average score per unit,

        L = -log sigmoid(beta / |y_w| * s_theta(y_w) - beta / |y_l| * s_theta(y_l) - gamma)

    The paper's beta is large (2 to 10) and gamma about 0.5 to 1.5 (gamma / beta = 0.5 typical).
    L = log(1 + e^gamma) when both responses have the same average score. ``rc``, ``rr`` are
    ignored. Shapes: pc, pr and both lengths [B]; returns [B].
    """
    avg_w, avg_l = pc / lengths[0].clamp(min=1), pr / lengths[1].clamp(min=1)
    return -F.logsigmoid(beta * (avg_w - avg_l) - gamma)


@loss("cpo", needs_reference=False,
      summary="CPO (Xu et al. 2024): DPO without the reference (pair with loss.sft_weight = 1)")
def cpo(pc: Tensor, pr: Tensor, rc: Tensor | None, rr: Tensor | None, *, beta: float) -> Tensor:
    """Contrastive Preference Optimization (Xu et al. 2024), the preference term:
    DPO with a uniform reference, on the summed scores:

        L = -log sigmoid(beta * (s_theta(y_w) - s_theta(y_l)))

    The paper adds the NLL of the chosen response with weight 1: set ``loss.sft_weight: 1.0``.
    L = ln 2 when both scores are equal. ``rc``, ``rr`` are ignored. Shapes: pc, pr [B]; returns [B].
    """
    return -F.logsigmoid(beta * (pc - pr))


def log_odds(avg_logp: Tensor) -> Tensor:
    """log(p / (1 - p)) for p = exp(avg_logp), computed as avg_logp - log(-expm1(avg_logp)).
    ``avg_logp`` is clamped to at most -1e-6 first: an average log-prob of exactly 0 (every token
    certain) would give infinite odds. Shape: any; returns the same shape."""
    a = avg_logp.clamp(max=-1e-6)
    return a - torch.log(-torch.expm1(a))


@loss("orpo", needs_reference=False, lengths=True, score_kinds=("log_prob",),
      summary="ORPO (Hong et al. 2024): odds ratio of length-averaged log-probs, no reference "
              "(NLL term: loss.sft_weight = 1)")
def orpo(pc: Tensor, pr: Tensor, rc: Tensor | None, rr: Tensor | None, *, beta: float,
         lengths: tuple[Tensor, Tensor]) -> Tensor:
    """ORPO (Hong et al. 2024, eqs. 4-7), the odds-ratio term weighted by lambda = ``beta``:

        a = s_theta(y) / |y|                          (average log-prob per token)
        log odds(y) = a - log(1 - exp(a))
        L_OR = -log sigmoid(log odds(y_w) - log odds(y_l))
        L = beta * L_OR

    The paper's full loss is L_SFT + lambda * L_OR: the NLL term L_SFT is mmalign's
    ``loss.sft_weight`` (set it to 1.0). The score must be a log-probability (text, VLM), hence
    score_kinds=("log_prob",). L = beta * ln 2 when both averages are equal. ``rc``, ``rr`` are
    ignored. Shapes: pc, pr and both lengths [B]; returns [B].
    """
    avg_w, avg_l = pc / lengths[0].clamp(min=1), pr / lengths[1].clamp(min=1)
    return -beta * F.logsigmoid(log_odds(avg_w) - log_odds(avg_l))


def _check_conservative_bias(value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise LossOptionError(f"loss.options.conservative_bias: lambda must be in (0, 1]; got {value}.")


@loss("cpl", needs_reference=False,
      summary="CPL (Hejna et al. 2023): contrastive preference learning over segments, temperature "
              "alpha = beta, conservative bias lambda")
def cpl(pc: Tensor, pr: Tensor, rc: Tensor | None, rr: Tensor | None, *, beta: float,
        conservative_bias: float = 0.5) -> Tensor:
    """Contrastive Preference Learning (Hejna et al. 2023, "Contrastive Preference Learning:
    Learning from Human Feedback without RL", eq. 5 with the conservative bias of section 3.2):
    under the regret-based model of preferences the optimal advantage is A*(s, a) = alpha log
    pi*(a | s), so a segment's summed advantage is alpha * s_theta(sigma) with s_theta(sigma) =
    sum_t log pi(a_t | s_t) (discount 1 over a segment), and

        L = -log [ exp(alpha s_theta(sigma+)) / (exp(alpha s_theta(sigma+))
                                                  + exp(lambda alpha s_theta(sigma-))) ]
          = -log sigmoid(alpha s_theta(sigma+) - lambda alpha s_theta(sigma-))

    alpha (the temperature of the maximum-entropy RL framework) is ``loss.beta``; lambda in
    (0, 1] is ``conservative_bias`` (the paper's CPL(lambda)): lambda < 1 weighs the rejected
    segment less, a bias towards in-distribution actions that keeps the policy near the data;
    lambda = 1 is plain CPL, i.e. ``cpo``. The paper adds a behaviour-cloning term on the data
    (``loss.sft_weight``). L = log(1 + e^(alpha s (lambda - 1))) when both scores equal s.
    ``rc``, ``rr`` are ignored. Shapes: pc, pr [B]; returns [B].
    """
    _check_conservative_bias(conservative_bias)
    return -F.logsigmoid(beta * pc - conservative_bias * beta * pr)


@loss("sft", needs_reference=False, responses="single", lengths=True,
      summary="negative log-likelihood of the chosen/target response, per token")
def sft(pc: Tensor, pr: Tensor | None, rc: Tensor | None, rr: Tensor | None, *, beta: float,
        lengths: tuple[Tensor, Tensor | None]) -> Tensor:
    """Supervised fine-tuning (step 1 of Ouyang et al. 2022): maximise the target's score.

        L = -s_theta(x, y_w) / |y_w|

    with |y_w| the number of scored units (tokens for text). ``beta`` is unused.
    Shapes: pc [B], lengths[0] [B]; returns [B].
    """
    return -pc / lengths[0].clamp(min=1)
