"""The ``vlm_grpo`` workload: mmalign's GRPO with the vlm plugin against TRL 1.16's ``GRPOTrainer``,
on the tiny LLaVA of the ``vlm`` workload (CLIP 224 px / patch 14 + the text Llama), full
fine-tuning (the vision tower too), with one reward function.

Per step: 2 contexts (one 224 px image + a prompt of 32 words; 256 + 32 = 288 prompt tokens once
the processor expands the image placeholder), G = 8 completions of exactly 48 tokens each (EOS
suppressed as in the text online workloads: ``min_new_tokens`` in the model's
``generation_config.json`` for mmalign, ``generation_kwargs`` for TRL), scored by
:func:`benchmarks.online.even_word_share`, beta 0.04, one update per rollout.

The prompt is the same token sequence on both sides: mmalign reads the record's string prompt
``"<image> w.. w.."``; TRL needs conversational prompts for images, so its dataset holds the 32
words as one user message and the processor gets :data:`PLAIN_TEMPLATE`, which renders that
message back to the same string. The TRL runner checks every prompt's length at ``generate``.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.workloads import IMAGE_TOKENS, Lengths, Workload, peer_records

PROMPT_WORDS = 32
COMPLETION_TOKENS = 48
# The conversation as the bare prompt: "<image> " per image block, then the text (no roles, no
# special tokens), i.e. exactly the string of mmalign's record.
PLAIN_TEMPLATE = ("{% for message in messages %}{% for part in message['content'] %}"
                  "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }}{% endif %}"
                  "{% endfor %}{% endfor %}")


def vlm_online_lengths(w: Workload) -> list[Lengths]:
    """One record per context: ``chosen`` is one completion's length (G of them per context)."""
    return [Lengths(PROMPT_WORDS, COMPLETION_TOKENS, 0, IMAGE_TOKENS) for _ in range(w.records_count)]


def write_vlm_online_data(w: Workload, tok, rng, words, write_images) -> None:
    """Context records ({"prompt": "<image> " + 32 words, "image"}; token counts checked) and the
    model's EOS suppression for 48 new tokens."""
    from benchmarks.online import write_prompt_records

    images = write_images(Path(w.data_file).parent / "images", len(w.records), rng)
    rows = [{"prompt": "<image> " + words(rng, PROMPT_WORDS), "image": f"images/{name}"} for name in images]
    write_prompt_records(w, tok, rows, PROMPT_WORDS + 1)  # the placeholder: one token before expansion


def trl_vlm_inputs(w: Workload) -> tuple:
    """(model, processor, dataset) of TRL's side: the same weights, the processor with
    :data:`PLAIN_TEMPLATE`, and the contexts in mmalign's order as {"prompt": [user message],
    "image": PIL image}."""
    from datasets import Dataset, Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(w.model_dir)
    processor = AutoProcessor.from_pretrained(w.model_dir)
    processor.chat_template = PLAIN_TEMPLATE
    root = Path(w.data_file).parent
    rows = [{"prompt": [{"role": "user", "content": r["prompt"].removeprefix("<image> ")}],
             "image": str(root / r["image"])} for r in peer_records(w)]
    return model, processor, Dataset.from_list(rows).cast_column("image", Image())

