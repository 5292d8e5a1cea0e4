"""Advantage estimators of the online algorithms: pure functions, tensors in, tensors out.

Shapes: C contexts (prompts), G responses per context, U units (tokens) per response.
  rewards  [C, G]     one scalar score per response
  mask     [C, G, U]  1 (or True) on real tokens; real tokens form a prefix (right padding)
Sequence-level estimators return [C, G] (broadcast over the tokens by the loss); token-level ones
return [C, G, U] with 0 on padding. Nothing here needs gradients: callers pass detached tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmalign.losses.spec import LossOptionError

GROUP_SCALES = ("group", "batch", "none")


def group_advantages(rewards: Tensor, *, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """GRPO with outcome supervision (Shao et al. 2024, DeepSeekMath, sec. 4.1.2):

        A_cg = (r_cg - mean_g(r_c)) / (std + eps)

    ``scale`` picks the std, as TRL 1.16's ``scale_rewards``:
      "group": std of the group's G rewards (the paper);
      "batch": std of all C*G rewards (the mean stays the group's; Liu et al. 2025 suggest it);
      "none":  no division, A = r - mean_g(r) (Dr. GRPO, Liu et al. 2025).
    The std is the unbiased one (Bessel's correction, like torch.std and TRL's ``nanstd``); it is 0
    when only one reward enters it (TRL does the same). A group whose rewards are all equal gets A = 0.
    Shapes: rewards [C, G]; returns [C, G].
    """
    if scale not in GROUP_SCALES:
        raise LossOptionError(f"algorithm.options.scale_rewards: {scale!r} is not one of "
                              f"{', '.join(GROUP_SCALES)}.")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred
    if scale == "group":
        std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(rewards)
    else:
        std = rewards.std() if rewards.numel() > 1 else torch.zeros(())
    return centred / (std + eps)


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024, eq. 6): each response's baseline is the mean
    reward of the other G - 1 responses to the same prompt:

        A_i = r_i - 1/(G-1) * sum_{j != i} r_j  ( = G/(G-1) * (r_i - mean(r)) )

    Shapes: rewards [C, G] with G >= 2; returns [C, G].
    """
    group = rewards.shape[1]
    if group < 2:
        raise LossOptionError("algorithm.options.samples_per_prompt: RLOO needs at least 2 responses "
                              f"per prompt (the leave-one-out baseline); got {group}.")
    others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (group - 1)
    return rewards - others_mean


def remax_advantages(rewards: Tensor, greedy_rewards: Tensor) -> Tensor:
    """ReMax (Li et al. 2023, eq. 6): the baseline is the reward of the greedy response:

        A_cg = r_cg - r_c(greedy)

    Shapes: rewards [C, G], greedy_rewards [C]; returns [C, G].
    """
    return rewards - greedy_rewards.unsqueeze(1)


def last_token_onehot(mask: Tensor) -> Tensor:
    """1 at the last real token of each response, 0 elsewhere (0 everywhere for an empty response).
    Shapes: mask [..., U]; returns [..., U] float."""
    mask = mask.float()
    positions = torch.arange(mask.shape[-1], device=mask.device, dtype=mask.dtype)
    last = (positions * mask).amax(dim=-1, keepdim=True)
    return (positions == last).float() * mask


def kl_in_reward(rewards: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token rewards with the KL penalty inside the reward (Ziegler et al. 2019, eq. 2; Ouyang et
    al. 2022, eq. 2, InstructGPT; TRL's PPO):

        r_t = -beta * kl_t + 1[t = last real token] * r

    with kl_t a per-token KL estimate (e.g. ``policy_losses.kl_k1``). Padding gets 0.
    Shapes: rewards [C, G], kl and mask [C, G, U]; returns [C, G, U].
    """
    mask = mask.to(kl.dtype)
    return (-beta * kl + rewards.unsqueeze(-1) * last_token_onehot(mask)) * mask


def reinforce_pp_advantages(rewards: Tensor, kl_per_token: Tensor, mask: Tensor, *,
                            beta: float) -> Tensor:
    """REINFORCE++ (Hu 2025, eqs. 6-7; as OpenRLHF's "reinforce"): the undiscounted return of the
    KL-shaped per-token rewards, normalised over the whole batch:

        G_t = 1[t = last] * r - beta * sum_{s >= t} kl_s        (s over real tokens)
        A_t = (G_t - mu) / sigma

    mu and sigma^2 are the mean and the population (biased, divide by N) variance of G over all N real
    tokens of the batch, and 1/sigma = rsqrt(max(sigma^2, 1e-8)), exactly OpenRLHF's normalisation.
    Padding gets 0. Shapes: rewards [C, G], kl_per_token and mask [C, G, U]; returns [C, G, U].
    """
    mask = mask.to(kl_per_token.dtype)
    per_token = kl_in_reward(rewards, kl_per_token, mask, beta)
    returns = per_token.flip(-1).cumsum(-1).flip(-1)
    count = mask.sum()
    mean = (returns * mask).sum() / count
    variance = ((returns - mean) ** 2 * mask).sum() / count
    return (returns - mean) * variance.clamp(min=1e-8).rsqrt() * mask


def gae(rewards_per_token: Tensor, values: Tensor, mask: Tensor, *, gamma: float,
        lam: float) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, eqs. 11-16), as PPO for LMs uses it:

        delta_t = r_t + gamma * V_{t+1} - V_t       (V after the last real token = 0)
        A_t     = sum_{l >= 0} (gamma * lam)^l * delta_{t+l}  = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                          (the value head's regression target)

    Computed backwards over the tokens. Inputs are detached; padding gets 0 in both outputs.
    Shapes: rewards_per_token, values, mask [..., U] (e.g. [C, G, U] or [N, U]);
    returns (advantages, returns), both [..., U].
    """
    mask = mask.to(values.dtype)
    rewards_per_token = rewards_per_token.detach() * mask
    values = values.detach() * mask
    next_value = torch.zeros_like(values[..., 0])
    running = torch.zeros_like(values[..., 0])
    reversed_advantages = []
    for t in reversed(range(values.shape[-1])):
        delta = rewards_per_token[..., t] + gamma * next_value - values[..., t]
        running = delta + gamma * lam * running
        reversed_advantages.append(running)
        next_value = values[..., t]
    advantages = torch.stack(reversed_advantages[::-1], dim=-1) * mask
    return advantages, (advantages + values) * mask


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Masked whitening (TRL's ``masked_whiten``, used by InstructGPT-style PPO on advantages):

        whiten(x) = (x - mu) / sqrt(var + 1e-8)        (+ mu again when shift_mean=False)

    mu and var over the real tokens only, var unbiased (divide by N - 1, as TRL's ``masked_var``).
    Padding gets 0. Shapes: x, mask [..., U]; returns [..., U].
    """
    mask = mask.to(x.dtype)
    count = mask.sum()
    mean = (x * mask).sum() / count
    variance = ((x - mean) ** 2 * mask).sum() / count * (count / (count - 1))
    whitened = (x - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def dapo_keep_groups(rewards: Tensor) -> Tensor:
    """DAPO dynamic sampling (Yu et al. 2025, eq. 11's constraint 0 < |{correct}| < G): keep only the
    groups whose rewards are not all equal, since a zero-variance group has zero advantage and no
    gradient. Shapes: rewards [C, G]; returns bool [C] (True = keep).
    """
    return rewards.amax(dim=1) > rewards.amin(dim=1)


def overlong_penalty(lengths: Tensor, *, max_length: int, cache: int) -> Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, eq. 13), added to the rewards:

        R(L) = 0                                  if L <= L_max - L_cache
               ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
               -1                                 if L > L_max

    Shapes: lengths [C, G] (response lengths in tokens); returns [C, G] float.
    """
    if not 0 < cache <= max_length:
        raise LossOptionError(f"algorithm.options.overlong_cache: needs 0 < cache <= max_length "
                              f"({max_length}); got {cache}.")
    lengths = lengths.float()
    soft_start = max_length - cache
    ramp = (soft_start - lengths) / cache
    penalty = torch.where(lengths <= soft_start, torch.zeros_like(lengths), ramp)
    return torch.where(lengths > max_length, torch.full_like(lengths, -1.0), penalty)
