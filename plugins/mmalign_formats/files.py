"""Files that records point to (images, say): where they are, and whether they decode.

Every plugin resolves a path found in a record with :func:`resolve_data_path` and decodes an image
with :func:`decode_image`, so that the rules below hold for every modality:

- **Where.** A path is relative to the data file's directory (``Record.root``); ``~`` means the
  home directory. A path that resolves outside the data directory (an absolute path, ``..``, a
  symbolic link that leads out) is refused unless ``data.allow_outside_paths: true``: a data file
  cannot make a run read (and train on, and hash into its caches) arbitrary files. A URL is refused:
  mmalign never fetches data over the network.
- **What.** An image is decoded in full before step 1 (``Image.load``, not only its header), so a
  truncated or corrupt file fails before training starts, naming its record. Pillow's guard
  against decompression bombs (``PIL.Image.MAX_IMAGE_PIXELS``) is an error, not a warning.
- **How.** Every image becomes 8-bit RGB the same way: the EXIF orientation is applied (the image
  as every viewer shows it), the first frame of an animation is used, transparency is composited
  onto white (as the HF image processors' ``convert_to_rgb`` does), and 16-bit and 32-bit grey
  images are *scaled* to 0..255 (Pillow's own conversion clips them, which turns a 16-bit
  photograph white).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Union

from mmalign.errors import DataError

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
ImageSource = Union[str, Path, bytes]
# 16-bit grey modes (Pillow opens 16-bit greyscale PNG and TIFF this way); "I" is scaled as if it
# held 16-bit values too, the range those files come with
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


class MissingDataFile(DataError):
    """A path inside the data directory (or allowed outside it) that names no file."""


def _refuse(where: str, key: str, value, reason: str) -> DataError:
    return DataError(f"{where}: \"{key}\" = {str(value)[:200]!r} {reason}")


def candidate_path(root: Path, value: str) -> Path | None:
    """``value`` resolved against ``root`` (symbolic links followed, ``~`` expanded); None when it
    cannot be resolved (a symbolic-link loop, a NUL byte)."""
    try:
        return (Path(root).resolve() / os.path.expanduser(value)).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def resolve_data_path(record, value, key: str, *, allow_outside: bool | None = None) -> Path:
    """The file that ``record[key]`` names, as an absolute path with symbolic links resolved.

    ``record`` is a :class:`mmalign.data.Record`: its ``root`` (the data file's directory) anchors
    relative paths, its ``where`` names it in errors, and its ``allow_outside`` (the config's
    ``data.allow_outside_paths``, unless ``allow_outside`` is given) lets paths leave ``root``.
    Raises DataError for anything but a string naming an existing regular file inside ``root``
    (MissingDataFile when the file does not exist)."""
    where = record.where
    allow = getattr(record, "allow_outside", False) if allow_outside is None else allow_outside
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: \"{key}\" must be a file path (a non-empty string), got "
                        f"{value!r}. Fix or remove the record.")
    if URL.match(value):
        raise _refuse(where, key, value, "is a URL. mmalign never downloads data (training reads "
                      "local files only): download the file into the data file's directory and give "
                      "its path relative to the data file.")
    root = Path(record.root).resolve()
    path = candidate_path(root, value)
    if path is None:
        raise _refuse(where, key, value, "cannot be resolved (a symbolic-link loop, or a NUL "
                      "character in the path). Fix the path or remove the record.")
    if not allow and not path.is_relative_to(root):
        raise _refuse(where, key, value, f"resolves to {path}, outside the data directory {root} "
                      f"(absolute paths, '..' and symbolic links that lead out are refused, so that a "
                      f"data file cannot make a run read arbitrary files). Move the file under that "
                      f"directory, or set data.allow_outside_paths: true if you trust this data.")
    return _existing_file(path, where, key, value)


def _existing_file(path: Path, where: str, key: str, value: str) -> Path:
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as e:  # a name too long, say: is_file raises for those
        raise _refuse(where, key, value, f"cannot be looked up ({e.strerror or e}). Fix the path or "
                      f"remove the record.") from None
    if is_dir:
        raise _refuse(where, key, value, f"is a directory ({path}), not a file. Point it at the file "
                      f"itself.")
    if not is_file:
        if path.exists():
            raise _refuse(where, key, value, f"is not a regular file ({path}: a device, pipe or "
                          f"socket). Point it at an ordinary file.")
        raise MissingDataFile(f"{where}: \"{key}\": file {value!r} not found (looked for {path}). "
                              f"Paths are relative to the data file's directory; fix the path or "
                              f"remove the record.")
    return path


def decode_image(source: ImageSource, where: str, name: str | None = None):
    """Open and fully decode an image (a path, or the file's bytes): an 8-bit RGB PIL image, as
    described in this module's docstring. Every failure is a DataError naming ``where`` (and
    ``name``, what the source is: "image 'PATH'" by default for a path)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if name is None:
        name = "the image bytes" if isinstance(source, bytes) else f"image '{source}'"
    if isinstance(source, bytes) and not source or not isinstance(source, bytes) and _empty(source):
        raise DataError(f"{where}: not a readable image ({name} is empty: 0 bytes). Replace the file "
                        f"or remove the record.")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse it all the same
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                img.load()  # the whole image: a truncated file fails here, not at step 6
                return to_rgb8(ImageOps.exif_transpose(img))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{where}: {name} is too large to decode safely ({e}). Pillow's limit "
                        f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}) guards against "
                        f"decompression bombs: resize the image or remove the record.") from None
    except UnidentifiedImageError:
        raise DataError(f"{where}: not a readable image ({name} is in no format Pillow reads: PNG, "
                        f"JPEG, WebP, GIF, ...). Replace the file or remove the record.") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise DataError(f"{where}: not a readable image (cannot decode {name}: {type(e).__name__}: "
                        f"{e}); the file is truncated or corrupt. Replace it or remove the "
                        f"record.") from None


def _empty(path) -> bool:
    try:
        return Path(path).stat().st_size == 0
    except OSError:
        return False  # Image.open reports it


def to_rgb8(img):
    """``img`` as 8-bit RGB: high bit depths scaled (not clipped), transparency over white."""
    import numpy as np
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in SIXTEEN_BIT:
        # v * 255 / 65535, rounded: 65535 -> 255, 32768 -> 128 (Pillow's convert clips at 255)
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":  # floating point grey: taken to be in [0, 1]
        grey = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
        return Image.fromarray(np.round(grey * 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in WITH_ALPHA or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")
