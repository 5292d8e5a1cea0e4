"""model.options.noise: per_example fixes each pair's (noise, timestep) draw, so the reference
scores can be cached (reference.cache) and match a live reference; per_step is unchanged."""

import json
from pathlib import Path

import pytest
import torch

from diffusion_helpers import examples, make_reward, pairs_file
from mmalign import train
from mmalign.config import load_config
from mmalign.errors import ConfigError

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo" / "diffusion.yaml"


def test_per_example_draws_do_not_depend_on_batch_or_generator(tmp_path):
    reward = make_reward("sdxl", noise="per_example")
    exs = examples(reward, pairs_file(tmp_path, n=4))
    whole = reward.collate(exs, torch.Generator().manual_seed(0))
    part = reward.collate([exs[2], exs[0]], torch.Generator().manual_seed(99))
    again = reward.collate(exs)  # no generator needed
    assert torch.equal(whole.noise[[2, 0]], part.noise) and torch.equal(whole.timesteps[[2, 0]], part.timesteps)
    assert torch.equal(whole.noise, again.noise) and torch.equal(whole.timesteps, again.timesteps)
    assert not torch.equal(whole.noise[0], whole.noise[1])  # different pairs, different draws
    other_seed = make_reward("sdxl", noise="per_example", noise_seed=1).collate(exs)
    assert not torch.equal(whole.noise, other_seed.noise)
    assert reward.deterministic_collate and not make_reward("sdxl").deterministic_collate


def test_per_step_draws_come_from_the_run_generator(tmp_path):
    reward = make_reward("sdxl")
    exs = examples(reward, pairs_file(tmp_path, n=4))
    g = torch.Generator().manual_seed(0)
    first, second = reward.collate(exs, g), reward.collate(exs, g)
    assert not torch.equal(first.noise, second.noise)
    expected = torch.randn(first.noise.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first.noise, expected)  # the first draw of the generator, as before


def test_unknown_noise_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="model.options.noise"):
        make_reward("sdxl", noise="sometimes")


def _run(tmp_path, name, cache):
    cfg = load_config(CONFIG, overrides=[f"output_dir={tmp_path / name}", "model.options.noise=per_example",
                                         f"reference.cache={cache}", "train.max_steps=4", "train.warmup_steps=0",
                                         "train.log_every=1",
                                         "train.eval_every=0", "train.save_every=0", "train.progress=false",
                                         "data.eval=null", "eval.evaluators=[]"])
    result = train(cfg, log=lambda *a: None)
    return [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]


def test_cached_diffusion_reference_matches_the_live_one_and_is_not_rerun(tmp_path, monkeypatch):
    live = _run(tmp_path, "live", "none")
    from mmalign_reference import strategies as reference_module

    calls = []
    original = reference_module.DisabledAdapters.scores
    monkeypatch.setattr(reference_module.DisabledAdapters, "scores",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    cached = _run(tmp_path, "cached", "memory")
    assert len(calls) == 2  # 24 training pairs scored once in batches of eval.batch_size 16; none per step
    for a, b in zip(live, cached):
        # the cache scores batches of 16, training batches of 4: the UNet's kernels round ~1e-7
        # differently with the batch size, and beta = 5000 multiplies that into the margin
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-3)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=2e-3)
    assert live[-1]["rewards/margins"] != 0.0  # the policy moved: the comparison is not trivial


def test_disk_cache_key_follows_the_image_bytes(tmp_path):
    from mmalign.config import load_config as load
    from mmalign_reference.cache import fingerprint

    path = pairs_file(tmp_path, n=2)
    cfg = load(CONFIG, overrides=["model.options.noise=per_example"])
    reward = make_reward("sdxl", noise="per_example")
    before = fingerprint(cfg, [str(path)], reward.content_fingerprint(examples(reward, path)))
    assert before == fingerprint(cfg, [str(path)], reward.content_fingerprint(examples(reward, path)))
    image = next(tmp_path.rglob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")  # same file name, same JSONL, other bytes
    after = fingerprint(cfg, [str(path)], reward.content_fingerprint(examples(reward, path)))
    assert after != before
