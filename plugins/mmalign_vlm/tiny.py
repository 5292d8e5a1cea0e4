"""Tiny offline processors and model configs for every supported VLM family (tests and demos).

A processor is a word-level tokenizer (the shapes-world words plus the family's special image tokens
and a chat template) and the family's slow (PIL) image processor, sized for 32 px images, saved with
``save_pretrained`` so ``AutoProcessor.from_pretrained`` loads it. ``TINY[family]`` is the matching
``model.tiny`` block (a 1-2 layer language model and vision tower); ``model.tiny.model_type`` names
the family.
"""

from __future__ import annotations

from pathlib import Path

from mmalign_vlm.shapes import COLOURS, PROMPT, SHAPES, SIZE

BASE_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
WORDS = ["a", "and", PROMPT, "yes", "no", "is", "there", "?", "user:", "assistant:"] + list(COLOURS) + list(SHAPES)
IDEFICS3_SPECIALS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 5) for j in range(1, 5)]
# The family's special tokens, and the string a prompt gets in front per image when it has none.
SPECIALS = {
    "llava": (["<image>"], "<image>\n"),
    "llava_next": (["<image>"], "<image>\n"),
    "llava_onevision": (["<image>", "<video>"], "<image>\n"),
    "qwen2_vl": (["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
                 "<|vision_start|><|image_pad|><|vision_end|>"),
    "idefics3": (IDEFICS3_SPECIALS, "<image>"),
}
SPECIALS["qwen2_5_vl"] = SPECIALS["qwen2_vl"]
FAMILIES = tuple(SPECIALS)

# A chat template in the style of the families' own: {"type": "image"} content items become the
# family's image placeholder, text items their text.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' }}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '__IMAGE__' }}{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ ' ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")


def tokenizer_for(family: str):
    """A word-level fast tokenizer with the family's special tokens (split out before whitespace
    pre-tokenization, so placeholders need no spaces around them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials, placeholder = SPECIALS[family]
    vocab = {w: i for i, w in enumerate(BASE_SPECIALS + specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")
    core.add_special_tokens(specials)
    named = {"llava": {"image_token": "<image>"}, "llava_next": {"image_token": "<image>"},
             "llava_onevision": {"image_token": "<image>", "video_token": "<video>"},
             "qwen2_vl": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                          "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
             "idefics3": {"image_token": "<image>"}}
    named["qwen2_5_vl"] = named["qwen2_vl"]
    extra = dict(named[family])
    if family == "idefics3":
        extra.update(fake_image_token="<fake_token_around_image>", global_image_token="<global-img>",
                     end_of_utterance_token="<end_of_utterance>")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                  unk_token="<unk>", extra_special_tokens=extra)
    tok.chat_template = CHAT_TEMPLATE.replace("__IMAGE__", placeholder)
    return tok


def build_processor(directory: str | Path, family: str = "llava"):
    """The family's processor for 32 px images, saved to ``directory``."""
    import transformers as tf

    if family not in SPECIALS:
        raise ValueError(f"unknown family '{family}'; one of {', '.join(FAMILIES)}")
    tok = tokenizer_for(family)
    template = tok.chat_template
    if family == "llava":
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        images = CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
        processor = tf.LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8, chat_template=template,
                                      vision_feature_select_strategy="default", num_additional_image_tokens=1)
    elif family == "llava_next":
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        images = LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                            image_grid_pinpoints=ANYRES_PINPOINTS)
        processor = tf.LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=8, chat_template=template,
                                          vision_feature_select_strategy="default", num_additional_image_tokens=1)
    elif family == "llava_onevision":
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil)

        images = LlavaOnevisionImageProcessorPil(size={"height": 16, "width": 16}, image_grid_pinpoints=ANYRES_PINPOINTS)
        processor = tf.LlavaOnevisionProcessor(image_processor=images, tokenizer=tok, num_image_tokens=4,
                                               vision_feature_select_strategy="full", chat_template=template,
                                               vision_aspect_ratio="anyres_max_9")
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        images = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                          size={"shortest_edge": 8 * 8, "longest_edge": 48 * 48})
        cls = tf.Qwen2VLProcessor if family == "qwen2_vl" else tf.Qwen2_5_VLProcessor
        processor = cls(image_processor=images, tokenizer=tok, chat_template=template)
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        images = Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 16},
                                           do_image_splitting=True)
        processor = tf.Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4,
                                         chat_template=template)
    if directory is not None:
        processor.save_pretrained(directory)
    return processor


ANYRES_PINPOINTS = [[16, 32], [32, 16], [32, 32]]
_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)
_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=8)
TINY = {
    "llava": {"model_type": "llava", "vision_config": {**_CLIP, "image_size": SIZE}, "text_config": dict(_TEXT),
              "vision_feature_select_strategy": "default", "vision_feature_layer": -1},
    "llava_next": {"model_type": "llava_next", "vision_config": {**_CLIP, "image_size": 16}, "text_config": dict(_TEXT),
                   "vision_feature_select_strategy": "default", "vision_feature_layer": -1,
                   "image_grid_pinpoints": ANYRES_PINPOINTS},
    "llava_onevision": {"model_type": "llava_onevision",
                        "vision_config": {**_CLIP, "model_type": "siglip_vision_model", "image_size": 16},
                        "text_config": {**_TEXT, "model_type": "qwen2"}, "vision_feature_select_strategy": "full",
                        "vision_feature_layer": -1, "image_grid_pinpoints": ANYRES_PINPOINTS,
                        "vision_aspect_ratio": "anyres_max_9"},
    # M-RoPE: mrope_section sums to head_dim / 2 (64 / 4 heads = 16 -> 8).
    "qwen2_vl": {"model_type": "qwen2_vl",
                 "vision_config": dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=4,
                                       spatial_merge_size=2, temporal_patch_size=2),
                 "text_config": {**_TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                              "mrope_section": [2, 3, 3]}}},
    "qwen2_5_vl": {"model_type": "qwen2_5_vl",
                   "vision_config": dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=2,
                                         patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                                         fullatt_block_indexes=[1]),
                   "text_config": {**_TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                                "mrope_section": [2, 3, 3]}}},
    # image_seq_len = (image_size / patch_size)^2 / scale_factor^2 = (16 / 4)^2 / 4 = 4 per tile.
    "idefics3": {"model_type": "idefics3",
                 "vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=16, patch_size=4),
                 "text_config": dict(_TEXT), "scale_factor": 2},
}
