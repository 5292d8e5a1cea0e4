"""The list of built-in losses and the ``@loss`` decorator that fills it.

The plugin's ``mmalign_register_losses`` hook registers every entry of :data:`BUILTIN_LOSSES`;
the core never reads this list, it only sees the LossSpecs the hook hands to the registry.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor

from mmalign.losses.spec import LossOptionError, LossSpec, Responses

BUILTIN_LOSSES: list[LossSpec] = []


def loss(name: str, *, needs_reference: bool = True, responses: Responses = "pair",
         lengths: bool = False, score_kinds: Optional[tuple[str, ...]] = None, summary: str = "",
         bind: Optional[Callable] = None):
    """Decorator: register a built-in loss under ``name`` (see LossSpec for the arguments)."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        BUILTIN_LOSSES.append(LossSpec(name, fn, needs_reference, responses, lengths,
                                       score_kinds=score_kinds, summary=summary, bind=bind))
        return fn

    return wrap


def _check_label_smoothing(eps: float, high: float = 0.5) -> None:
    if not 0.0 <= eps < high:
        raise LossOptionError(f"loss.options.label_smoothing: must be in [0, {high}); got {eps}.")
