"""Hallucination evaluators for held-out VLM records that carry ground-truth ``objects``.

Options (``eval.options.chair`` / ``eval.options.pope``):
  vocabulary: {object: [synonyms]} (default: every object named in the records' ``objects``)
  max_new_tokens (chair, default 32); template (pope, default "is there a {object} ?")
"""

from __future__ import annotations

import random

import torch

from mmalign.errors import ConfigError
from mmalign_vlm.hallucination import Vocabulary, chair, pope


def _labelled(ctx, name: str):
    examples = [e for e in ctx.examples if isinstance(e.fields.get("objects"), list)]
    if not examples:
        raise ConfigError(f"evaluator '{name}' needs held-out records with an \"objects\" list (the "
                          f"ground-truth objects of the image).")
    options = ctx.options_for(name)
    vocab = options.get("vocabulary") or {o: [o] for e in examples for o in e.fields["objects"]}
    return examples, Vocabulary(vocab), options


def chair_evaluator(ctx) -> dict[str, float]:
    """CHAIR_i, CHAIR_s and recall of greedy captions of the held-out images."""
    from mmalign_vlm.generation import generate

    examples, vocab, options = _labelled(ctx, "chair")
    captions = generate(ctx.reward, ctx.policy, examples, max_new_tokens=options.get("max_new_tokens", 32))
    scores = chair(captions, [e.fields["objects"] for e in examples], vocab)
    scores["caption_words"] = sum(len(c.split()) for c in captions) / max(1, len(captions))
    return scores


@torch.no_grad()
def pope_evaluator(ctx) -> dict[str, float]:
    """POPE-style probe: for each image, one present and one absent object (random sampling, as
    POPE's random split); the answer is yes when p("yes") > p("no") as the next token."""
    examples, vocab, options = _labelled(ctx, "pope")
    template = options.get("template", "is there a {object} ?")
    rng = random.Random(ctx.seed)
    reward, tok = ctx.reward, ctx.reward.tokenizer
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    answers, labels = [], []
    device = next(ctx.policy.parameters()).device
    ctx.policy.eval()
    for e in examples:
        truth = e.fields["objects"]
        absent = [o for o in vocab.synonyms if o not in truth]
        for obj, label in [(rng.choice(truth), True)] + ([(rng.choice(absent), False)] if absent else []):
            question = template.format(object=obj)
            image = [_image(e)]
            enc = reward.processor(text=reward.family.placeholder + question, add_special_tokens=False,
                                   images=[image] if reward.family.nested_images else image, return_tensors="pt")
            if reward.family.mrope and "mm_token_type_ids" not in enc:
                enc["mm_token_type_ids"] = (enc["input_ids"] == reward.processor.image_token_id).int()
            logits = ctx.policy(**{k: v.to(device) for k, v in enc.items()}).logits[0, -1]
            answers.append(bool(logits[yes] > logits[no]))
            labels.append(label)
    return pope(answers, labels)


def _image(example):
    from mmalign_vlm.examples import load_image

    return load_image(example.images[0], example.where)
