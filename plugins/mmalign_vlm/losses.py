"""mDPO (Wang et al. 2024, "mDPO: Conditional Preference Optimization for Multimodal LLMs")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mmalign.losses import LossSpec, log_ratio_difference


def mdpo(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float,
         chosen_corrupted: tuple[Tensor, Tensor], conditional_weight: float = 1.0, anchor_weight: float = 1.0,
         anchor: float = 0.0) -> Tensor:
    """mDPO = DPO + image-conditional preference + anchor, with m the true image, m' a corrupted one:

        L_DPO  = -log sigmoid(beta * h)
        L_cond = -log sigmoid(beta * [(s_pol(y_w|m) - s_ref(y_w|m)) - (s_pol(y_w|m') - s_ref(y_w|m'))])
        L_anc  = -log sigmoid(beta * (s_pol(y_w|m) - s_ref(y_w|m)) - anchor)
        L      = L_DPO + conditional_weight * L_cond + anchor_weight * L_anc

    The plugin supplies ``chosen_corrupted`` = (s_pol(y_w|m'), s_ref(y_w|m')) when
    ``model.options.corrupted_image`` is set. Shapes: all [B]; returns [B].
    """
    dpo = -F.logsigmoid(beta * log_ratio_difference(pc, pr, rc, rr))
    chosen_ratio = pc - rc
    corrupted_ratio = chosen_corrupted[0] - chosen_corrupted[1]
    conditional = -F.logsigmoid(beta * (chosen_ratio - corrupted_ratio))
    anchored = -F.logsigmoid(beta * chosen_ratio - anchor)
    return dpo + conditional_weight * conditional + anchor_weight * anchored


MDPO = LossSpec("mdpo", mdpo, needs_reference=True, extras=("chosen_corrupted",),
                summary="mDPO (Wang et al. 2024): DPO + image-conditional preference + anchor")
