"""Generation with a VLM policy on examples' images (evaluators, best-of-n, the demo)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mmalign_text.logps import unwrap
from mmalign_vlm.examples import VLMExample, load_image

if TYPE_CHECKING:
    from mmalign_vlm.reward import VLMReward


@torch.no_grad()
def generate(reward: VLMReward, model: nn.Module, examples: list[VLMExample], *, max_new_tokens: int = 32,
             batch_size: int = 64, prompt_ids: list[list[int]] | None = None, do_sample: bool = False,
             temperature: float = 1.0, seed: int = 0) -> list[str]:
    """Completions of each example's prompt (or ``prompt_ids``) on its images: greedy, or sampled
    at ``temperature`` with the randomness fixed by ``seed``."""
    was_training = model.training
    model.eval()
    tok = reward.tokenizer
    texts: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = prompt_ids[start:start + batch_size] if prompt_ids else [e.prompt_ids for e in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding for generation
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        images = reward.family.batch([reward.image_group([load_image(v, e.where) for v in e.images]) for e in chunk])
        if reward.family.mrope:
            images["mm_token_type_ids"] = (ids == unwrap(model).config.image_token_id).int()
        device = next(model.parameters()).device
        torch.manual_seed(seed + start)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             **{k: v.to(device) for k, v in images.items()}, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **sampling)
        texts += tok.batch_decode(out[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return texts
