"""Records, conditioning and caches of the diffusion plugin; bad input fails with the record's
file:line and exit code 2 through the CLI."""

import base64
import io
import json

import pytest
import torch
import yaml
from PIL import Image

from diffusion_helpers import examples, make_reward, pairs_file
from mmalign.cli import main
from mmalign_data.preparing import prepare_examples
from mmalign_formats import read_jsonl
from mmalign_diffusion import components as C
from mmalign_diffusion.records import View, load_pixels


def _png_b64(colour) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (40, 32), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pickapic_columns_labels_and_ties(tmp_path):
    white, black = _png_b64((255, 255, 255)), _png_b64((0, 0, 0))
    Image.new("RGB", (32, 32), (0, 0, 0)).save(tmp_path / "black.png")
    path = _write(tmp_path / "pap.jsonl", [
        {"caption": "a cat", "jpg_0": white, "jpg_1": black, "label_0": 1},
        {"caption": "a dog", "jpg_0": white, "jpg_1": "black.png", "label_0": 0},  # path, relative
        {"caption": "a car", "jpg_0": white, "jpg_1": black, "label_0": 0.5},
    ])
    reward = make_reward("sd15")
    exs, report = prepare_examples(reward, read_jsonl(path), paired=True, strict=False, path=str(path))
    assert report.used == 2 and report.skipped == {"tie (label_0 = 0.5)": 1}
    first, second = exs
    assert first.chosen.data == base64.b64decode(white) and first.chosen.size == (32, 40)
    assert second.chosen.path == tmp_path / "black.png" and second.rejected.data == base64.b64decode(white)


def _train_config(tmp_path, data_file, **model):
    cfg = {"output_dir": str(tmp_path / "run"),
           "model": {"reward": "diffusion", "tiny": {"architecture": "sd15"}, **model},
           "data": {"train": str(data_file)}, "loss": {"name": "sigmoid", "beta": 5000},
           "train": {"max_steps": 1, "batch_size": 1, "progress": False, "callbacks": []}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


GOOD = {"caption": "a cat", "jpg_0": _png_b64((9, 9, 9)), "jpg_1": _png_b64((200, 9, 9)), "label_0": 1}


@pytest.mark.parametrize("bad,message", [
    ({**GOOD, "jpg_1": base64.b64encode(b"\x89PNG\r\n\x1a\n-- not an image --").decode()}, '"jpg_1": not a readable image'),
    ({k: v for k, v in GOOD.items() if k != "jpg_1"}, 'missing key "jpg_1"'),
    ({**GOOD, "caption": ["a", "cat"]}, '"caption" must be a string'),
    ({"prompt": 7, "chosen": "x.png", "rejected": "y.png"}, '"prompt" must be a string'),
    ({"prompt": "a cat", "chosen": "nowhere.png", "rejected": "y.png"}, "neither an existing image file"),
])
def test_bad_input_names_the_record_and_exits_2(tmp_path, capsys, bad, message):
    data = _write(tmp_path / "train.jsonl", [GOOD, bad])
    assert main(["train", str(_train_config(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert f"{data}:2" in err and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_conditioning_equals_the_pipelines_encode_prompt(tmp_path, arch):
    reward = make_reward(arch)
    exs = examples(reward, pairs_file(tmp_path, n=2))
    batch = reward.encode(reward.to_device(reward.collate(exs, torch.Generator().manual_seed(0)), "cpu"))
    pipe = C.make_pipeline(reward.comps, reward.load_policy())
    captions = [e.caption for e in exs]
    if arch == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
        assert torch.allclose(batch.pooled, pooled, atol=1e-6)
        assert embeds.shape[-1] == 2 * reward.comps.text_encoders[0].config.hidden_size
    else:
        embeds, _ = pipe.encode_prompt(captions, "cpu", 1, False)
    assert torch.allclose(batch.text, embeds, atol=1e-6)


def test_latents_are_cached_and_equal_the_vae_encoding(tmp_path, monkeypatch):
    reward = make_reward("sd15", cache_dir=str(tmp_path / "cache"))
    exs = examples(reward, pairs_file(tmp_path, n=2))
    batch = reward.encode(reward.to_device(reward.collate(exs, torch.Generator().manual_seed(0)), "cpu"))
    pixels = load_pixels(exs[0].chosen, 32, View(0, 0, False))[None]
    with torch.no_grad():
        direct = reward.comps.vae.encode(pixels).latent_dist.mean * reward.comps.vae.config.scaling_factor
    assert torch.allclose(batch.latents[0], direct[0], atol=1e-6)
    assert reward._latent_cache.misses == 4 and reward._text_cache.misses == 2

    # a new run (new plugin instance) reads the disk cache: the VAE and text encoders are not called
    again = make_reward("sd15", cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(C, "encode_images", lambda *a: pytest.fail("VAE called despite the cache"))
    monkeypatch.setattr(C, "encode_text", lambda *a: pytest.fail("text encoder called despite the cache"))
    cached = again.encode(again.to_device(again.collate(exs, torch.Generator().manual_seed(0)), "cpu"))
    assert torch.equal(cached.latents, batch.latents) and torch.equal(cached.text, batch.text)
    assert again._latent_cache.hits == 4

    # a different VAE gets its own cache scope
    other = make_reward("sd15", cache_dir=str(tmp_path / "cache"))
    with torch.no_grad():
        other.comps.vae.encoder.conv_in.weight.mul_(2)
    other._caches()
    assert other._latent_cache.directory != again._latent_cache.directory


def test_random_flip_and_crop_are_drawn_in_collate(tmp_path):
    Image.new("RGB", (48, 32), (10, 200, 10)).save(tmp_path / "wide.png")
    Image.new("RGB", (48, 32), (10, 10, 10)).save(tmp_path / "wide2.png")
    rows = [{"prompt": "a bar", "chosen": "wide.png", "rejected": "wide2.png"}] * 16
    path = _write(tmp_path / "d.jsonl", rows)
    reward = make_reward("sdxl", random_crop=True, random_flip=True)
    batch = reward.collate(examples(reward, path), torch.Generator().manual_seed(0))
    flips = {v.flip for v in batch.views}
    lefts = {v.left for v in batch.views}
    assert flips == {True, False} and len(lefts) > 1 and all(0 <= x <= 16 for x in lefts)
    assert batch.views[:16] == batch.views[16:]  # chosen and rejected of a pair are cut alike
    assert batch.time_ids[:, 3].tolist() == [v.left for v in batch.views]
