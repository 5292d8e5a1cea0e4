"""Weighted combinations of losses: ``weighted`` (from the config) and ``combination`` (fixed,
e.g. MPO)."""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import Tensor

from mmalign.errors import ConfigError
from mmalign.losses.spec import LossSpec, call_loss
from mmalign_losses.builtin import BUILTIN_LOSSES, loss


# Weighted combinations: L = sum_k w_k * L_k (MPO and friends). A term is a registered loss with
# its own weight and options; every term gets the same scores, beta and lengths.

Term = tuple[LossSpec, float, dict]


def parse_terms(terms: object, lookup: Callable[[str, str], LossSpec],
                key: str = "loss.options.terms") -> list[Term]:
    """``{name: weight}`` or ``{name: {weight: w, <option>: value}}`` -> [(spec, weight, options)].

    ``lookup(name, key)`` resolves a loss name. Anything malformed is a ConfigError naming ``key``.
    """
    example = "{sigmoid: 0.8, bco_pair: 0.2, sft: 1.0}"
    if not isinstance(terms, dict) or not terms:
        raise ConfigError(f"{key}: give the losses to combine and their weights as a mapping, e.g. "
                          f"{example}; got {terms!r}.")
    parsed = []
    for name, value in terms.items():
        where = f"{key}.{name}"
        options = dict(value) if isinstance(value, dict) else {"weight": value}
        weight = options.pop("weight", None)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"{where}: the weight must be a finite number, as in `{name}: 0.5` or "
                              f"`{name}: {{weight: 0.5, <option>: <value>}}`; got {value!r}.")
        spec = lookup(name, where)
        needs = _not_passed_on(spec)
        if needs:  # e.g. scores only the engine supplies; a combination passes none on
            raise ConfigError(f"{where}: loss '{name}' needs '{needs}', which a weighted "
                              f"combination does not pass on to its terms; use it on its own.")
        unknown = set(options) - set(spec.options)
        if unknown:
            raise ConfigError(f"{where}: '{sorted(unknown)[0]}' is not an option of loss '{name}'. "
                              f"Its options: {', '.join(spec.options) or '(none)'}.")
        parsed.append((spec, float(weight), options))
    return parsed


def _not_passed_on(spec: LossSpec) -> str | None:
    """What ``spec`` needs beyond the scores, beta and lengths a combination passes on."""
    if spec.extras or spec.responses == "group":
        return spec.extras[0] if spec.extras else "grouped scores"
    required = [p.name for p in inspect.signature(spec.fn).parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.default is p.empty and p.name not in ("beta", "lengths")]
    return required[0] if required else None


def weighted_sum(terms: list[Term], pc: Tensor, pr: Tensor | None, rc: Tensor | None,
                 rr: Tensor | None, *, beta: float, lengths: tuple[Tensor, Tensor | None]) -> Tensor:
    """L = sum_k w_k * L_k(pc, pr, rc, rr; beta, options_k). Shapes: inputs [B]; returns [B]."""
    total = torch.zeros_like(pc)
    for spec, weight, options in terms:
        total = total + weight * call_loss(spec, pc, pr, rc, rr, beta=beta, lengths=lengths,
                                           options=options)
    return total


def bind_terms(options: dict, lookup: Callable[[str, str], LossSpec]) -> dict:
    """``weighted``'s ``bind``: parse ``terms`` once, at start-up, against the registry."""
    return dict(options, terms=parse_terms(options.get("terms"), lookup))


@loss("weighted", lengths=True, bind=bind_terms,
      summary="weighted sum of registered losses, given in loss.options.terms, "
              "e.g. {sigmoid: 0.8, bco_pair: 0.2, sft: 1.0}")
def weighted(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float,
             lengths: tuple[Tensor, Tensor], terms: dict | list | None = None) -> Tensor:
    """A weighted combination of registered losses, named in ``loss.options.terms``:

        L = sum_k w_k * L_k

    ``terms`` maps a loss name to its weight, or to ``{weight: w, <option>: value}`` for a term
    with options. Names resolve against the registry (a plugin's loss can be a term); the engine
    resolves them once (``bind_terms``) and passes the parsed list. The reference pass always
    runs, since a term may need it; for a fixed mix that is reference-free, build a LossSpec with
    :func:`combination` instead. Shapes: all inputs [B]; returns [B].
    """
    if not isinstance(terms, list):  # called directly with the config's mapping
        from mmalign.plugins import registry  # deferred: the registry imports this module

        terms = parse_terms(terms, lambda name, where: registry().get("losses", name, where))
    return weighted_sum(terms, pc, pr, rc, rr, beta=beta, lengths=lengths)


def combination(name: str, terms: dict, *, summary: str = "",
                specs: list[LossSpec] | None = None) -> LossSpec:
    """A LossSpec for a fixed weighted sum of losses (``terms`` as in ``weighted``), resolved now
    against ``specs`` (default: the built-ins). It needs the reference if any term does, is paired
    if any term is, and applies to the score kinds every term applies to. Register it from a
    plugin's ``mmalign_register_losses`` hook; ``mpo`` below is built this way."""
    by_name = {spec.name: spec for spec in (BUILTIN_LOSSES if specs is None else specs)}

    def lookup(term: str, where: str) -> LossSpec:
        if term not in by_name:
            raise ConfigError(f"{where}: '{term}' is not one of the losses given "
                              f"({', '.join(sorted(by_name))}).")
        return by_name[term]

    parsed = parse_terms(terms, lookup, key=f"combination '{name}' terms")
    formula = " + ".join(f"{w:g} * {spec.name}" for spec, w, _ in parsed)

    def combined(pc: Tensor, pr: Tensor | None, rc: Tensor | None, rr: Tensor | None, *,
                 beta: float, lengths: tuple[Tensor, Tensor | None]) -> Tensor:
        return weighted_sum(parsed, pc, pr, rc, rr, beta=beta, lengths=lengths)

    combined.__doc__ = f"L = {formula}. Shapes: all inputs [B]; returns [B]."
    kinds = None
    for spec, _, _ in parsed:
        if spec.score_kinds is not None:
            kinds = spec.score_kinds if kinds is None else tuple(k for k in kinds if k in spec.score_kinds)
    return LossSpec(name, combined, any(s.needs_reference for s, _, _ in parsed),
                    "pair" if any(s.paired for s, _, _ in parsed) else "single", lengths=True,
                    score_kinds=kinds, summary=summary or f"L = {formula}")


BUILTIN_LOSSES.append(combination(
    "mpo", {"sigmoid": 0.8, "bco_pair": 0.2, "sft": 1.0},
    summary="MPO (Wang et al. 2024): 0.8 * sigmoid + 0.2 * bco_pair + 1.0 * sft"))
