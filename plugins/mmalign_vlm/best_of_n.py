"""Best-of-N for VLMs: N sampled responses per (image, prompt), the scorer's favourite kept."""

from __future__ import annotations

from typing import Callable

from mmalign_vlm.examples import load_image
from mmalign_vlm.generation import generate


def best_of_n(reward, model, examples: list, *, n: int, scorer: Callable[..., list], max_new_tokens: int = 32,
              temperature: float = 1.0, seed: int = 0) -> list[dict]:
    """For each example: ``{"record", "best", "best_score", "responses", "scores"}``. The scorer is
    called as ``scorer(prompts, responses, images)`` (images as PIL)."""
    draws = [generate(reward, model, examples, max_new_tokens=max_new_tokens, do_sample=True,
                      temperature=temperature, seed=seed + 7919 * k) for k in range(n)]
    prompts = [reward.tokenizer.decode(e.prompt_ids, skip_special_tokens=True) for e in examples]
    images = [load_image(e.images[0], e.where) for e in examples]
    flat = scorer([p for p in prompts for _ in range(n)], [d[i] for i in range(len(examples)) for d in draws],
                  [im for im in images for _ in range(n)])
    out = []
    for i, e in enumerate(examples):
        responses = [d[i] for d in draws]
        scores = [float(s) for s in flat[i * n:(i + 1) * n]]
        best = max(range(n), key=scores.__getitem__)
        out.append({"record": e.where, "best": responses[best], "best_score": scores[best],
                    "responses": responses, "scores": scores})
    return out
