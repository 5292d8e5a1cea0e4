"""Fixtures and a config builder for the VLM tests (a module with a unique name, so tests can
import it)."""

import json
import random

import pytest

from mmalign_vlm import shapes


@pytest.fixture(scope="session")
def vlm_world(tmp_path_factory):
    """A processor dir and a small JSONL of pairs with images, built offline."""
    root = tmp_path_factory.mktemp("vlm")
    shapes.build_processor(root / "processor")
    rng = random.Random(0)
    scenes = [shapes.scene(rng) for _ in range(12)]
    names = shapes.write_images(root / "images", scenes, "img")
    rows = []
    for name, q in zip(names, scenes):
        objects = shapes.objects_of(q)
        rows.append({"image": f"images/{name}", "prompt": "describe", "objects": objects,
                     "chosen": shapes.caption(objects), "rejected": shapes.with_hallucination(objects, rng)})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def make_vlm_config(root, tmp_path, **extra):
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {"reward": "vlm", "tiny": shapes.TINY_LLAVA, "tokenizer": str(root / "processor")},
        "data": {"train": str(root / "pairs.jsonl")},
        "loss": {"name": "sigmoid", "beta": 0.1},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "log_every": 1, "progress": False},
    }
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


@pytest.fixture(scope="session")
def saved_vlm(vlm_world, tmp_path_factory):
    """The tiny LLaVA saved as a checkpoint directory (weights and processor), loaded as a real
    checkpoint is: through model.name_or_path (so model.dtype applies) or from_pretrained."""
    from mmalign.config import load_config
    from mmalign_vlm.reward import VLMReward

    cfg = load_config(data=make_vlm_config(vlm_world, tmp_path_factory.mktemp("unused")))
    reward = VLMReward(cfg.model, cfg.data)
    path = tmp_path_factory.mktemp("llava") / "tiny-llava"
    reward._base_model().save_pretrained(path)
    reward.processor.save_pretrained(path)
    return path
