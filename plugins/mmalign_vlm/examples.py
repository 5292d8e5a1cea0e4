"""VLM records -> examples: images resolved and decoded, the prompt rendered with one image
placeholder per image and tokenized by the processor (placeholders expanded to the image tokens),
completions tokenized and cut as data.tokenization says. Mixed into :class:`mmalign_vlm.reward.VLMReward`,
whose ``processor``, ``tokenizer``, ``family`` and ``data`` it uses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from mmalign.data import Record
from mmalign.errors import DataError, SkipRecord
from mmalign_text.data_options import text_options
from mmalign_text.records import prompt_text, render


@dataclass
class VLMExample:
    prompt_ids: list[int]  # image placeholder tokens already expanded by the processor
    chosen_ids: list[int]
    rejected_ids: Optional[list[int]]
    images: list[Any]  # absolute paths or PIL images, one per image placeholder in the prompt
    where: str
    fields: dict


@dataclass
class VLMGroup:
    """One context's sampled responses: its prompt ids, k completions (generated ids, up to and
    including EOS) and its images; scored as k plain rows on those images."""
    prompt_ids: list[int]
    completions: list[list[int]]
    images: list[Any]
    where: str


def resolve_image(value: Any, record: Record) -> Any:
    """A PIL image or image bytes as they are, or the absolute path of the image file that
    ``value`` names, resolved by mmalign_formats.files.resolve_data_path (relative to the data file;
    paths that leave its directory refused unless data.allow_outside_paths)."""
    from mmalign_formats.files import resolve_data_path

    if isinstance(value, (Image.Image, bytes)):  # bytes: an image column (mmalign_hf_datasets)
        return value
    return str(resolve_data_path(record, value, "image"))


def load_image(value: Any, where: str) -> Image.Image:
    """The image decoded in full as 8-bit RGB (mmalign_formats.files.decode_image: EXIF orientation
    applied, 16-bit scaled, transparency over white); a DataError naming ``where`` otherwise."""
    from mmalign_formats.files import decode_image, to_rgb8

    if isinstance(value, Image.Image):
        return to_rgb8(value)
    if isinstance(value, bytes):
        return decode_image(value, where)
    if not Path(value).is_file():
        raise DataError(f"{where}: image file '{value}' has disappeared since the data was checked.")
    return decode_image(value, where)


class VLMRecords:
    """prepare / content_fingerprint of the VLM reward."""

    def _images(self, record: Record) -> list[Any]:
        """The record's images resolved (paths, or PIL images as they are)."""
        images = record.fields.get("image", record.fields.get("images"))
        if images is None:
            raise DataError(f"{record.where}: missing key \"image\" (a path relative to the data "
                            f"file, or a list of paths).")
        if isinstance(images, list) and not images:
            raise DataError(f"{record.where}: \"image\" is an empty list; a VLM record needs at least one "
                            f"image. Add its image path, or move the record to a text-only data set.")
        return [resolve_image(v, record) for v in (images if isinstance(images, list) else [images])]

    def _prompt_ids(self, record: Record, prompt: Any, text: str, loaded: list[Image.Image]) -> list[int]:
        """The prompt's ids as the processor makes them from its rendered ``text``: one image
        placeholder per image (prepended to a plain-string prompt that has none), expanded to the
        image tokens; data.max_prompt_length applied (legacy)."""
        token = self.processor.image_token
        if isinstance(prompt, str) and token not in text:
            text = self.family.placeholder * len(loaded) + text
        if text.count(token) != len(loaded):
            raise DataError(f"{record.where}: the prompt has {text.count(token)} image "
                            f"placeholder(s) {token!r} but the record has {len(loaded)} image(s). "
                            f"Make them match.")
        enc = self.processor(text=text, images=[loaded] if self.family.nested_images else loaded,
                             add_special_tokens=False)
        return self._fit_prompt(list(enc["input_ids"][0]), record)

    def context_prompt(self, record: Record) -> tuple[list[int], list[Any]]:
        """(prompt ids, images) of a context ({"prompt", "image"} as a record gives them) to sample
        completions for: the prompt tokenized as :meth:`prepare` tokenizes it."""
        images = self._images(record)
        prompt = record.fields.get("prompt")
        if prompt is None:
            raise DataError(f"{record.where}: missing key \"prompt\". A VLM context needs \"image\" and \"prompt\".")
        text = prompt_text(self.processor, record, prompt)
        return self._prompt_ids(record, prompt, text, [load_image(v, record.where) for v in images]), images

    def prepare(self, record: Record, *, paired: bool) -> VLMExample:
        f = record.fields
        images = self._images(record)
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
        text = render(self.processor, record, prompt, f[chosen_key], chosen_key)[0]
        prompt_ids = self._prompt_ids(record, prompt, text, loaded)

        def completion_ids(value: Any, key: str) -> list[int]:
            text = render(self.processor, record, prompt, value, key)[1]
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids or ids[-1] != self.tokenizer.eos_token_id:
                ids = ids + [self.tokenizer.eos_token_id]
            options = text_options(self.data)  # the plugin's data.* keys
            if options.tokenization == "legacy":
                return ids[:options.max_completion_length]
            if options.max_length is None:  # TRL's keep_start: the row prompt + completion is cut
                return ids
            if len(prompt_ids) >= options.max_length:
                raise SkipRecord(f"prompt fills data.max_length ({options.max_length} tokens): no "
                                 f"completion token would remain")
            return ids[:options.max_length - len(prompt_ids)]

        return VLMExample(prompt_ids, completion_ids(f[chosen_key], chosen_key),
                          completion_ids(f["rejected"], "rejected") if paired else None,
                          images, record.where, f)

    def _fit_prompt(self, prompt_ids: list[int], record: Record) -> list[int]:
        """data.tokenization legacy: a prompt over data.max_prompt_length keeps its last tokens, but
        image tokens are never cut: only ordinary text before the first special (image) token can
        go; otherwise the record is an error (or skipped with data.too_long: skip)."""
        options = text_options(self.data)
        limit = options.max_prompt_length if options.tokenization == "legacy" else None
        if limit is None or len(prompt_ids) <= limit:
            return prompt_ids
        what = f"prompt longer than data.max_prompt_length ({limit} tokens)"
        if options.too_long == "skip":
            raise SkipRecord(what)
        special = set(self.tokenizer.added_tokens_decoder)
        leading_text = next((i for i, t in enumerate(prompt_ids) if t in special), len(prompt_ids))
        cut = len(prompt_ids) - limit
        if cut > leading_text:
            raise DataError(f"{record.where}: the {what} with its image tokens; truncating it would cut "
                            f"image tokens ({len(prompt_ids)} tokens, at most {leading_text} text tokens "
                            f"before the first image can go). Raise data.max_prompt_length to at least "
                            f"{len(prompt_ids) - leading_text}, shorten the prompt, or set data.too_long: skip.")
        record.note(f"{what}: its start truncated (text only)")
        return prompt_ids[cut:]

    def content_fingerprint(self, examples: list[VLMExample]) -> str:
        """The images' bytes in order: part of the on-disk reference-cache key."""
        h = hashlib.sha256()
        for e in examples:
            for image in e.images:
                h.update(image.tobytes() if isinstance(image, Image.Image) else
                         image if isinstance(image, bytes) else Path(image).read_bytes())
        return h.hexdigest()
