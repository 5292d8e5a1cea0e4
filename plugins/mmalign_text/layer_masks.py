"""Per-layer attention masks for prefix sharing and packing, learned from the model itself.

A 4D mask handed to a transformers model is used as is, so windowed models (Mistral, Phi-3, Qwen2/3
with ``use_sliding_window``, the local layers of Gemma-2/3, Llama-4's chunked layers) would see a
fully causal pattern. Each kind of layer restricts the shared mask (prompt, own completion, own
pair) further, on the *logical* position ids (a token's position in its own [prompt | completion]
sequence), exactly as ``transformers.masking_utils`` defines the patterns:

    full:       visible(q, k) = shared(q, k)
    sliding W:  visible(q, k) = shared(q, k)  and  pos(q) - pos(k) < W        (sliding_window_overlay)
    chunked C:  visible(q, k) = shared(q, k)  and  pos(q) // C == pos(k) // C (chunked_overlay)

so every token sees what it sees in its own sequence, alone and unpadded.

Which layer does what is not guessed from the architecture's name: once per model, a probe runs a
7-token forward (plus one padding token) with the model's own masks (windows shrunk to 2 and
chunks to 3 tokens, so that every pattern shows), records the mask each layer receives, and names
its pattern. The probe runs the model as scoring does (through PEFT, DDP and FSDP2 wrappers, so
forward hooks on it fire for the probe too), compiled layers eagerly. A second probe
forward passes our masks (one tensor, or a dict ``{layer type: mask}`` where layers differ) and
checks that every layer receives exactly the mask it built itself. If any layer's pattern is
unknown, the masks are not routed to it, or the attention implementation takes no 4D mask
(flash attention), :func:`mask_plan` returns None and the caller scores on the plain path
(two padded rows per pair, the model building its own masks), logged once.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from mmalign_text.logps import unwrap

log = logging.getLogger("mmalign")

PROBE_LENGTH = 8  # 7 tokens and one right padding, so that every layer's mask is materialized
REAL = PROBE_LENGTH - 1
PROBE_SIZES = {"sliding_window": 2, "attention_chunk_size": 3}  # differ, so the patterns differ
LAYER_TYPE_KINDS = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "chunked"}
_plans: "weakref.WeakKeyDictionary[nn.Module, Optional[MaskPlan]]" = weakref.WeakKeyDictionary()
_logged: set[str] = set()


@dataclass(frozen=True)
class Pattern:
    kind: str  # "full" | "sliding" | "chunked"
    size: int = 0  # window or chunk size, in tokens

    def restrict(self, allowed: Tensor, positions: Tensor) -> Tensor:
        """[R, 1, T, T] shared mask, [R, T] logical positions -> this pattern's mask."""
        pq, pk = positions[:, None, :, None], positions[:, None, None, :]
        if self.kind == "sliding":
            allowed = allowed & (pq - pk < self.size)
        elif self.kind == "chunked":
            allowed = allowed & (torch.div(pq, self.size, rounding_mode="floor")
                                 == torch.div(pk, self.size, rounding_mode="floor"))
        eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
        return allowed | eye  # padding attends to itself (no NaN); real tokens always see themselves


@dataclass(frozen=True)
class MaskPlan:
    """How to hand masks to one model: one pattern for all layers, or one per layer type."""
    single: Optional[Pattern]
    by_type: Optional[dict[str, Pattern]]
    additive: bool  # eager attention adds the mask to its scores: 0 / most negative

    def masks(self, allowed: Tensor, positions: Tensor, dtype: torch.dtype = torch.float32):
        """The shared mask [R, 1, T, T] and logical positions [R, T] -> the ``attention_mask`` to
        pass: one 4D mask, or ``{layer type: 4D mask}``; additive masks in ``dtype``."""
        if self.single is not None:
            return self._format(self.single.restrict(allowed, positions), dtype)
        return {name: self._format(p.restrict(allowed, positions), dtype) for name, p in self.by_type.items()}

    def _format(self, mask: Tensor, dtype: torch.dtype) -> Tensor:
        if not self.additive:
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def mask_plan(model: nn.Module) -> Optional[MaskPlan]:
    """The model's mask plan (probed once per model), or None: use the plain path."""
    base = unwrap(model)
    if base not in _plans:
        plan, reason = _probe(model, base)
        if plan is None:
            _log_once(f"prefix sharing and packing are off for {type(base).__name__}: {reason}. Pairs are "
                      f"scored as two padded rows each (same scores, more compute).")
        _plans[base] = plan
    return _plans[base]


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.warning(message)


def _probe(model: nn.Module, base: nn.Module) -> tuple[Optional[MaskPlan], str]:
    """Runs ``model`` as given (through its wrappers: FSDP2 takes its first forward as the root's
    and then refuses the root's; a layer run alone would see sharded weights) with the decoder's
    windows and chunks shrunk to the probe sizes, then restored. Returns (plan, why there is none)."""
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if not isinstance(decoder, nn.Module):
        return None, "it has no decoder (get_decoder) to probe"
    config = decoder.config
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    if impl not in ("sdpa", "eager"):
        return None, f"attn_implementation '{impl}' takes no 4D attention mask"
    real_sizes = {k: getattr(config, k, None) for k in PROBE_SIZES}
    try:
        for key, size in PROBE_SIZES.items():
            if real_sizes[key] is not None:
                setattr(config, key, size)
        kinds, reason = _observed_kinds(model, decoder, config, impl)
    except Exception as e:  # a model the probe cannot run: the plain path, never a wrong score
        return None, f"the mask probe failed ({type(e).__name__}: {e})"
    finally:
        for key, size in real_sizes.items():
            if size is not None:
                setattr(config, key, size)
    return (None, reason) if kinds is None else (_plan_from(config, kinds, impl, real_sizes), "")


