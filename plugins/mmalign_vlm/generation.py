"""Generation with a VLM policy on examples' images (evaluators, best-of-n, the demo), and the
VLM plugin's ``sample``: n completions per context as groups that its ``collate`` / ``score``
turn into Scores [C, n]."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mmalign.protocol import Samples
from mmalign_text.causal_lm import unwrap, unwrap_wrappers
from mmalign_text.sampling import context_record, draw_seed, rng_fork
from mmalign_vlm.examples import VLMExample, VLMGroup, load_image

if TYPE_CHECKING:
    from mmalign_vlm.reward import VLMReward


@torch.no_grad()
def generate_ids(reward: VLMReward, model: nn.Module, examples: list, *, max_new_tokens: int = 32,
                 batch_size: int = 64, prompt_ids: list[list[int]] | None = None, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 suppress: list[int] | None = None, repeats: int = 1) -> list[list[int]]:
    """Generated ids of each example's prompt (or ``prompt_ids``) on its images, cut after the
    first EOS, ``repeats`` per example (rows example-major): greedy, or sampled at ``temperature``
    (top_p 1: no truncation) with torch's global seed ``seed + start`` for the chunk of rows at
    ``start``. ``suppress``: token ids never generated. With ``repeats`` > 1 each example's images
    and prompt are prefilled once and the KV cache repeated (:func:`_prefilled`)."""
    was_training = model.training
    model.eval()
    tok, out = reward.tokenizer, []
    base = unwrap_wrappers(model)
    device = next(model.parameters()).device
    per_chunk = max(1, batch_size // repeats)
    for start in range(0, len(examples), per_chunk):
        chunk = examples[start:start + per_chunk]
        prompts = prompt_ids[start:start + per_chunk] if prompt_ids else [e.prompt_ids for e in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding for generation
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        groups = [reward.image_group([load_image(v, e.where) for v in e.images]) for e in chunk]
        if repeats > 1 and _can_prefill(reward, ids, suppress):
            inputs = _prefilled(base, ids, mask, _image_inputs(reward, unwrap(model), groups, ids), repeats)
        else:  # every sample its own row, images included
            ids, mask = ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
            groups = [g for g in groups for _ in range(repeats)]
            inputs = dict(input_ids=ids, attention_mask=mask, **_image_inputs(reward, unwrap(model), groups, ids))
        torch.manual_seed(seed + start * repeats)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=top_p) if do_sample \
            else dict(do_sample=False)
        if suppress:
            sampling["suppress_tokens"] = suppress
        generated = base.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id, **sampling)
        for new in generated[:, width:].tolist():
            out.append(new[:new.index(tok.eos_token_id) + 1] if tok.eos_token_id in new else new)
    model.train(was_training)
    return out


def _image_inputs(reward: VLMReward, core: nn.Module, groups: list, ids: Tensor) -> dict:
    """The rows' image inputs on the model's device (M-RoPE families: with their token types)."""
    images = {k: v.to(ids.device) for k, v in reward.family.batch(groups).items()}
    if reward.family.mrope:
        images["mm_token_type_ids"] = (ids == core.config.image_token_id).int()
    return images


def _can_prefill(reward: VLMReward, ids: Tensor, multimodal: list[int] | None) -> bool:
    """Whether :func:`_prefilled` samples as ``generate`` on repeated rows would: not for M-RoPE
    families (their 3D positions are made inside ``generate``), nor for a prompt ending in an image
    or other multimodal token (the last token is left to ``generate``, without the images)."""
    last = torch.isin(ids[:, -1], torch.tensor(multimodal or [], device=ids.device))
    return not reward.family.mrope and not bool(last.any())


def _prefilled(base: nn.Module, ids: Tensor, mask: Tensor, images: dict, repeats: int) -> dict:
    """``generate``'s inputs for ``repeats`` samples of each row with the prompts prefilled once:
    every token but the last (images included) runs through the model once per row, with the
    positions ``generate`` gives a left-padded row (from its padding mask), and the KV cache is
    repeated per sample; ``generate`` then runs the last prompt token and samples as it does on
    the repeated rows (the same greedy tokens; the image encoded once instead of ``repeats`` times)."""
    from transformers import DynamicCache

    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache(config=unwrap(base).config.get_text_config(decoder=True))
    base(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], cache=cache,
         use_cache=True, logits_to_keep=1, **images)
    cache.batch_repeat_interleave(repeats)
    return dict(input_ids=ids.repeat_interleave(repeats, 0), attention_mask=mask.repeat_interleave(repeats, 0),
                cache=cache)


def generate(reward: VLMReward, model: nn.Module, examples: list[VLMExample], **options) -> list[str]:
    """Decoded completions of :func:`generate_ids` (same options)."""
    return [reward.tokenizer.decode(ids, skip_special_tokens=True)
            for ids in generate_ids(reward, model, examples, **options)]


def multimodal_token_ids(reward: VLMReward) -> list[int]:
    """Ids of the family's image placeholder, video and vision start / end tokens."""
    return [reward.tokenizer.convert_tokens_to_ids(token) for token in reward._token_keys().values()]


def sample_contexts(reward: VLMReward, model: nn.Module, contexts: list[Any], n: int, generator: torch.Generator,
                    *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                    batch_size: int = 64) -> Samples:
    """``n`` sampled completions per context ({"prompt", "image"} as records give them; image paths
    relative to the working directory), the prompt tokenized as training prompts are.
    ``responses``: decoded texts [C][n]; ``trajectory``: {"prompt_ids": [C], "completion_ids": [C][n]};
    ``examples``: one :class:`VLMGroup` per context. The family's image / video / vision-boundary
    tokens are never sampled: a completion holding one could not be scored (the model would take
    it for an image slot), so the samples follow the model's distribution conditioned on their absence."""
    groups = []
    for i, context in enumerate(contexts):
        record = context_record(context, i)
        prompt, images = reward.context_prompt(record)
        groups.append(VLMGroup(prompt, [], images, record.where))
    with rng_fork(model):
        new = generate_ids(reward, model, groups, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p,
                           seed=draw_seed(generator), suppress=multimodal_token_ids(reward), repeats=n)
    for i, g in enumerate(groups):
        g.completions = new[i * n:(i + 1) * n]
    responses = [[reward.tokenizer.decode(c, skip_special_tokens=True) for c in g.completions] for g in groups]
    trajectory = {"prompt_ids": [g.prompt_ids for g in groups], "completion_ids": [g.completions for g in groups]}
    return Samples(list(contexts), responses, groups, trajectory)
