"""reference.cache: memory / disk give the same training as scoring the reference every step,
and the reference model is not run during training."""

import json

import pytest

from conftest import base_config
from mmalign import train
from mmalign.errors import ConfigError


def rows(out):
    """metrics.jsonl's rows without the wall-clock ``time/*`` keys (they differ between runs)."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_cached_reference_matches_live_reference(tmp_path, tokenizer_dir, pairs_file, monkeypatch):
    live = train(base_config(tmp_path / "live", tokenizer_dir, pairs_file, train={"max_steps": 3}),
                 log=lambda *a: None)
    from mmalign_reference import strategies as reference_module

    calls = []
    original = reference_module.FrozenCopy.scores

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(reference_module.FrozenCopy, "scores", counting)
    cfg = base_config(tmp_path / "disk", tokenizer_dir, pairs_file, train={"max_steps": 3})
    cfg["reference"] = {"cache": "disk", "cache_dir": str(tmp_path / "cache")}
    cfg["eval"] = {"batch_size": 128}
    cached = train(cfg, log=lambda *a: None)
    assert len(calls) == 4  # 512 records / 128 per batch, once; none during the 3 steps
    for a, b in zip(rows(live.output_dir), rows(cached.output_dir)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)
    assert len(list((tmp_path / "cache").glob("ref-*.safetensors"))) == 1
    calls.clear()
    cfg["output_dir"] = str(tmp_path / "again")
    train(cfg, log=lambda *a: None)
    assert calls == []  # the second run reads the scores from disk


def test_cache_refused_for_plugins_that_draw_noise(tmp_path, tokenizer_dir, pairs_file, monkeypatch):
    from mmalign_text.reward import TextReward

    monkeypatch.setattr(TextReward, "deterministic_collate", False)
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file)
    cfg["reference"] = {"cache": "memory"}
    with pytest.raises(ConfigError, match="reference.cache"):
        train(cfg, log=lambda *a: None)
