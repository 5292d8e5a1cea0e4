"""The core's loss API: how a preference loss is declared (LossSpec) and called (call_loss).

Every loss takes the four scores of a batch of pairs, each a tensor of shape ``[B]``:

    policy_chosen, policy_rejected   s_theta(x, y_w), s_theta(x, y_l)
    ref_chosen, ref_rejected         s_ref(x, y_w),   s_ref(x, y_l)   (None for reference-free losses)

and returns per-pair losses ``[B]`` (the engine averages them). The score ``s`` is whatever the
modality plugin supplies: summed response log-probs for text and VLMs, the negative weighted
denoising error for diffusion. Losses are written in terms of each response's log-ratio
rho and the log-ratio difference h:

    rho_w = s_theta(x, y_w) - s_ref(x, y_w),   rho_l = s_theta(x, y_l) - s_ref(x, y_l),   h = rho_w - rho_l

Reference-free losses (SimPO, ORPO, CPO, SFT) use the policy's scores alone; length-normalized ones
declare ``lengths`` = (|y_w|, |y_l|), the number of scored units of each response ([B] each).

The built-in losses (DPO, IPO, SimPO, ...) are the ``losses`` plugin (``plugins/mmalign_losses``),
registered through the ``mmalign`` entry-point group like a third-party plugin: a plugin adds a loss
by registering a ``LossSpec`` through the ``mmalign_register_losses`` hook. This package holds only
what the engine itself needs: the spec, the calling convention and the objective.
"""

from mmalign.losses.spec import (LossOptionError, LossSpec, call_loss, log_ratio_difference, log_ratios,
                                 nll_term)

__all__ = ["LossOptionError", "LossSpec", "call_loss", "log_ratio_difference", "log_ratios", "nll_term"]
