"""`mmalign check` prepares every record as training does: the images records point to are
resolved and decoded (a bad one exits 2 naming its record and file), and no model is built."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mmalign.cli import main

DEMO = Path(__file__).resolve().parents[3] / "configs" / "demo"


def _config(tmp_path: Path, modality: str, records: int) -> tuple[Path, list[dict]]:
    """The demo config of ``modality`` on a copy of its first ``records`` records and their images."""
    cfg = yaml.safe_load((DEMO / f"{modality}.yaml").read_text())
    source = DEMO / "data" / modality
    rows = [json.loads(line) for line in (source / "train.jsonl").read_text().splitlines()[:records]]
    for row in rows:
        for key in ("image", "chosen", "rejected"):
            if isinstance(row.get(key), str) and row[key].endswith(".png"):
                (tmp_path / row[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source / row[key], tmp_path / row[key])
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg["data"] = {"train": str(tmp_path / "train.jsonl")}
    cfg["eval"] = {"evaluators": []}
    cfg["output_dir"] = str(tmp_path / "run")
    if "tokenizer" in cfg["model"]:
        cfg["model"]["tokenizer"] = str(DEMO / cfg["model"]["tokenizer"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, rows


@pytest.mark.parametrize("modality,key", [("vlm", "image"), ("diffusion", "rejected")])
def test_check_decodes_every_image_and_names_a_truncated_one(tmp_path, capsys, monkeypatch, modality, key):
    import mmalign.plugins

    path, rows = _config(tmp_path, modality, 6)
    assert main(["check", str(path)]) == 0, capsys.readouterr().err
    assert "6 usable" in capsys.readouterr().out
    bad = tmp_path / rows[3][key]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a truncated PNG: opens, fails to decode

    # no model is built: the factory may load a processor, never weights
    def no_weights(*args, **kwargs):
        raise AssertionError("mmalign check loaded a model")

    factory = mmalign.plugins.registry().get("rewards", modality, "model.reward")
    for name in ("load_policy", "load_reference", "load_trained"):
        monkeypatch.setattr(factory, name, no_weights)
    if modality == "diffusion":
        monkeypatch.setattr(factory, "__init__", no_weights)  # builds VAE and text encoders
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'train.jsonl'}:4" in err and bad.name in err and "not a readable image" in err
    assert "Traceback" not in err