def _observed_kinds(model: nn.Module, decoder: nn.Module, config, impl: str) -> tuple[Optional[set[str]], str]:
    """The attention kinds the decoder's layers use, checked to come out the same when the plugin
    passes the masks; (None, why) otherwise."""
    padding = torch.ones(1, PROBE_LENGTH, dtype=torch.long)
    padding[0, REAL:] = 0  # with padding, sdpa cannot skip the mask for is_causal (a bidirectional layer would hide)
    own = _layer_masks(model, decoder, padding)
    if not own:
        return None, "no layer receives an attention_mask keyword the plugin could set"
    patterns = {name: _pattern_of(mask) for name, mask in own.items()}
    unknown = [name for name, p in patterns.items() if p is None]
    if unknown:
        return None, f"layer '{unknown[0]}' uses an attention pattern the plugin does not reproduce"
    kinds = set(patterns.values())
    plan = _plan_from(config, kinds, impl, PROBE_SIZES)
    if plan is None:
        return None, "its layers differ in attention pattern and no config.layer_types name them"
    causal = torch.ones(PROBE_LENGTH, PROBE_LENGTH, dtype=torch.bool).tril()[None, None]
    masks = plan.masks(causal, torch.arange(PROBE_LENGTH)[None], next(decoder.parameters()).dtype)
    given = _layer_masks(model, decoder, masks)
    if any(name not in given or given[name] is None or not torch.equal(_as_bool(given[name]), _as_bool(m))
           for name, m in own.items()):
        return None, "it does not route the given per-layer masks to its layers"
    return kinds, ""


def _plan_from(config, kinds: set[str], impl: str, sizes: dict) -> Optional[MaskPlan]:
    """One pattern for all layers, or one per ``config.layer_types`` entry; None where the
    layers differ but no layer types name them, or a window size is missing."""
    size_of = {"full": 0, "sliding": sizes["sliding_window"], "chunked": sizes["attention_chunk_size"]}
    additive = impl == "eager"
    if len(kinds) == 1:
        kind = next(iter(kinds))
        return None if size_of[kind] is None else MaskPlan(Pattern(kind, size_of[kind]), None, additive)
    types = set(getattr(config, "layer_types", None) or [])
    if not types or not types <= set(LAYER_TYPE_KINDS) or not kinds <= {LAYER_TYPE_KINDS[t] for t in types}:
        return None
    if any(size_of[LAYER_TYPE_KINDS[t]] is None for t in types):
        return None
    return MaskPlan(None, {t: Pattern(LAYER_TYPE_KINDS[t], size_of[LAYER_TYPE_KINDS[t]]) for t in types}, additive)


def _layer_masks(model: nn.Module, decoder: nn.Module, attention_mask) -> dict[str, Optional[Tensor]]:
    """Run ``model`` on the probe's embeddings (zeros: no token id, so no VLM image placeholder);
    {module name: the 4D mask (or None) it received as ``attention_mask``} for every module
    inside the decoder."""
    seen: dict[str, Optional[Tensor]] = {}

    def record(name):
        def hook(module, args, kwargs):
            mask = kwargs.get("attention_mask", "absent")
            if mask is None or (isinstance(mask, Tensor) and mask.dim() == 4):
                seen[name] = mask
        return hook

    hooks = [m.register_forward_pre_hook(record(n), with_kwargs=True) for n, m in decoder.named_modules() if n]
    weight = decoder.get_input_embeddings().weight
    device = weight.device
    embeds = torch.zeros(1, PROBE_LENGTH, weight.shape[-1], dtype=weight.dtype, device=device)
    if isinstance(attention_mask, dict):
        attention_mask = {k: v.to(device) for k, v in attention_mask.items()}
    try:  # eagerly: compiled layers (model.options.compile) would be traced for the probe and its hooks
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            model(inputs_embeds=embeds, attention_mask=attention_mask.to(device) if isinstance(attention_mask, Tensor)
                  else attention_mask, position_ids=torch.arange(PROBE_LENGTH, device=device)[None], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _as_bool(mask: Tensor) -> Tensor:
    """A received 4D mask as [REAL, REAL] bool visibility among the probe's real tokens."""
    mask = mask[0, 0, :REAL, :REAL].cpu()
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


def _pattern_of(mask: Optional[Tensor]) -> Optional[str]:
    """The kind whose probe-size pattern the mask is, or None (also for no mask at all: with
    padding in the probe, a layer without one does something the plugin does not know)."""
    if mask is None or mask.shape[-2:] != (PROBE_LENGTH, PROBE_LENGTH):
        return None
    visible = _as_bool(mask)
    positions = torch.arange(REAL)[None]
    causal = torch.ones(REAL, REAL, dtype=torch.bool).tril()[None, None]
    for kind in ("full", "sliding", "chunked"):
        size = {"sliding": PROBE_SIZES["sliding_window"], "chunked": PROBE_SIZES["attention_chunk_size"]}.get(kind, 0)
        if torch.equal(Pattern(kind, size).restrict(causal, positions)[0, 0], visible):
            return kind
    return None
