"""The built-in preference losses, a plugin like any other (entry point ``losses`` of the
``mmalign`` group): short pure functions over scores, each declared with ``@loss(...)``.

The notation (pc, pr, rc, rr; rho and h) is in :mod:`mmalign.losses`. Adding a built-in loss is a
function plus ``@loss(...)`` in one of this package's modules; a third-party plugin registers a
``LossSpec`` through its own ``mmalign_register_losses`` hook instead.
"""

from mmalign.hookspecs import hookimpl
from mmalign_losses.builtin import BUILTIN_LOSSES, loss
from mmalign_losses.pairwise import (aot, aot_unpaired, apo_down, apo_zero, bco_pair, discopop, exo_pair,
                                     hinge, ipo, nca_pair, robust, sigmoid, sigmoid_norm, sppo_hard)
from mmalign_losses.reference_free import cpl, cpo, log_odds, orpo, sft, simpo
from mmalign_losses.combine import combination, parse_terms, weighted, weighted_sum
from mmalign_losses.kto import kto, kto_reference_point


@hookimpl
def mmalign_register_losses(register):
    for spec in BUILTIN_LOSSES:
        register(spec)


__all__ = ["BUILTIN_LOSSES", "aot", "aot_unpaired", "apo_down", "apo_zero", "bco_pair", "combination", "cpl", "cpo",
           "discopop", "exo_pair", "hinge", "ipo", "kto", "kto_reference_point", "log_odds", "loss",
           "nca_pair", "orpo", "parse_terms", "robust", "sft", "sigmoid", "sigmoid_norm", "simpo",
           "sppo_hard", "weighted", "weighted_sum"]
