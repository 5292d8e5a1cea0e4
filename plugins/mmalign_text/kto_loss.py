"""KTO through the engine for unpaired text records ``{"prompt", "completion", "label"}``."""

from __future__ import annotations

from torch import Tensor

from mmalign.losses import LossSpec
from mmalign_losses import kto, kto_reference_point


def kto_loss(pc: Tensor, pr: Tensor | None, rc: Tensor, rr: Tensor | None, *, beta: float,
             mismatched: tuple[Tensor, Tensor], desirable: tuple[Tensor, Tensor],
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tensor:
    """KTO (Ethayarajh et al. 2024, eq. 8) with the batch's reference point:

        z0 = max(0, mean_i(s_theta(x_i, y_{i+1}) - s_ref(x_i, y_{i+1})))     (mismatched pairs, detached)
        L  = lambda_D (1 - sigmoid(beta (rho - z0)))   if y is desirable
             lambda_U (1 - sigmoid(beta (z0 - rho)))   otherwise,   rho = s_theta(x, y) - s_ref(x, y)

    The text plugin scores the mismatched pairs (``mismatched`` = (policy, reference) [B]) and
    passes the labels (``desirable``: (labels, labels), 1.0 desirable). Under data parallelism z0
    is estimated per process. Shapes: pc, rc [B]; returns [B].
    """
    z0 = kto_reference_point(*mismatched)
    return kto(pc, rc, desirable[0].bool(), beta=beta, reference_point=z0,
               desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)


KTO = LossSpec("kto", kto_loss, needs_reference=True, responses="single", extras=("mismatched", "desirable"),
               summary="KTO (Ethayarajh et al. 2024): unpaired desirable/undesirable data")
