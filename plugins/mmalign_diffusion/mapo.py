"""MaPO (Hong et al. 2024, "Margin-aware Preference Optimization for Aligning Diffusion Models
without Reference"): the reference-free member of the family for diffusion models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmalign.losses import LossSpec


def _likelihood_proxy(u: Tensor) -> Tensor:
    """f(u) = u / (exp(u) - 1): decreasing in the (scaled) denoising error u > 0, f(0+) = 1."""
    u = u.clamp(min=1e-12)
    return u / torch.expm1(u)


def mapo(pc: Tensor, pr: Tensor, rc: Tensor | None, rr: Tensor | None, *, beta: float,
         snr: float = 0.5, timesteps: int = 1000) -> Tensor:
    """MaPO on the diffusion plugin's scores s = -mse / 2, so mse = -2 s per image:

        m_w = -2 s_theta(x, y_w),   m_l = -2 s_theta(x, y_l)            (per-image denoising errors)
        margin = f(snr * m_w) - f(snr * m_l),   f(u) = u / (exp(u) - 1)
        L = m_w - beta * log sigmoid(T * margin)

    The first term keeps fitting the preferred images; the second widens the likelihood margin
    between preferred and dispreferred ones, scaled by the number of training timesteps T as in the
    paper's implementation. ``beta`` is MaPO's beta (0.1 there), not Diffusion-DPO's. No reference
    model. Shapes: pc, pr [B]; returns [B].
    """
    m_w, m_l = -2.0 * pc, -2.0 * pr
    margin = _likelihood_proxy(snr * m_w) - _likelihood_proxy(snr * m_l)
    return m_w - beta * F.logsigmoid(timesteps * margin)


MAPO = LossSpec("mapo", mapo, needs_reference=False, score_kinds=("denoising",),
                summary="MaPO (Hong et al. 2024): reference-free margin-aware loss for diffusion")
