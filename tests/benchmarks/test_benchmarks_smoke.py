"""Keeps the benchmark harness from rotting: builds the text_long, grpo, vlm_grpo and ddpo workloads in --quick mode
and times mmalign's real engine on them for a couple of steps, in this process. The peer (TRL) is
imported only by the slow tests, and no timing is asserted: only that the harness still produces
what the benchmark table is made of."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_quick_text_workload_runs_through_mmalign(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.flops import step_flops, timed_flops_per_step, tokens_per_group
    from benchmarks.run import summarize_workload
    from benchmarks.runners import run_mmalign
    from benchmarks.workloads import build, make_workload, peer_records, step_lengths

    w = build(make_workload("text_long", quick=True), tmp_path / "text_long")
    w.steps = 1  # one warm-up step and one timed step keep this test short
    # the builder checked every record's token counts; one step holds 4 pairs of 256 + 32 + 32 tokens
    first = step_lengths(w)[0]
    assert tokens_per_group(first) == {"blocks": 4 * 320, "lm_head": 4 * 64}
    assert step_flops(w.params, first) == 8 * (w.params["blocks"] * 1280 + w.params["lm_head"] * 256)
    assert [r["id"] for r in peer_records(w)] == [f"r{i}" for i in w.order]

    result = run_mmalign(w, "fp32", str(tmp_path / "out"), log=lambda *a: None)
    assert len(result["step_times"]) == 1 and result["s_per_step"] > 0
    assert result["peak_rss_mb"] > 100  # torch alone is more than that

    peer = dict(result, peak_rss_mb=2 * result["peak_rss_mb"], s_per_step=3 * result["s_per_step"])
    row = summarize_workload(w, {"mmalign_fp32": result, "trl_fp32": peer},
                             {"fp32": 1e11, "bf16": 4e11})
    assert math.isclose(row["speedup"], 3.0) and math.isclose(row["rss_ratio"], 0.5)
    assert row["precision"] == "fp32" and row["mmalign"] == "mmalign_fp32"
    assert math.isclose(row["mmalign_flops_share_of_peak"],
                        timed_flops_per_step(w) / result["s_per_step"] / 1e11)


def test_quick_online_workload_builds(tmp_path, monkeypatch):
    """The grpo workload (rloo differs only in the algorithm's name): the builder's prompts (it
    checks 64 tokens each), its FLOPs, the shared reward and mmalign's online config."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.flops import timed_flops_per_step
    from benchmarks.online import even_word_share, online_config
    from benchmarks.workloads import build, make_workload, peer_records

    w = build(make_workload("grpo", quick=True), tmp_path / "grpo")
    assert (w.kind, w.pairs, w.samples) == ("online", 2, 8) and len(peer_records(w)) == w.total_steps * 2
    w.steps = 1  # timed_flops_per_step: the timed steps only
    rows = w.pairs * w.samples  # generation 2NT + policy 6NT + reference 2NT over 16 rows of 64 + 64 tokens
    assert timed_flops_per_step(w) == 10 * rows * (w.params["blocks"] * 128 + w.params["lm_head"] * 64)
    assert even_word_share(["p"], ["w2 w3 w4 w5", ""]) == [0.5, 0.0]
    assert online_config(w, "bf16", "out")["algorithm"]["options"]["samples_per_prompt"] == 8


def test_quick_vlm_online_workload_builds(tmp_path, monkeypatch):
    """vlm_grpo: 2 contexts of one image + 32 words (288 tokens once the processor expands the
    image), TRL's chat template renders its conversational prompt back to mmalign's string, the
    FLOPs (each image and prompt once per group of samples) and mmalign's config."""
    monkeypatch.syspath_prepend(str(REPO))
    from PIL import Image
    from transformers import AutoProcessor

    from benchmarks.flops import timed_flops_per_step
    from benchmarks.online import completion_texts, online_config
    from benchmarks.vlm_online import PLAIN_TEMPLATE
    from benchmarks.workloads import IMAGE_TOKENS, build, make_workload, peer_records

    w = build(make_workload("vlm_grpo", quick=True), tmp_path / "vlm_grpo")
    assert (w.kind, w.pairs, w.samples) == ("vlm_online", 2, 8) and len(peer_records(w)) == w.total_steps * 2
    record = peer_records(w)[0]
    processor = AutoProcessor.from_pretrained(w.model_dir)
    image = Image.open(Path(w.data_file).parent / record["image"])
    assert len(processor(text=record["prompt"], images=[image])["input_ids"][0]) == IMAGE_TOKENS + 32
    words = record["prompt"].removeprefix("<image> ")
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": words}]}]
    assert processor.tokenizer.apply_chat_template(message, chat_template=PLAIN_TEMPLATE, tokenize=False) \
        == record["prompt"]
    assert completion_texts([[{"role": "assistant", "content": "w2 w3"}], "w4"]) == ["w2 w3", "w4"]
    w.steps = 1
    p = w.params
    # each context's image and prompt once per group of 8 (generation and update), completions per row
    text = 10 * (p["blocks"] * (2 * (IMAGE_TOKENS + 32) + 16 * 48) + p["lm_head"] * 16 * 48)
    vision = 10 * 2 * (p["vision"] * (IMAGE_TOKENS + 1) + p["projector"] * IMAGE_TOKENS)
    assert timed_flops_per_step(w) == text + vision
    config = online_config(w, "fp32", "out")
    assert config["model"]["reward"] == "vlm" and config["model"]["options"] == {"train_vision_tower": True}
    assert config["algorithm"]["name"] == "grpo" and config["algorithm"]["options"]["max_new_tokens"] == 48


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grpo", "vlm_grpo"])
def test_quick_online_workload_runs_through_mmalign(tmp_path, monkeypatch, name):
    """Two online steps (16-30 s on 2 busy cores: over the quick set's budget, so marked slow)."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.online import run_mmalign_online
    from benchmarks.workloads import build, make_workload

    w = build(make_workload(name, quick=True), tmp_path / name)
    w.steps = 1
    result = run_mmalign_online(w, "fp32", str(tmp_path / "out"), log=lambda *a: None)
    assert len(result["step_times"]) == 1 and result["s_per_step"] > 0
    assert 0 < result["generate_s"] < result["s_per_step"] and result["score_s"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grpo", "rloo", "vlm_grpo"])
def test_quick_online_workload_runs_through_trl(tmp_path, monkeypatch, name):
    """The peer's side (imports TRL; about 20 s a run on 2 busy cores): same checks on TRL's run."""
    monkeypatch.syspath_prepend(str(REPO))
    pytest.importorskip("trl")
    from benchmarks.online import run_trl_online
    from benchmarks.workloads import build, make_workload

    w = build(make_workload(name, quick=True), tmp_path / name)
    w.steps = 1
    result = run_trl_online(w, "fp32", str(tmp_path / "out"), "cpu")
    assert len(result["step_times"]) == 1 and 0 < result["generate_s"] < result["s_per_step"]


def test_quick_ddpo_workload_builds_without_the_peer_env(tmp_path, monkeypatch):
    """ddpo: the tiny SD 1.5 pipeline saved so that TRL 0.23.1's transformers 4.57 loads it, the
    work both runners must count each step, its FLOPs, mmalign's config, the UNet counter and
    the peer environment's reuse / creation commands (pip itself never runs here)."""
    monkeypatch.syspath_prepend(str(REPO))
    import json

    import torch
    from diffusers import UNet2DConditionModel

    from benchmarks import ddpo
    from benchmarks.flops import timed_flops_per_step
    from benchmarks.workloads import build, make_workload, peer_records

    w = build(make_workload("ddpo", quick=True), tmp_path / "ddpo")
    assert (w.kind, w.pairs, w.samples) == ("ddpo", 2, 4) and len(peer_records(w)) == w.total_steps * 2
    index = json.loads((Path(w.model_dir) / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"] and "text_encoder_2" not in index
    p = w.params
    assert ddpo.expected_work(w) == {"sample_rows": 8 * 10 * 2, "train_rows": 8 * 5 * 2, "images": 8,
                                     "lora_params": p["lora"]}
    assert timed_flops_per_step(w) == 160 * p["sample_flops_per_row"] + 80 * p["train_flops_per_row"] \
        + 8 * p["decode_flops_per_image"]
    options = ddpo.ddpo_config(w, "fp32", "out")["algorithm"]["options"]
    assert options["sampling"] == {"num_inference_steps": 10, "eta": 1.0, "guidance_scale": 5.0,
                                   "timestep_fraction": 0.5}

    monkeypatch.setattr(UNet2DConditionModel, "forward", UNet2DConditionModel.forward)  # restored after the test
    with ddpo.UNetCounter() as counter:
        unet = UNet2DConditionModel.from_pretrained(w.model_dir, subfolder="unet")
        with torch.no_grad():
            unet(torch.randn(3, 4, 32, 32), torch.tensor(1), torch.randn(3, 16, 32))
        counter.scored(3, 256)
        counter.close_step()
    assert counter.steps == [{"sample_rows": 3, "train_rows": 0, "images": 3, "lora_params": 0}]
    with pytest.raises(RuntimeError, match="not the same work"):
        ddpo.check_work(w, counter.steps, "mmalign")
    assert ddpo.mean_brightness(torch.tensor([[[0.0, 1.0]], [[0.5, 0.5]]])) == [0.5, 0.5]

    env = tmp_path / "env"
    env.mkdir()  # what venv would have made
    monkeypatch.setattr(ddpo, "PEER_ENV", env)
    commands = []
    monkeypatch.setattr(ddpo.subprocess, "run", lambda command, **kw: commands.append(command))
    assert ddpo.peer_python(say=lambda s: None) == str(env / "bin" / "python")  # no marker: created
    assert commands[0][1:] == ["-m", "venv", "--clear", str(env)]
    assert "torch==2.13.0" in commands[1] and "trl==0.23.1" in commands[1]  # never a multi-GB CUDA torch
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").touch()
    commands.clear()
    assert ddpo.peer_python(say=lambda s: None) == str(env / "bin" / "python") and commands == []  # reused


@pytest.mark.slow
def test_quick_ddpo_workload_runs_through_mmalign(tmp_path, monkeypatch):
    """Two DDPO steps of mmalign on the ddpo pipeline with 2 denoising steps (1 trained) instead of
    10 (5): the runner's work check, timing and sampling split (about 30 s on 2 busy cores)."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks import ddpo
    from benchmarks.workloads import build, make_workload

    for name, value in (("SAMPLE_STEPS", 2), ("TRAINED_STEPS", 1)):
        monkeypatch.setattr(ddpo, name, value)
    w = build(make_workload("ddpo", quick=True), tmp_path / "ddpo")
    w.steps = 1
    result = ddpo.run_mmalign_ddpo(w, "fp32", str(tmp_path / "out"), log=lambda *a: None)
    assert result["work_per_step"] == {"sample_rows": 8 * 2 * 2, "train_rows": 8 * 1 * 2, "images": 8,
                                       "lora_params": w.params["lora"]}
    assert len(result["step_times"]) == 1 and 0 < result["generate_s"] < result["s_per_step"]
