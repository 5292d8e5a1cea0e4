"""Diffusion records -> validated examples. Every image is decoded in full when its record is
prepared (before step 1) and dropped again: an example keeps the image's path or bytes, its size
and the sha256 of its bytes; pixels are decoded when a batch needs them.

Accepted records (a JSONL line each; image paths are relative to the data file, and must stay
inside its directory unless ``data.allow_outside_paths``: see mmalign_formats.files):

- ``{"prompt": str, "chosen": IMAGE, "rejected": IMAGE}``
- Pick-a-Pic columns: ``{"caption": str, "jpg_0": IMAGE, "jpg_1": IMAGE, "label_0": 0 | 0.5 | 1}``;
  ``label_0 = 1`` prefers ``jpg_0``, ``0`` prefers ``jpg_1``, ``0.5`` is a tie (dropped and counted,
  as in the Diffusion-DPO paper).
- SFT (unpaired losses): ``{"prompt": str, "image": IMAGE}``, or any of the above (the preferred image).

IMAGE is a path, or the image file's bytes in base64 (as Pick-a-Pic's ``jpg_*`` bytes become in JSON),
or the bytes themselves (an image column read from Parquet, Arrow or a hub data set).
A pair whose two images are the same bytes (under two names, say) is skipped and counted as
"chosen identical to rejected", as text pairs are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from mmalign.data import Record
from mmalign.errors import DataError, SkipRecord
from mmalign_formats.files import URL, MissingDataFile, candidate_path, decode_image, resolve_data_path

IDENTICAL = "chosen identical to rejected"  # the same reason as the text plugin's, counted alike


@dataclass
class ImageRef:
    """One image of a record: where its bytes are, and its size (checked when prepared)."""

    path: Optional[Path]
    data: Optional[bytes]
    size: tuple[int, int]  # (height, width) of the original image
    where: str  # "file:line key"
    _digest: Optional[str] = field(default=None, init=False, repr=False, compare=False)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        try:
            return self.path.read_bytes()
        except OSError as e:
            raise DataError(f"{self.where}: cannot read image '{self.path}' ({e}).") from None

    def digest(self) -> str:
        """sha256 of the image's bytes: the cache key of its latents. Computed once per run (the
        caches look it up every step), not re-read from disk."""
        if self._digest is None:
            self._digest = hashlib.sha256(self.read()).hexdigest()
        return self._digest


@dataclass
class DiffusionExample:
    caption: str
    chosen: ImageRef
    rejected: Optional[ImageRef]
    where: str


def _caption(record: Record, key: str) -> str:
    value = record.fields.get(key)
    if value is None:
        raise DataError(f"{record.where}: missing key \"{key}\". Diffusion records need a caption "
                        f"(\"prompt\", or \"caption\" with Pick-a-Pic columns).")
    if not isinstance(value, str):
        raise DataError(f"{record.where}: \"{key}\" must be a string (the caption), got "
                        f"{type(value).__name__}. Fix or remove the record.")
    return value


def _base64_image(value: str) -> Optional[bytes]:
    """The bytes that ``value`` encodes in base64, or None if it is not base64."""
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data or None


def _image_source(record: Record, key: str, value: str) -> tuple[Optional[Path], Optional[bytes]]:
    """(path, None) for a value naming a file, (None, bytes) for base64 image bytes. A value that
    names an existing file is a path (and must lie inside the data directory unless allowed); only
    a value naming no file is tried as base64 (a JPEG's base64 starts with "/9j/", which would
    otherwise read as an absolute path)."""
    candidate = candidate_path(record.root, value) if len(value) < 4096 else None
    try:
        exists = candidate is not None and candidate.exists()
    except OSError:  # a base64 string too long for a file name
        exists = False
    data = None if exists or URL.match(value) else _base64_image(value)
    if data is not None:
        return None, data
    try:
        return resolve_data_path(record, value, key), None
    except MissingDataFile:
        raise DataError(f"{record.where} \"{key}\": '{value[:80]}' is neither an existing image file "
                        f"(looked for {candidate}; paths are relative to the data file's directory) "
                        f"nor base64 image bytes. Fix the value or remove the record.") from None


def _name(ref: ImageRef) -> str:
    return f"image '{ref.path}'" if ref.path is not None else "the base64 value (no file has that name)"


def image_ref(record: Record, key: str) -> ImageRef:
    """Resolve ``record[key]`` (a path or base64 bytes) and decode the image in full now, before
    training: its size (after the EXIF orientation) and the sha256 of its bytes are kept, the
    pixels are not (they are decoded again when a batch needs them)."""
    value = record.fields.get(key)
    where = f"{record.where} \"{key}\""
    if value is None:
        raise DataError(f"{record.where}: missing key \"{key}\" (an image path relative to the data "
                        f"file, or base64 image bytes).")
    if not isinstance(value, (str, bytes)) or not value:
        raise DataError(f"{where} must be an image path or base64 image bytes, got "
                        f"{type(value).__name__ if value not in ('', b'') else 'an empty value'}.")
    # bytes: an image column of a Parquet / Arrow / hub data set (mmalign_hf_datasets)
    path, data = (None, value) if isinstance(value, bytes) else _image_source(record, key, value)
    ref = ImageRef(path, data, (0, 0), where)
    raw = ref.read()
    image = decode_image(raw, where, "the image bytes" if isinstance(value, bytes) else _name(ref))
    ref.size = (image.height, image.width)
    ref._digest = hashlib.sha256(raw).hexdigest()  # the cache key of its latents: computed once
    return ref


def parse_record(record: Record, *, paired: bool) -> DiffusionExample:
    f = record.fields
    if "jpg_0" in f or "jpg_1" in f or "label_0" in f:
        caption = _caption(record, "caption")
        label = f.get("label_0")
        if isinstance(label, bool) or not isinstance(label, (int, float)) or label not in (0, 0.5, 1):
            raise DataError(f"{record.where}: \"label_0\" must be 0, 0.5 or 1 (Pick-a-Pic: 1 prefers "
                            f"jpg_0), got {label!r}.")
        first, second = image_ref(record, "jpg_0"), image_ref(record, "jpg_1")
        if label == 0.5:
            raise SkipRecord("tie (label_0 = 0.5)")
        if first.digest() == second.digest():
            raise SkipRecord(IDENTICAL)
        chosen, rejected = (first, second) if label == 1 else (second, first)
        return DiffusionExample(caption, chosen, rejected if paired else None, record.where)
    caption = _caption(record, "prompt")
    if not paired and "image" in f:
        return DiffusionExample(caption, image_ref(record, "image"), None, record.where)
    chosen = image_ref(record, "chosen")
    rejected = image_ref(record, "rejected") if paired else None
    if rejected is not None and chosen.digest() == rejected.digest():  # also under two names
        raise SkipRecord(IDENTICAL)
    return DiffusionExample(caption, chosen, rejected, record.where)


@dataclass(frozen=True)
class View:
    """How an image is cut to the training resolution (drawn in ``collate``)."""

    top: int
    left: int
    flip: bool


def resized_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(h, w) after resizing the shorter side to ``resolution`` (aspect ratio kept)."""
    h, w = size
    scale = resolution / min(h, w)
    return max(resolution, round(h * scale)), max(resolution, round(w * scale))


def choose_view(size: tuple[int, int], resolution: int, *, random_crop: bool, u: float,
                flip: bool) -> View:
    """Centre crop, or a random crop at fraction ``u`` in [0, 1) of the free room."""
    h, w = resized_size(size, resolution)
    if random_crop:
        top, left = math.floor(u * (h - resolution + 1)), math.floor(u * (w - resolution + 1))
    else:
        top, left = int(round((h - resolution) / 2.0)), int(round((w - resolution) / 2.0))
    return View(top, left, flip)


def load_pixels(ref: ImageRef, resolution: int, view: View) -> Tensor:
    """Decode, resize (shorter side, bilinear), crop and flip: [3, R, R] in [-1, 1]."""
    import numpy as np
    from PIL import Image

    img = decode_image(ref.read(), ref.where, _name(ref))
    h, w = resized_size(ref.size, resolution)
    if (img.height, img.width) != (h, w):
        img = img.resize((w, h), Image.BILINEAR)
    img = img.crop((view.left, view.top, view.left + resolution, view.top + resolution))
    if view.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    array = torch.from_numpy(np.asarray(img, dtype=np.float32).copy())
    return array.permute(2, 0, 1) / 127.5 - 1.0
