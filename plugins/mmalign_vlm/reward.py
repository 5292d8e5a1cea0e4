"""The VLM modality: AutoModelForImageTextToText + AutoProcessor, for the families in
:mod:`.families` (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Idefics3).

    s(x, y) = sum_t log p_theta(y_t | images, prompt, y_<t)     (image and prompt tokens masked)

This module holds the options, model loading and collation; records -> examples are in
:mod:`.examples`, the scoring paths (shared, once-per-pair, plain) in :mod:`.scoring`, generation
in :mod:`.generation`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image
from torch import Tensor, nn

from mmalign.config import DataConfig, ModelConfig
from mmalign.errors import ConfigError
from mmalign.protocol import Samples
from mmalign_text.causal_lm import (CausalLMModels, attach_lora, compile_layers,
                                    enable_gradient_checkpointing, from_pretrained, from_tiny, pad_rows,
                                    token_defaults, unwrap)
from mmalign_text.group_sharing import collate_groups, model_cost_ratio, responses_per_segment
from mmalign_text.prefix_sharing import collate_shared
from mmalign_text.sources import check_special_tokens, pretrained_config, processing_source
from mmalign_vlm.batches import Group, VLMBatch, VLMGroupBatch, VLMSharedBatch, segment_contexts, segments_of
from mmalign_vlm.examples import VLMExample, VLMGroup, VLMRecords, load_image, resolve_image
from mmalign_vlm.families import family_of
from mmalign_vlm.generation import generate, sample_contexts
from mmalign_vlm.scoring import VLMScoring

# Re-exported: callers import these from here.
__all__ = ["VLMReward", "VLMExample", "load_image", "resolve_image", "generate", "load_processor"]
KNOWN_OPTIONS = {"attn_implementation", "train_vision_tower", "train_projector", "encode_once",
                 "corrupted_image", "corruption_seed", "prefix_sharing", "packing", "fused_logps", "compile"}
# LoRA's all-linear: the language model's linear layers (Idefics3 calls it text_model).
LM_LINEAR = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def load_processor(path: str, trust_remote_code: bool):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError, AttributeError) as e:
        raise ConfigError(f"model.tokenizer: cannot load a processor from '{path}' ({type(e).__name__}: {e}). "
                          f"Transformers 5 builds the video processor of Qwen2-VL, Qwen2.5-VL and "
                          f"LLaVA-OneVision with torchvision: install torchvision matching torch.") from None



class VLMReward(VLMRecords, VLMScoring, CausalLMModels):
    name = "vlm"
    from mmalign_vlm.data_options import VLMDataOptions as data_options  # its data.* keys

    provides_extras = ("chosen_corrupted",)  # s(y_w | corrupted image), for mDPO
    per_unit_scores = True  # score(..., per_unit=True): per-token log-probs, on every path
    auto_class, processor_class = "AutoModelForImageTextToText", "AutoProcessor"  # load final/ (model card)

    @property
    def deterministic_collate(self) -> bool:  # mDPO's corrupted images are drawn per batch
        return self.options["corrupted_image"] == "none"

    def extra_scores(self) -> tuple[str, ...]:
        return self.provides_extras if self.options["corrupted_image"] != "none" else ()

    def extra_hint(self, name: str) -> str:
        return ": set model.options.corrupted_image to random_crop or mask_patches"

    def batch_counts(self, batch) -> dict[str, Tensor]:
        """The language model's tokens, image tokens included as the rows hold them (the vision
        tower's patches are not counted); a shared batch's rows are its text batch's."""
        return super().batch_counts(batch.text if isinstance(batch, (VLMSharedBatch, VLMGroupBatch)) else batch)

    @staticmethod
    def check_config(model_cfg: ModelConfig, data_cfg: DataConfig) -> None:
        """The plugin's keys, checked by mmalign.validation before anything loads (overrides the
        text plugin's: other options, other model.tiny)."""
        unknown = set(model_cfg.options) - KNOWN_OPTIONS
        if unknown:
            raise ConfigError(f"model.options: unknown option '{sorted(unknown)[0]}' for the vlm "
                              f"plugin. Known: {', '.join(sorted(KNOWN_OPTIONS))}.")
        if model_cfg.options.get("corrupted_image", "none") not in ("none", "random_crop", "mask_patches"):
            raise ConfigError("model.options.corrupted_image must be none, random_crop or mask_patches.")
        for name in ("train_vision_tower", "train_projector", "encode_once", "prefix_sharing", "packing",
                     "fused_logps", "compile"):
            if not isinstance(model_cfg.options.get(name, False), bool):
                raise ConfigError(f"model.options.{name} must be true or false, got "
                                  f"{model_cfg.options[name]!r}.")
        if model_cfg.name_or_path is None and model_cfg.tokenizer is None:
            raise ConfigError("model.tokenizer is required for a model built from model.tiny: a "
                              "directory written by processor.save_pretrained.")
        if model_cfg.name_or_path is None and model_cfg.tiny is not None:
            from mmalign_text.tiny_config import check_transformers_config

            check_transformers_config(model_cfg.tiny, "llava")

    def __init__(self, model_cfg: ModelConfig, data_cfg: DataConfig):
        unknown = set(model_cfg.options) - KNOWN_OPTIONS
        if unknown:
            raise ConfigError(f"model.options: unknown option '{sorted(unknown)[0]}' for the vlm "
                              f"plugin. Known: {', '.join(sorted(KNOWN_OPTIONS))}.")
        self.cfg, self.data = model_cfg, data_cfg
        self.options = {"train_vision_tower": False, "train_projector": True, "encode_once": True,
                        "corrupted_image": "none", "corruption_seed": 0, "prefix_sharing": True,
                        "packing": True, "fused_logps": True, "compile": False, **model_cfg.options}
        if self.options["corrupted_image"] not in ("none", "random_crop", "mask_patches"):
            raise ConfigError("model.options.corrupted_image must be none, random_crop or mask_patches.")
        self.family = family_of(*self._model_type())
        if self.options["corrupted_image"] != "none" and self.family.name != "llava":
            raise ConfigError(f"model.options.corrupted_image (mDPO) corrupts LLaVA-1.5 pixel tensors; "
                              f"{self.family.name} models are not supported. Set it to none.")
        passed, path = processing_source(model_cfg)
        if passed is not None and not hasattr(passed, "image_processor"):
            raise ConfigError(f"mmalign.train: tokenizer_or_processor= is a {type(passed).__name__}; the vlm "
                              f"plugin needs the model's processor (AutoProcessor.from_pretrained).")
        self.processor = passed if passed is not None else load_processor(path, model_cfg.trust_remote_code)
        self.tokenizer = check_special_tokens(self.processor.tokenizer, path or "tokenizer_or_processor")

    def use_sharded_policy(self) -> None:
        """Under FSDP the images go through the model's own forward (encode_once off): features
        merged into the embeddings outside it would lose their gradients (mmalign.sharding)."""
        if self.cfg.options.get("encode_once"):
            raise ConfigError("model.options.encode_once: true cannot train under FSDP: the image "
                              "features are merged into the embeddings outside the model's forward, "
                              "and FSDP would drop their gradients. Remove the option (under FSDP it "
                              "defaults to false: the model's own forward encodes the images).")
        self.options["encode_once"] = False

    def _model_type(self) -> tuple[str, str]:
        """(config.model_type, the model class's name) of the configured model, without weights."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES as NAMES

        if self.cfg.name_or_path is None:
            model_type = dict(self.cfg.tiny or {}).get("model_type", "llava")
            return model_type, NAMES.get(model_type, f"model_type '{model_type}'")
        try:
            config = pretrained_config(self.cfg)
        except (OSError, ValueError) as e:
            raise ConfigError(f"model.name_or_path: cannot load '{self.cfg.name_or_path}' ({e}).") from None
        return config.model_type, (config.architectures or [NAMES.get(config.model_type, type(config).__name__)])[0]

    # --- models -------------------------------------------------------------------------------
    def _from_pretrained(self, path: str, dtype: Optional[str] = None) -> nn.Module:
        from transformers import AutoModelForImageTextToText

        return from_pretrained(AutoModelForImageTextToText, path, self.cfg, dtype=dtype)

    def _base_model(self) -> nn.Module:
        """A random model from ``model.tiny``: ``model_type`` (the family, default llava), the
        family config's keys, ``vision_config`` / ``text_config`` as dicts of their config keys. The
        vocabulary, special and image token ids come from the processor's tokenizer."""
        if self.cfg.name_or_path is not None:
            return self._from_pretrained(self.cfg.name_or_path)
        from transformers import AutoModelForImageTextToText

        tiny = copy.deepcopy(dict(self.cfg.tiny))
        tiny["text_config"] = token_defaults(dict(tiny.pop("text_config", {})), self.tokenizer)
        for key, token in self._token_keys().items():
            tiny.setdefault(key, self.tokenizer.convert_tokens_to_ids(token))
        return from_tiny(AutoModelForImageTextToText, self.cfg, tiny, default_type="llava")

    def _token_keys(self) -> dict[str, str]:
        """Config keys of the family's special token ids -> the tokens, as the processor names them."""
        keys = {"image_token_id": self.processor.image_token}
        for key, attr in (("video_token_id", "video_token"), ("vision_start_token_id", "vision_start_token"),
                          ("vision_end_token_id", "vision_end_token")):
            token = getattr(self.processor, attr, None) or getattr(self.tokenizer, attr, None)
            if isinstance(token, str):
                keys[key] = token
        return keys

    def load_policy(self) -> nn.Module:
        model = self._base_model()
        inner = unwrap(model).model
        tower, projector = _submodule(inner, self.family.tower), _submodule(inner, self.family.projector)
        if not self.options["train_vision_tower"]:
            tower.requires_grad_(False)
        projector.requires_grad_(bool(self.options["train_projector"]))  # Qwen's merger sits in its tower
        if self.cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if self.cfg.lora is not None:
            lora = self.cfg.lora
            targets = LM_LINEAR if lora.target_modules == "all-linear" else lora.target_modules
            # The projector is trained in full alongside the adapters when train_projector is on.
            save = [self.family.projector.split(".")[-1]] if self.options["train_projector"] else None
            # task_type None: PEFT has no task class for image-text-to-text models
            model = attach_lora(model, lora, None, target_modules=targets, modules_to_save=save)
        if self.options["compile"]:
            compile_layers(model)
        return model

    def save(self, model: nn.Module, directory: Path) -> None:
        super().save(model, directory)
        self.processor.save_pretrained(directory)

    def image_group(self, images: list[Image.Image]) -> Group:
        """One example's image inputs, as the processor makes them for the model's forward."""
        out = self.processor.image_processor([images] if self.family.nested_images else images, return_tensors="pt")
        group = {k: torch.as_tensor(out[k]) for k in self.family.image_keys if k in out}
        if "batch_num_images" in self.family.image_keys:  # LLaVA-OneVision: images per row
            group["batch_num_images"] = torch.tensor([len(images)])
        return group

    def pixel_values(self, images: list[Image.Image]) -> Tensor:
        return self.image_group(images)["pixel_values"]

    def collate(self, examples: list[VLMExample], generator: Optional[torch.Generator] = None):
        if isinstance(examples[0], VLMGroup):  # sampled responses: k per context
            k = len(examples[0].completions)
            groups = [self.image_group([load_image(v, g.where) for v in g.images]) for g in examples]
            shared = self._group_segments(examples)
            if shared:
                text = collate_groups(examples, self.tokenizer.pad_token_id, pack=self.options["packing"],
                                      per_segment=shared)
                return VLMGroupBatch(text, groups, segment_contexts(text))
            rows = [(g.prompt_ids, c) for g in examples for c in g.completions]
            return VLMBatch(*pad_rows(rows, self.tokenizer.pad_token_id), groups,
                            [[i // k] for i in range(len(rows))], len(examples), False, group=k)
        paired = examples[0].rejected_ids is not None
        corrupt = self.options["corrupted_image"] != "none" and paired
        groups = [self.image_group([load_image(v, e.where) for v in e.images]) for e in examples]
        b = len(examples)
        if paired and not corrupt and self.options["prefix_sharing"] and self.options["encode_once"]:
            text = collate_shared(examples, self.tokenizer.pad_token_id, pack=self.options["packing"])
            return VLMSharedBatch(text, groups, [list(r) for r in text.row_pairs],
                                  segments_of(examples, text.row_pairs), b)
        rows = [(e.prompt_ids, e.chosen_ids) for e in examples]
        row_groups = [[i] for i in range(b)]
        if paired:
            rows += [(e.prompt_ids, e.rejected_ids) for e in examples]
            row_groups += [[i] for i in range(b)]
        corrupted = None
        if corrupt:  # mDPO: the chosen response again, conditioned on a corrupted image
            from mmalign_vlm.corruption import corrupt_images

            rows += [(e.prompt_ids, e.chosen_ids) for e in examples]
            firsts = torch.stack([g["pixel_values"][0] for g in groups])
            corrupted = corrupt_images(firsts, self.options["corrupted_image"], generator)
        return VLMBatch(*pad_rows(rows, self.tokenizer.pad_token_id), groups, row_groups, b, paired, corrupted)

    def _group_segments(self, groups: list[VLMGroup]) -> int:
        """Responses per shared segment of sampled groups (:mod:`mmalign_text.group_sharing`'s cost
        estimate), or 0 for k plain rows per context: with ``prefix_sharing: false``, without
        ``encode_once``, for M-RoPE families (their 3D positions are made per plain row) and when the
        estimate picks one response per segment."""
        k = len(groups[0].completions)
        if not (self.options["prefix_sharing"] and self.options["encode_once"]) or self.family.mrope or k < 2:
            return 0
        if not hasattr(self, "_cost_ratio"):  # read once, without weights
            self._cost_ratio = model_cost_ratio(self.cfg)
        s = responses_per_segment([len(g.prompt_ids) for g in groups],
                                  [[len(c) for c in g.completions] for g in groups], self._cost_ratio)
        return s if s > 1 else 0

    def sample(self, model: nn.Module, contexts: list[Any], n: int, generator: torch.Generator, *,
               max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
               batch_size: int = 64) -> Samples:
        """``n`` completions per context ({"prompt", "image"}, as records give them), the prompt
        tokenized as training prompts are; see :func:`mmalign_vlm.generation.sample_contexts`."""
        return sample_contexts(self, model, contexts, n, generator, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, batch_size=batch_size)


def _submodule(module: nn.Module, dotted: str) -> nn.Module:
    for name in dotted.split("."):
        module = getattr(module, name)
    return module
