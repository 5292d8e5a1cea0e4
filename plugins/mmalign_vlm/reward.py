"""The VLM modality: LLaVA-style models (AutoModelForImageTextToText + AutoProcessor).

    s(x, y) = sum_t log p_theta(y_t | image, prompt, y_<t)     (image and prompt tokens masked)

Chosen and rejected of a pair share one image: the vision tower and projector run **once per pair
per model** and the features are placed into both rows (``encode_once``). Models without a LLaVA-style
``get_image_features`` fall back to the plain path (the processor's pixel values for every row).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image
from torch import Tensor, nn

from mmalign.config import DataConfig, ModelConfig
from mmalign.data import Record
from mmalign.errors import ConfigError, DataError, SkipRecord
from mmalign.reward import PairScores
from mmalign_text.logps import compile_layers, target_logps, unwrap
from mmalign_text.prefix_sharing import SharedPrefixBatch, collate_shared, shared_token_logps
from mmalign_text.records import render
from mmalign_text.reward import DTYPES, TextReward, pad_rows

KNOWN_OPTIONS = {"attn_implementation", "train_vision_tower", "train_projector", "encode_once",
                 "corrupted_image", "corruption_seed", "prefix_sharing", "packing", "fused_logps", "compile"}
LM_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class VLMExample:
    prompt_ids: list[int]  # image placeholder tokens already expanded by the processor
    chosen_ids: list[int]
    rejected_ids: Optional[list[int]]
    images: list[Any]  # absolute paths or PIL images, one per image placeholder in the prompt
    where: str
    fields: dict


@dataclass
class VLMSharedBatch:
    """Prefix sharing for pairs: one segment [image + prompt | chosen | rejected] per pair, packed
    into rows as in the text plugin."""

    text: SharedPrefixBatch
    pixel_values: Tensor  # [N_images, C, H, W]
    row_images: list[list[int]]  # per row, indices into pixel_values in the order they stand in it
    pairs: int
    paired: bool = True

    def to(self, device: torch.device) -> "VLMSharedBatch":
        return VLMSharedBatch(self.text.to(device), self.pixel_values.to(device), self.row_images, self.pairs)


@dataclass
class VLMBatch:
    input_ids: Tensor  # [R, T], rows: B chosen then B rejected (then B corrupted-image chosen)
    attention_mask: Tensor  # [R, T]
    target_rows: Tensor  # [N] row and position predicting each completion token (see pad_rows)
    target_positions: Tensor  # [N]
    targets: Tensor  # [N]
    layout: Tensor  # [R, L] index into the N targets per row
    target_mask: Tensor  # [R, L]
    pixel_values: Tensor  # [N_images, C, H, W] of the pairs (each image once)
    row_images: list[list[int]]  # for every row, indices into pixel_values
    pairs: int
    paired: bool
    corrupted_pixel_values: Optional[Tensor] = None  # mDPO: [B, C, H, W]

    def to(self, device: torch.device) -> "VLMBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return VLMBatch(move(self.input_ids), move(self.attention_mask), move(self.target_rows),
                        move(self.target_positions), move(self.targets), move(self.layout),
                        move(self.target_mask), move(self.pixel_values), self.row_images, self.pairs,
                        self.paired, move(self.corrupted_pixel_values))


def resolve_image(value: Any, record: Record) -> Any:
    """A PIL image as is, or the absolute path of an image file that exists."""
    if isinstance(value, Image.Image):
        return value
    if not isinstance(value, str) or not value:
        raise DataError(f"{record.where}: \"image\" must be a path (relative to the data file) or a "
                        f"list of paths, got {type(value).__name__}.")
    path = Path(value) if Path(value).is_absolute() else record.root / value
    if not path.is_file():
        raise DataError(f"{record.where}: image file '{path}' does not exist. Fix the path (relative "
                        f"paths are resolved against the data file's directory).")
    return str(path)


def load_image(value: Any, where: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    path = Path(value)
    if not path.is_file():
        raise DataError(f"{where}: image file '{path}' has disappeared since the data was checked.")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:  # PIL raises several types for unreadable files
        raise DataError(f"{where}: cannot read image '{path}' ({type(e).__name__}: {e}). "
                        f"Replace the file or remove the record.") from None


class VLMReward(TextReward):
    name = "vlm"

    @property
    def deterministic_collate(self) -> bool:  # mDPO's corrupted images are drawn per batch
        return self.options["corrupted_image"] == "none"

    def __init__(self, model_cfg: ModelConfig, data_cfg: DataConfig):
        from transformers import AutoProcessor

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
        path = model_cfg.tokenizer or model_cfg.name_or_path
        if path is None:
            raise ConfigError("model.tokenizer is required for a model built from model.tiny: a "
                              "directory written by processor.save_pretrained.")
        try:
            self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            raise ConfigError(f"model.tokenizer: cannot load a processor from '{path}' ({e}).") from None
        self.tokenizer = self.processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # --- models -------------------------------------------------------------------------------
    def _from_pretrained(self, path: str) -> nn.Module:
        from transformers import AutoModelForImageTextToText

        kwargs = dict(dtype=DTYPES[self.cfg.dtype], trust_remote_code=self.cfg.trust_remote_code)
        if "attn_implementation" in self.cfg.options:
            kwargs["attn_implementation"] = self.cfg.options["attn_implementation"]
        try:
            return AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        except OSError as e:
            raise ConfigError(f"model.name_or_path: cannot load '{path}' ({e}).") from None

    def _base_model(self) -> nn.Module:
        if self.cfg.name_or_path is not None:
            return self._from_pretrained(self.cfg.name_or_path)
        from transformers import AutoConfig, CLIPVisionConfig, LlamaConfig, LlavaForConditionalGeneration

        tiny = dict(self.cfg.tiny)
        tok = self.tokenizer
        text = dict(tiny.pop("text_config", {}))
        text.setdefault("vocab_size", len(tok))
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            text.setdefault(key, getattr(tok, key))
        vision = CLIPVisionConfig(**tiny.pop("vision_config", {}))
        tiny.setdefault("image_token_id", tok.convert_tokens_to_ids(self.processor.image_token))
        config = AutoConfig.for_model("llava", vision_config=vision, text_config=LlamaConfig(**text), **tiny)
        return LlavaForConditionalGeneration(config)

    def load_policy(self) -> nn.Module:
        model = self._base_model()
        base = unwrap(model)
        if not self.options["train_vision_tower"] and hasattr(base.model, "vision_tower"):
            base.model.vision_tower.requires_grad_(False)
        if not self.options["train_projector"] and hasattr(base.model, "multi_modal_projector"):
            base.model.multi_modal_projector.requires_grad_(False)
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if self.cfg.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = self.cfg.lora
            targets = LM_LINEAR if lora.target_modules == "all-linear" else lora.target_modules
            # The projector is trained in full alongside the adapters when train_projector is on.
            save = ["multi_modal_projector"] if self.options["train_projector"] else None
            model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                                     lora_dropout=lora.dropout, target_modules=targets,
                                                     modules_to_save=save))
        if self.options["compile"]:
            compile_layers(model)
        return model

    def save(self, model: nn.Module, directory: Path) -> None:
        super().save(model, directory)
        self.processor.save_pretrained(directory)

    # --- data ---------------------------------------------------------------------------------
    def prepare(self, record: Record, *, paired: bool) -> VLMExample:
        f = record.fields
        images = f.get("image", f.get("images"))
        if images is None:
            raise DataError(f"{record.where}: missing key \"image\" (a path relative to the data "
                            f"file, or a list of paths).")
        images = [resolve_image(v, record) for v in (images if isinstance(images, list) else [images])]
        loaded = [load_image(v, record.where) for v in images]
        prompt = f.get("prompt")
        chosen_key = "chosen" if "chosen" in f or paired else "completion"
        for key in ("prompt", chosen_key) + (("rejected",) if paired else ()):
            value = f.get(key)
            if value is None:
                raise DataError(f"{record.where}: missing key \"{key}\". VLM records need \"image\", "
                                f"\"prompt\", \"chosen\" and \"rejected\".")
            if key != "prompt" and isinstance(value, str) and not value.strip():
                raise DataError(f"{record.where}: \"{key}\" is empty; fix or remove the record.")
        if paired and f["chosen"] == f["rejected"]:
            raise SkipRecord("chosen identical to rejected")
        token = self.processor.image_token
        prompt_text = render(self.processor, record, prompt, f[chosen_key], chosen_key)[0]
        if isinstance(prompt, str) and token not in prompt_text:
            prompt_text = (token + "\n") * len(loaded) + prompt_text
        if prompt_text.count(token) != len(loaded):
            raise DataError(f"{record.where}: the prompt has {prompt_text.count(token)} image "
                            f"placeholder(s) {token!r} but the record has {len(loaded)} image(s). "
                            f"Make them match.")
        enc = self.processor(text=prompt_text, images=loaded, add_special_tokens=False)
        prompt_ids = list(enc["input_ids"][0])

        def completion_ids(value: Any, key: str) -> list[int]:
            text = render(self.processor, record, prompt, value, key)[1]
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids or ids[-1] != self.tokenizer.eos_token_id:
                ids = ids + [self.tokenizer.eos_token_id]
            return ids[:self.data.max_completion_length]

        return VLMExample(prompt_ids, completion_ids(f[chosen_key], chosen_key),
                          completion_ids(f["rejected"], "rejected") if paired else None,
                          images, record.where, f)

    def content_fingerprint(self, examples: list[VLMExample]) -> str:
        """The images' bytes in order: part of the on-disk reference-cache key."""
        h = hashlib.sha256()
        for e in examples:
            for image in e.images:
                h.update(image.tobytes() if isinstance(image, Image.Image) else Path(image).read_bytes())
        return h.hexdigest()

    def pixel_values(self, images: list[Image.Image]) -> Tensor:
        return torch.as_tensor(self.processor.image_processor(images, return_tensors="pt")["pixel_values"])

    def collate(self, examples: list[VLMExample], generator: Optional[torch.Generator] = None) -> VLMBatch:
        paired = examples[0].rejected_ids is not None
        corrupt = self.options["corrupted_image"] != "none" and paired
        rows = [(e.prompt_ids, e.chosen_ids) for e in examples]
        images, per_example = [], []
        for e in examples:
            per_example.append(list(range(len(images), len(images) + len(e.images))))
            images += [load_image(v, e.where) for v in e.images]
        if paired and not corrupt and self.options["prefix_sharing"] and self.options["encode_once"]:
            text = collate_shared(examples, self.tokenizer.pad_token_id, pack=self.options["packing"])
            row_images = [[j for i in pairs for j in per_example[i]] for pairs in text.row_pairs]
            return VLMSharedBatch(text, self.pixel_values(images), row_images, len(examples))
        row_images = list(per_example)
        if paired:
            rows += [(e.prompt_ids, e.rejected_ids) for e in examples]
            row_images += per_example
        if corrupt:  # mDPO: the chosen response again, conditioned on a corrupted image
            rows += [(e.prompt_ids, e.chosen_ids) for e in examples]
        padded = pad_rows(rows, self.tokenizer.pad_token_id)
        pixels = self.pixel_values(images)
        corrupted = None
        if corrupt:
            from mmalign_vlm.corruption import corrupt_images

            firsts = torch.stack([pixels[idx[0]] for idx in per_example])
            corrupted = corrupt_images(firsts, self.options["corrupted_image"], generator)
        return VLMBatch(*padded, pixels, row_images, len(examples), paired, corrupted)

    # --- scores -------------------------------------------------------------------------------
    def image_features(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        """Projected image features [N, n_tokens, H]: the vision tower's one call for the batch."""
        out = unwrap(model).get_image_features(pixel_values=pixel_values)
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats

    def score(self, model: nn.Module, batch) -> PairScores:
        if isinstance(batch, VLMSharedBatch):
            embeds = self._embeds_with_images(model, batch.text.input_ids, batch.pixel_values, batch.row_images)
            logps = shared_token_logps(model, batch.text, inputs_embeds=embeds, fused=self.options["fused_logps"])
            t = batch.text
            return PairScores((logps * t.chosen_mask).sum(-1), (logps * t.rejected_mask).sum(-1),
                              t.chosen_mask.sum(-1), t.rejected_mask.sum(-1))
        base = unwrap(model)
        if self.options["encode_once"] and hasattr(base, "get_image_features"):
            inputs = self._inputs_encode_once(model, batch)
        else:
            inputs = self._inputs_naive(batch)
        flat, _ = target_logps(model, {**inputs, "attention_mask": batch.attention_mask}, batch.target_rows,
                               batch.target_positions, batch.targets, fused=self.options["fused_logps"])
        token_logps = flat[batch.layout] * batch.target_mask
        seq, lengths, b = token_logps.sum(-1), batch.target_mask.sum(-1), batch.pairs
        if not batch.paired:
            return PairScores(seq, None, lengths, None)
        extras = {"chosen_corrupted": seq[2 * b:3 * b]} if batch.corrupted_pixel_values is not None else {}
        return PairScores(seq[:b], seq[b:2 * b], lengths[:b], lengths[b:2 * b], extras=extras)

    def _embeds_with_images(self, model: nn.Module, input_ids: Tensor, pixel_values: Tensor,
                            row_images: list[list[int]], extra: Tensor | None = None) -> Tensor:
        """Token embeddings with the image features scattered into the placeholder positions;
        the vision tower runs once for ``pixel_values`` (each image once) and once for ``extra``
        (mDPO's corrupted images, one per extra row)."""
        base = unwrap(model)
        feats = self.image_features(model, pixel_values)
        rows = [feats[idx] for idx in row_images]
        if extra is not None:
            corrupted = self.image_features(model, extra)
            rows += [corrupted[i:i + 1] for i in range(extra.shape[0])]
        row_feats = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows])
        embeds = base.get_input_embeddings()(input_ids)
        mask = (input_ids == base.config.image_token_id).unsqueeze(-1)
        if int(mask.sum()) != row_feats.numel() // row_feats.shape[-1]:
            raise DataError("image placeholder tokens and image features do not match: check the "
                            "processor's image settings against the model's vision config.")
        return embeds.masked_scatter(mask, row_feats.to(embeds.dtype))

    def _inputs_encode_once(self, model: nn.Module, batch: VLMBatch) -> dict:
        return {"inputs_embeds": self._embeds_with_images(model, batch.input_ids, batch.pixel_values,
                                                          batch.row_images, batch.corrupted_pixel_values)}

    def _inputs_naive(self, batch: VLMBatch) -> dict:
        """Every row gets its image's pixel values: the vision tower runs for every row."""
        pixels = [batch.pixel_values[idx] for idx in batch.row_images]
        if batch.corrupted_pixel_values is not None:
            pixels += [batch.corrupted_pixel_values[i:i + 1] for i in range(batch.pairs)]
        return {"input_ids": batch.input_ids, "pixel_values": torch.cat(pixels)}


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
        pixels = reward.pixel_values([load_image(v, e.where) for e in chunk for v in e.images])
        device = next(model.parameters()).device
        torch.manual_seed(seed + start)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             pixel_values=pixels.to(device), max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **sampling)
        texts += tok.batch_decode(out[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return texts
