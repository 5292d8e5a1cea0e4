"""Per-token policy losses of the online algorithms, KL estimators and loss aggregations: pure
functions of per-token log-probs.

Shapes: C contexts, G responses per context, U tokens per response.
  logp      [C, G, U]  log-probs of the current policy (with gradient)
  old_logp  [C, G, U]  of the policy that sampled the responses (detached)
  ref_logp  [C, G, U]  of the reference (detached)
  mask      [C, G, U]  1 (or True) on real tokens
  advantages [C, G] (sequence-level, broadcast over the tokens) or [C, G, U] (token-level)
Per-token losses have 0 on padding; ``aggregate`` turns them into per-context losses [C].
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmalign.losses.spec import LossOptionError

AGGREGATIONS = ("sequence_mean", "token_mean", "constant_norm")


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """KL estimator k1 (Schulman 2020, "Approximating KL divergence"), tokens sampled from the policy:

        k1 = log pi(y_t) - log pi_ref(y_t)

    Unbiased for KL(pi || pi_ref), high variance, negative on some tokens. Shapes: [...] -> [...].
    """
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """KL estimator k2 (Schulman 2020): k2 = 1/2 * (log pi(y_t) - log pi_ref(y_t))^2.
    Biased, low variance, >= 0. Shapes: [...] -> [...]."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """KL estimator k3 (Schulman 2020; the one GRPO uses, DeepSeekMath eq. 4), with
    d = log pi_ref(y_t) - log pi(y_t):

        k3 = exp(d) - d - 1

    Unbiased for KL(pi || pi_ref), >= 0 (exp(d) >= 1 + d), 0 where pi = pi_ref. Shapes: [...] -> [...].
    """
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over the real tokens (0 when there are none). Shapes: x, mask [...]; returns []."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _per_token(advantages: Tensor, like: Tensor) -> Tensor:
    """Sequence-level advantages [C, G] broadcast over the tokens of ``like`` [C, G, U]."""
    return advantages.unsqueeze(-1) if advantages.dim() == like.dim() - 1 else advantages


def _clipped_objective(log_ratio: Tensor, advantages: Tensor, mask: Tensor, eps_low: float,
                       eps_high: float) -> tuple[Tensor, dict[str, Tensor]]:
    """-min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) with rho = exp(log_ratio), and the
    fractions of real tokens where the clip is active (the gradient is cut) on each side."""
    advantages = _per_token(advantages, log_ratio)
    ratio = torch.exp(log_ratio)
    clipped_ratio = ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = -torch.min(ratio * advantages, clipped_ratio * advantages) * mask.to(ratio.dtype)
    clipped_low = (ratio < 1 - eps_low) & (advantages < 0)  # min picks the clipped term
    clipped_high = (ratio > 1 + eps_high) & (advantages > 0)
    metrics = {"clip_low": masked_mean(clipped_low.float(), mask).detach(),
               "clip_high": masked_mean(clipped_high.float(), mask).detach()}
    return loss, metrics


def clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                      eps_low: float = 0.2, eps_high: float = 0.2) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clip (Schulman et al. 2017, eq. 7) per token, with DAPO's decoupled range (clip-higher,
    Yu et al. 2025, eq. 10; eps_low = eps_high gives PPO/GRPO):

        rho_t = exp(logp_t - old_logp_t)
        L_t   = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t)

    With old_logp = logp.detach() (one update per rollout) rho = 1 and the gradient is -A * grad logp.
    Metrics: "clip_low" = fraction of real tokens with rho < 1 - eps_low and A < 0, "clip_high" =
    with rho > 1 + eps_high and A > 0 (where the clip is active and the token gets no gradient).
    Shapes: logp, old_logp, mask [C, G, U]; advantages [C, G] or [C, G, U];
    returns (per-token loss [C, G, U] with 0 on padding, metrics of scalars).
    """
    return _clipped_objective(logp - old_logp, advantages, mask, eps_low, eps_high)


