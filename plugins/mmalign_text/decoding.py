"""A lean decode loop for k samples per prompt, in place of HF ``generate``.

Each distinct prompt is prefilled once (left-padded, position ids from the padding mask as
``generate`` makes them) and its KV cache repeated k times (``DynamicCache.batch_repeat_interleave``);
then every step runs the model on one token per row with the cache, and picks the next token as
``generate`` does:

    scores = logits (fp32);  scores[EOS] = -inf while fewer than min_new_tokens are out
    greedy:  argmax scores
    sample:  scores / temperature (if != 1) -> top-p filter (if < 1; HF's TopPLogitsWarper rule)
             -> softmax -> one draw per row with the given generator (:func:`draw`)

With ``with_entropy`` each sampled token also gets the entropy of the distribution it was drawn
from, at the sampling temperature and before top-p (what verl logs as the policy's entropy):

    H_t = -sum_v p_t(v) log p_t(v),    p_t = softmax(scores_t / temperature)

Rows that ended with EOS continue with padding; the loop stops when every row has ended or after
``max_new_tokens``. At temperature 1 and top_p 1 this is ancestral sampling from the model, the
distribution ``generate`` samples from; the draws differ (one uniform number per row instead of
``torch.multinomial``'s V exponentials), greedy decoding is the same token for token.
``min_new_tokens`` is the model's ``generation_config`` value, as ``generate`` reads it. A model
whose layers are all full attention decodes with a static cache (no growing copies).

What ``generate`` would do differently is not reproduced but refused (:func:`fast_path_problem`):
encoder-decoders, models with their own cache or input preparation (Mamba, MiniMax, ...), cache
layers other than full or sliding attention, and ``generation_config`` settings that change the
distribution (repetition penalty, suppressed tokens, beams, ...). Those models use ``generate``.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from mmalign_text.causal_lm import unwrap

# generation_config keys whose values other than these change what generate samples
NEUTRAL = {
    "guidance_scale": (None, 1, 1.0), "sequence_bias": (None,), "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "min_length": (None, 0),
    "forced_bos_token_id": (None,), "forced_eos_token_id": (None,), "remove_invalid_values": (None, False),
    "exponential_decay_length_penalty": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "top_h": (None,), "min_p": (None,), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0), "watermarking_config": (None,), "renormalize_logits": (None, False),
    "stop_strings": (None,), "num_beams": (None, 1), "num_return_sequences": (None, 1),
    "cache_implementation": (None, "dynamic"), "prompt_lookup_num_tokens": (None,),
}


class Decoded(NamedTuple):
    """What :func:`decode` returns: new tokens [B, T] (padding after EOS); the log-probability each
    was drawn with and the entropy of the distribution it was drawn from, [B, T] (0 after the
    end), or None when not asked for."""

    tokens: Tensor
    logprobs: Optional[Tensor]
    entropy: Optional[Tensor]


def fast_path_problem(model: nn.Module) -> Optional[str]:
    """Why the lean loop would not sample as ``generate`` does for this model; None: it would.
    Checked on every call (it costs microseconds): a generation_config can change between calls."""
    from transformers import DynamicCache, GenerationMixin
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    base = unwrap(model)
    if not isinstance(base, GenerationMixin) or getattr(base.config, "is_encoder_decoder", False):
        return "it is not a decoder-only generation model"
    if not getattr(base, "_supports_default_dynamic_cache", lambda: True)() or \
            type(base).prepare_inputs_for_generation is not GenerationMixin.prepare_inputs_for_generation:
        return "it prepares its own cache or generation inputs"
    generation = getattr(base, "generation_config", None)
    for key, neutral in NEUTRAL.items():
        value = getattr(generation, key, None)
        if not any(value is n or (n is not None and value == n) for n in neutral):
            return f"its generation_config sets {key} = {value!r}"
    layers = DynamicCache(config=base.config.get_text_config(decoder=True)).layers
    if any(type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers):
        return "its cache has layers other than full or sliding attention"
    return None


def top_p_filter(scores: Tensor, top_p: float) -> Tensor:
    """HF's TopPLogitsWarper: drop the least likely tokens whose cumulative probability is at
    most 1 - top_p (the most likely token always stays). [B, V] -> [B, V] with -inf where dropped."""
    sorted_scores, order = torch.sort(scores, descending=False)
    remove = sorted_scores.softmax(-1).cumsum(-1) <= 1 - top_p
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))


def pick(scores: Tensor, generator: Optional[torch.Generator], *, temperature: float, top_p: float,
         greedy: bool, with_logprobs: bool) -> tuple[Tensor, Optional[Tensor]]:
    """The next token of every row [B] from fp32 scores [B, V] (module docstring), and the log of
    the probability it was drawn with when asked (greedy: of the scores as they are)."""
    if not greedy:
        if temperature != 1.0:
            scores = scores / temperature
        if top_p < 1.0:
            scores = top_p_filter(scores, top_p)
        token = draw(scores, generator)
    else:
        token = scores.argmax(-1)
    if not with_logprobs:
        return token, None
    return token, scores.log_softmax(-1).gather(1, token[:, None])[:, 0]


def entropy(scores: Tensor, temperature: float) -> Tensor:
    """H = -sum_v p(v) log p(v) of p = softmax(scores / temperature) per row [B] (0 log 0 = 0: an
    EOS masked to -inf adds nothing)."""
    return torch.special.entr((scores / temperature).softmax(-1)).sum(-1)


def draw(scores: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """One token per row from softmax(scores) [B, V], by inversion of its cumulative distribution:

        token = min { v : F(v) > u F(V) },    F(v) = sum_{w <= v} p(w),    u ~ U[0, 1)

    with p the fp32 softmax (as ``torch.multinomial`` in ``generate`` gets it) and F summed in fp64,
    so every token keeps its probability to fp64 rounding and a token of probability 0 is never
    drawn. One uniform number per row: ``torch.multinomial`` draws one exponential per row and
    token (V of them), which on a CPU costs more than the step's LM head."""
    cdf = scores.softmax(-1).double().cumsum(-1)
    u = torch.rand((scores.shape[0], 1), generator=generator, dtype=torch.float64, device=scores.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0].clamp(max=scores.shape[-1] - 1)


