"""A synthetic image world for the offline demo and tests: one coloured shape on a grey
background, captioned "a <colour> <shape>". The gold score of an image is its mean brightness,
which a person can check by eye and a reward model need not be trained for."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 70, 220),
           "yellow": (230, 210, 40), "magenta": (200, 50, 200), "cyan": (40, 200, 210)}
SHAPES = ("circle", "square", "triangle")


def caption(rng: random.Random) -> str:
    return f"a {rng.choice(list(COLOURS))} {rng.choice(SHAPES)}"


def render(rng: random.Random, text: str, brightness: float, size: int = 32) -> Image.Image:
    """The image of ``text`` ("a red circle") on a background of grey level ``brightness`` in [0, 1],
    with the shape's position and size drawn from ``rng``."""
    _, colour, shape = text.split()
    grey = int(round(255 * brightness))
    img = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.2, 0.3) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def gold_score(img: Image.Image) -> float:
    """Mean brightness in [0, 1] (the mean of R, G and B)."""
    import numpy as np

    return float(np.asarray(img.convert("RGB"), dtype=np.float64).mean() / 255.0)


def caption_fidelity(img: Image.Image, text: str, min_share: float = 0.05, distance: float = 40.0) -> bool:
    """A simple checker that the image still shows its caption ("a red circle"): the pixels farther
    than ``distance`` (RGB) from the background (the median of the border pixels) cover at least
    ``min_share`` of the image (a shape is present), and their mean colour's hue (the colour minus
    its grey level) is nearest, by cosine, to the caption's colour. Relative to the background, so
    a brighter background alone does not fail it; washed-out or drifted colours do."""
    import numpy as np

    pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    shape = np.linalg.norm(pixels - np.median(border, 0), axis=-1) > distance
    if shape.mean() < min_share:
        return False
    mean = pixels[shape].mean(0)
    hue = mean - mean.mean()

    def similarity(colour: str) -> float:
        reference = np.array(COLOURS[colour], dtype=np.float64)
        reference -= reference.mean()
        return float(hue @ reference / (np.linalg.norm(hue) * np.linalg.norm(reference) + 1e-9))

    return max(COLOURS, key=similarity) == text.split()[1]


def brightness_scorer():
    """The gold score as a reward function of online runs: ``scorer(prompts, images) -> [brightness]``."""
    return lambda prompts, responses: [gold_score(image) for image in responses]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_sft_data(directory: Path, n: int, seed: int, size: int = 32) -> Path:
    """``n`` captioned images (brightness uniform in [0.1, 0.9]) and ``sft.jsonl`` of
    ``{"prompt", "image"}`` records."""
    rng = random.Random(seed)
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        text = caption(rng)
        render(rng, text, rng.uniform(0.1, 0.9), size).save(images / f"sft-{i:05d}.png")
        rows.append({"prompt": text, "image": f"images/sft-{i:05d}.png"})
    return write_jsonl(directory / "sft.jsonl", rows)


def write_pair_data(directory: Path, name: str, n: int, seed: int, size: int = 32,
                    min_gap: float = 0.1) -> Path:
    """``n`` pairs of images of the same caption with different backgrounds; the brighter one is
    chosen. Pairs whose gold scores differ by less than ``min_gap`` are not generated (ties)."""
    rng = random.Random(seed)
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    while len(rows) < n:
        text = caption(rng)
        a, b = render(rng, text, rng.uniform(0.1, 0.9), size), render(rng, text, rng.uniform(0.1, 0.9), size)
        ga, gb = gold_score(a), gold_score(b)
        if abs(ga - gb) < min_gap:
            continue
        i = len(rows)
        chosen, rejected = (a, b) if ga > gb else (b, a)
        chosen.save(images / f"{name}-{i:05d}-w.png")
        rejected.save(images / f"{name}-{i:05d}-l.png")
        rows.append({"prompt": text, "chosen": f"images/{name}-{i:05d}-w.png",
                     "rejected": f"images/{name}-{i:05d}-l.png"})
    return write_jsonl(directory / f"{name}.jsonl", rows)


def write_shipped_demo_data(directory: str | Path, n_train: int = 24, n_eval: int = 8, seed: int = 1) -> None:
    """The small data set shipped in configs/demo/data/diffusion (64 PNGs of 32x32 pixels)."""
    directory = Path(directory)
    write_pair_data(directory, "train", n_train, seed)
    write_pair_data(directory, "eval", n_eval, seed + 1)


if __name__ == "__main__":
    import sys

    write_shipped_demo_data(sys.argv[1] if len(sys.argv) > 1 else "configs/demo/data/diffusion")
