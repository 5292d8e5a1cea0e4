"""KTO (Ethayarajh et al. 2024) for unpaired data: a tested pure function, not yet registered."""

from __future__ import annotations


import torch
from torch import Tensor


# KTO is a tested pure function but not a registered loss: it needs unpaired records with a
# desirable/undesirable label ({prompt, completion, label}) and a batch of mismatched pairs for its
# reference point, and no modality plugin feeds such batches to the engine yet.

def kto_reference_point(policy_mismatched: Tensor, reference_mismatched: Tensor) -> Tensor:
    """KTO's reference point z0 (Ethayarajh et al. 2024, section 4.1): a biased estimate of
    KL(pi_theta || pi_ref) from mismatched pairs (x_i, y_j), i != j, of the batch, clamped at 0
    and detached (no gradient flows through it):

        z0 = max(0, mean_i(s_theta(x_i, y_j) - s_ref(x_i, y_j)))

    Shapes: both inputs [M]; returns a scalar tensor. The caller (the engine, once KTO data is
    wired) scores the mismatched pairs; under data parallelism it should average over processes.
    """
    return (policy_mismatched - reference_mismatched).mean().clamp(min=0).detach()


def kto(policy: Tensor, reference: Tensor, desirable: Tensor, *, beta: float,
        reference_point: Tensor | float, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> Tensor:
    """KTO (Ethayarajh et al. 2024, eq. 8) for unpaired responses labelled desirable or not:

        rho = s_theta(x, y) - s_ref(x, y)
        L = lambda_D * (1 - sigmoid(beta * (rho - z0)))    if y is desirable
            lambda_U * (1 - sigmoid(beta * (z0 - rho)))    if y is undesirable

    z0 = ``reference_point``, from :func:`kto_reference_point`, supplied by the caller.
    lambda_D, lambda_U = ``desirable_weight``, ``undesirable_weight``; the paper advises
    lambda_D * n_D / (lambda_U * n_U) in [1, 4/3] for n_D desirable and n_U undesirable examples.
    L = lambda / 2 at initialisation (rho = 0, z0 = 0).
    Shapes: policy, reference [B] scores; desirable [B] bool; returns [B].
    """
    rho = policy - reference
    z0 = torch.as_tensor(reference_point, dtype=rho.dtype, device=rho.device)
    gain = torch.where(desirable, torch.sigmoid(beta * (rho - z0)), torch.sigmoid(beta * (z0 - rho)))
    weight = torch.where(desirable, desirable_weight, undesirable_weight).to(rho.dtype)
    return weight * (1 - gain)
