"""LossSpec: a loss function and what it needs, declared once; the one way every loss is called."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Literal, Optional

from torch import Tensor

from mmalign.errors import ConfigError

Responses = Literal["pair", "single", "group"]


@dataclass(frozen=True)
class LossSpec:
    """A loss function and what the engine must know about it, checked once at start-up against
    what the modality plugin provides (:func:`mmalign.losses.objective.check_fits`).

    responses:   "pair" (chosen, rejected), "single" (one response per context: SFT, KTO) or
                 "group" (k responses per context: ``fn(policy, reference, *, beta, values,
                 **options) -> [C]`` receives the two Scores objects and the batch's values)
    lengths:     the function takes ``lengths=(units_chosen, units_rejected)``
    per_unit:    it needs per-unit scores (``Scores.unit_scores``), e.g. per-token log-probs
    extras:      names of further scores it needs (mDPO's "chosen_corrupted"); each arrives as the
                 keyword argument ``name=(policy [C], reference [C] or None)``
    score_kinds: the kinds of score it is defined on ("log_prob" for ORPO's odds); None: any
    bind:        ``bind(options, lookup) -> options``, run once at start-up (``weighted`` parses its
                 terms against the registry there, not on every call)
    unit_separable: ``unit_separable(options) -> bool``: with these options the loss is a sum of
                 per-unit terms, each depending on its own unit's score only (the normalizers on the
                 mask only), so an update may backpropagate unit by unit (mmalign/unit_chunks.py)
    """

    name: str
    fn: Callable[..., Tensor]
    needs_reference: bool = True
    responses: Responses = "pair"
    lengths: bool = False
    per_unit: bool = False
    extras: tuple[str, ...] = ()
    score_kinds: Optional[tuple[str, ...]] = None
    summary: str = ""
    bind: Optional[Callable[[dict, Callable], dict]] = None
    unit_separable: Optional[Callable[[dict], bool]] = None

    @property
    def paired(self) -> bool:
        return self.responses == "pair"

    @cached_property
    def options(self) -> dict[str, object]:
        """Keyword options of the function beyond what the engine passes, with their defaults
        (read from the signature once)."""
        engine = {"beta", "lengths", "values", *self.extras}
        return {p.name: p.default for p in inspect.signature(self.fn).parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.name not in engine}


def log_ratio_difference(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
    """h = (pc - rc) - (pr - rr), shape [B]."""
    return (pc - rc) - (pr - rr)


def log_ratios(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor]:
    """(rho_w, rho_l) = (pc - rc, pr - rr): each response's log-ratio to the reference, [B] each."""
    return pc - rc, pr - rr


class LossOptionError(ConfigError, ValueError):
    """A loss option out of range: a ConfigError for the CLI (exit code 2, no traceback) and a
    ValueError for code that calls the function directly."""


def nll_term(pc: Tensor, chosen_lengths: Tensor) -> Tensor:
    """The SFT/NLL term mixed into a preference loss with ``loss.sft_weight`` (as in RPO,
    Pang et al. 2024): L_total = L_pref + w * (-s_theta(x, y_w) / |y_w|). Returns [B]."""
    return -pc / chosen_lengths.clamp(min=1)


def call_loss(spec: LossSpec, pc: Tensor, pr: Tensor | None, rc: Tensor | None, rr: Tensor | None,
              *, beta: float, lengths: tuple[Tensor, Tensor | None], options: dict,
              extras: dict[str, tuple] | None = None) -> Tensor:
    """The calling convention of pair and single losses:
    ``fn(pc, pr, rc, rr, *, beta, [lengths], [<extra>=(policy, reference)], **options) -> [B]``,
    with ``lengths`` and the extras passed only to the functions that declare them."""
    kwargs = dict(options, **(extras or {}))
    if spec.lengths:
        kwargs["lengths"] = lengths
    return spec.fn(pc, pr, rc, rr, beta=beta, **kwargs)