@torch.no_grad()
def decode(model: nn.Module, prompts: list[list[int]], repeats: int, *, max_new_tokens: int, eos: int, pad: int,
           generator: Optional[torch.Generator] = None, temperature: float = 1.0, top_p: float = 1.0,
           greedy: bool = False, with_logprobs: bool = False, with_entropy: bool = False) -> Decoded:
    """``repeats`` continuations of each prompt, rows prompt-major (row i * repeats + j is prompt
    i's j-th), as :class:`Decoded`. T <= max_new_tokens: the loop stops early when every row has
    ended. ``with_entropy`` needs sampling (not ``greedy``). The model runs in its current mode
    (callers put it in eval)."""
    base = unwrap(model)
    device = next(base.parameters()).device
    accepts = inspect.signature(base.forward).parameters
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.ones((len(prompts), width + max_new_tokens), dtype=torch.long)  # the prompts' padding, then new tokens
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, :width - len(p)] = 0
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask[:, :width].cumsum(-1) - 1).masked_fill(mask[:, :width] == 0, 0)
    from transformers import DynamicCache

    config = base.config.get_text_config(decoder=True)
    cache = DynamicCache(config=config)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
    out = base(input_ids=ids, attention_mask=mask[:, :width], cache=cache, use_cache=True,
               **_positions(accepts, positions), **extra)
    logits = out.logits[:, -1].float().repeat_interleave(repeats, 0)
    cache = repeated(cache, repeats, config, width + max_new_tokens)
    mask, position = mask.repeat_interleave(repeats, 0), positions[:, -1:].repeat_interleave(repeats, 0) + 1
    rows = logits.shape[0]
    tokens = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=device)
    logprobs = torch.zeros((rows, max_new_tokens), device=device) if with_logprobs else None
    entropies = torch.zeros((rows, max_new_tokens), device=device) if with_entropy and not greedy else None
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    min_new = getattr(getattr(base, "generation_config", None), "min_new_tokens", None) or 0
    for t in range(max_new_tokens):
        if t < min_new:
            logits[:, eos] = -float("inf")
        if entropies is not None:
            entropies[:, t] = entropy(logits, temperature).masked_fill(done, 0.0)
        token, logp = pick(logits, generator, temperature=temperature, top_p=top_p, greedy=greedy,
                           with_logprobs=with_logprobs)
        tokens[:, t] = token.masked_fill(done, pad)
        if logprobs is not None:
            logprobs[:, t] = logp.masked_fill(done, 0.0)
        done |= token == eos
        if t + 1 == max_new_tokens or bool(done.all()):
            return Decoded(*(None if x is None else x[:, :t + 1] for x in (tokens, logprobs, entropies)))
        out = base(input_ids=tokens[:, t:t + 1], attention_mask=mask[:, :width + t + 1], cache=cache, use_cache=True,
                   **_positions(accepts, position + t))
        logits = out.logits[:, -1].float()
    return Decoded(tokens, logprobs, entropies)


def repeated(cache, repeats: int, config, length: int):
    """The prompts' cache repeated for their samples (row i -> rows i * repeats ...). Where every
    layer is full attention, a ``StaticCache`` of ``length`` positions, written in place each step
    (a growing cache copies all its keys and values every step); else the dynamic cache itself."""
    from transformers import StaticCache
    from transformers.cache_utils import DynamicLayer

    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.batch_repeat_interleave(repeats)
        return cache
    static = StaticCache(config=config, max_cache_len=length)
    for i, layer in enumerate(cache.layers):
        static.update(layer.keys.repeat_interleave(repeats, 0), layer.values.repeat_interleave(repeats, 0), i)
    return static


def _positions(accepts, positions: Tensor) -> dict:
    """position_ids for models whose forward takes them (generate passes them the same way)."""
    return {"position_ids": positions} if "position_ids" in accepts else {}