def sequence_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO's sequence importance ratio (Zheng et al. 2025, eq. 7), length-normalised:

        s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|) = exp(1/|y_i| * sum_t (logp_t - old_logp_t))

    Shapes: logp, old_logp, mask [C, G, U]; returns [C, G] (1 for an empty response)."""
    mask = mask.to(logp.dtype)
    return torch.exp(((logp - old_logp) * mask).sum(-1) / mask.sum(-1).clamp(min=1))


def gspo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
              eps_low: float = 3e-4, eps_high: float = 4e-4,
              token_level: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025, eq. 5): the PPO-clip objective on the sequence ratio s_i:

        L_i = -min(s_i * A_i, clip(s_i, 1 - eps_low, 1 + eps_high) * A_i)

    The paper's ranges are tiny (eps_low = 3e-4, eps_high = 4e-4) since s_i is a per-token geometric
    mean. The value L_i is written on every real token of response i, so ``aggregate(...,
    "sequence_mean")`` gives the paper's (1/G) sum_i L_i (other modes weigh long responses more).
    token_level=True is GSPO-token (eq. 13): s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)], same value
    as s_i, but each token's gradient is its own, so token-level advantages [C, G, U] may be used.
    Metrics as ``clipped_surrogate`` (fractions of real tokens).
    Shapes: logp, old_logp, mask [C, G, U]; advantages [C, G] (or [C, G, U] with token_level);
    returns (per-token loss [C, G, U] with 0 on padding, metrics of scalars).
    """
    log_s = torch.log(sequence_ratio(logp, old_logp, mask)).unsqueeze(-1)
    if token_level:
        log_ratio = logp - logp.detach() + log_s.detach()
    else:
        log_ratio = log_s.expand_as(logp)
    return _clipped_objective(log_ratio, advantages, mask, eps_low, eps_high)


def aggregate(per_token: Tensor, mask: Tensor, mode: str, *,
              max_length: int | None = None) -> Tensor:
    """Per-token losses to per-context losses [C] whose MEAN over C is the aggregated scalar:

      "sequence_mean" (GRPO, Shao et al. 2024 eq. 3): mean over each response's tokens, then mean
          over the G responses: loss_c = 1/G sum_g (1/|y_cg| sum_t l_cgt).
      "token_mean" (DAPO, Yu et al. 2025 eq. 12): sum over all tokens / number of real tokens N in the
          batch: loss_c = C * sum_{g,t} l_cgt / N, so mean_c loss_c = sum l / N.
      "constant_norm" (Dr. GRPO, Liu et al. 2025; TRL's "dr_grpo"): each group's token sum over the
          constant G * max_length (max_length = the generation's max_new_tokens, not the padded U):
          loss_c = sum_{g,t} l_cgt / (G * max_length).
    Padding must already be 0 in per_token or is zeroed here. An empty response counts as 0 in
    "sequence_mean". Shapes: per_token, mask [C, G, U]; returns [C].
    """
    if mode not in AGGREGATIONS:
        raise LossOptionError(f"algorithm.options.loss_aggregation: {mode!r} is not one of "
                              f"{', '.join(AGGREGATIONS)}.")
    mask = mask.to(per_token.dtype)
    sums = (per_token * mask).sum(-1)  # [C, G]
    if mode == "sequence_mean":
        return (sums / mask.sum(-1).clamp(min=1)).mean(dim=1)
    if mode == "token_mean":
        return sums.sum(dim=1) * per_token.shape[0] / mask.sum().clamp(min=1)
    if max_length is None or max_length < 1:
        raise LossOptionError("algorithm.options.max_new_tokens: the 'constant_norm' aggregation "
                              f"needs the maximum completion length (a positive int); got {max_length}.")
    return sums.sum(dim=1) / (per_token.shape[1] * max_length)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *,
               clip: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped value loss (OpenAI baselines ppo2; TRL's PPOTrainer), masked mean over tokens:

        V_clip = V_old + clip(V - V_old, -c, c)
        L      = 0.5 * max((V - R)^2, (V_clip - R)^2)

    Also returns the fraction of real tokens where the clipped term is the larger (detached).
    Shapes: values, old_values, returns, mask [..., U]; returns (loss [], clip fraction [])."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    return loss, masked_mean((clipped_error > unclipped_error).float(), mask).detach()


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """Explained variance of the value head (OpenAI baselines), over the real tokens:

        ev = 1 - Var[R - V] / Var[R]

    1: perfect values, 0: no better than a constant, < 0: worse. NaN when Var[R] = 0 (as baselines).
    Both variances divide by N (the correction would cancel). Shapes: [..., U]; returns []."""
    values, returns = values.detach(), returns.detach()
    residual = returns - values
    residual_variance = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    returns_variance = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    nan = torch.full_like(returns_variance, float("nan"))
    return torch.where(returns_variance > 0, 1 - residual_variance / returns_variance, nan)
