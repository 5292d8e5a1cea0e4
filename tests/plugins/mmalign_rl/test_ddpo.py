"""DDPO: DDPO's per-prompt advantages by hand, its options refused with exit code 2, and DDPO, GRPO and
online Diffusion-DPO trained end to end on tiny SD 1.5 / SDXL pipelines (full and LoRA, epsilon
and v-prediction) with a resumed DDPO run continuing exactly."""

from __future__ import annotations

import json
import math
from collections import deque
from types import SimpleNamespace

import pytest
import torch
from test_online import assert_resume_continues_exactly
from test_online import config as text_config

import mmalign
from mmalign.errors import ConfigError
from mmalign_rl.ddpo import ddpo_estimator, per_prompt_advantages

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a cyan circle"]
LORA = {"r": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


def test_without_history_each_prompt_is_normalised_by_its_own_group():
    rewards = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    advantages = per_prompt_advantages(rewards, ["a", "b"], {}, buffer=0, min_count=1)
    # prompt a: mean 2, population std 1; prompt b: std 0 -> (r - mean) / 1e-6 = 0
    assert torch.allclose(advantages, torch.tensor([[-1 / (1 + 1e-6), 1 / (1 + 1e-6)], [0.0, 0.0]]))


def test_a_prompt_with_too_short_a_history_uses_the_whole_batch():
    rewards = torch.tensor([[0.0, 2.0], [4.0, 6.0]])
    history = {}
    advantages = per_prompt_advantages(rewards, ["a", "b"], history, buffer=4, min_count=3)
    std = math.sqrt(5.0)  # batch {0, 2, 4, 6}: mean 3, population variance 5
    assert torch.allclose(advantages, (rewards - 3) / (std + 1e-6))
    assert history == {"a": deque([0.0, 2.0]), "b": deque([4.0, 6.0])}


def test_a_long_enough_history_is_the_baseline_and_keeps_the_last_buffer_rewards():
    history = {"a": deque([0.0, 0.0, 8.0], maxlen=3)}
    rewards = torch.tensor([[4.0], [1.0]])
    advantages = per_prompt_advantages(rewards, ["a", "b"], history, buffer=3, min_count=3)
    # a's history after the update: [0, 8, 4] (mean 4, var 32/3); b has 1 < 3: the batch {4, 1}
    assert advantages[0, 0].item() == pytest.approx(0.0, abs=1e-9)
    assert advantages[1, 0].item() == pytest.approx((1 - 2.5) / (1.5 + 1e-6))
    assert list(history["a"]) == [0.0, 8.0, 4.0]
    repeated = per_prompt_advantages(torch.tensor([[8.0]]), ["a"], history, buffer=3, min_count=3)
    # history [8, 4, 8]: mean 20/3, population std sqrt(32/9)
    assert repeated.item() == pytest.approx((8 - 20 / 3) / (math.sqrt(32 / 9) + 1e-6))


def test_the_estimator_clips_advantages():
    source = SimpleNamespace(stats={}, ctx=SimpleNamespace(options=SimpleNamespace(
        stat_buffer=0, stat_min_count=1, advantage_clip=0.5)))
    records = [SimpleNamespace(fields={"prompt": "a"})]
    values, metrics = ddpo_estimator(torch.tensor([[0.0, 1.0]]), SimpleNamespace(source=source, records=records))
    assert values["advantages"].tolist() == [[-0.5, 0.5]]  # +-1 clipped at 0.5
    assert metrics["advantages/abs_mean"].item() == 0.5


def diffusion_config(tmp_path, algorithm="ddpo", arch="sd15", prediction="epsilon", lora=None, steps=2, **options):
    prompts = tmp_path / "prompts.jsonl"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    model = {"reward": "diffusion", "tiny": {"architecture": arch, "resolution": 32,
                                             "scheduler": {"prediction_type": prediction}}}
    if lora:
        model["lora"] = lora
    sampling = {"num_inference_steps": 4, "timestep_fraction": 0.5, **options.pop("sampling", {})}
    return {"output_dir": str(tmp_path / "run"), "model": model, "data": {"train": str(prompts)},
            "algorithm": {"name": algorithm, "options": {"samples_per_prompt": 2, "scorers": {"brightness": 1.0},
                                                         "sampling": sampling, **options}},
            "loss": {"beta": 0.0},
            "train": {"max_steps": steps, "batch_size": 2, "lr": 1e-3, "lr_scheduler": "constant", "log_every": 1,
                      "progress": False, "callbacks": [], "save_every": 2},
            "eval": {"evaluators": []}}


def _unet_weights(tmp_path, cfg, directory):
    from mmalign.config import load_config
    from mmalign_diffusion.reward import DiffusionReward

    parsed = load_config(data=cfg)
    reward = DiffusionReward(parsed.model, parsed.data)
    model = reward.load_trained(directory) if directory else reward.load_policy()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("algorithm,arch,prediction,lora,beta", [
    ("ddpo", "sd15", "epsilon", None, 0.0),  # full fine-tuning, no KL (DDPO)
    ("ddpo", "sdxl", "v_prediction", LORA, 0.1),  # LoRA, with the per-step KL to the adapters-off reference
    ("grpo", "sdxl", "epsilon", LORA, 0.0),
])
def test_an_online_diffusion_run_trains_the_unet(tmp_path, algorithm, arch, prediction, lora, beta):
    cfg = diffusion_config(tmp_path, algorithm, arch, prediction, lora, sampling={"guidance_scale": 2.0})
    cfg["loss"]["beta"] = beta
    result = mmalign.train(cfg, log=lambda *a: None)
    row = result.history[-1]
    for key in ("loss", "rewards/brightness", "advantages/abs_mean", "clip_low", "grad_norm", "time/images_per_s"):
        assert key in row, key
    assert ("kl" in row) == (beta > 0)
    assert row["grad_norm"] > 0
    before, after = _unet_weights(tmp_path, cfg, None), _unet_weights(tmp_path, cfg, tmp_path / "run" / "final")
    changed = [k for k in after if k in before and not torch.equal(before[k], after[k])]
    assert changed and (lora is None or all("lora" in k for k in changed)), changed[:5]


def test_a_resumed_ddpo_run_continues_exactly(tmp_path):
    """With a reward history short enough to be used from the second step on (stat_min_count 2),
    the checkpoint must carry it for the resumed run to compute the same advantages."""
    assert_resume_continues_exactly(tmp_path, lambda d: diffusion_config(d, stat_buffer=4, stat_min_count=2,
                                                                          steps=4))


def test_online_diffusion_dpo_trains_the_diffusion_dpo_loss_on_sampled_pairs(tmp_path):
    """online_dpo on the diffusion plugin: two samples per prompt, the brighter one chosen, the
    Diffusion-DPO loss on their denoising scores (ln 2 at the first step, policy == reference)."""
    cfg = diffusion_config(tmp_path, "online_dpo", steps=3, lora=LORA)
    del cfg["algorithm"]["options"]["sampling"]["timestep_fraction"]
    cfg["loss"]["beta"] = 500.0
    history = mmalign.train(cfg, log=lambda *a: None).history
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert history[0]["rewards/chosen"] >= history[0]["rewards/rejected"]
    assert -1.0 < history[0]["logps/chosen"] < 0  # -1/2 mean squared noise error, not a trajectory log-prob
    assert any(row["implicit_rewards/margins"] != 0 for row in history[1:])


@pytest.mark.parametrize("options,key", [
    ({"stat_buffer": -1}, "algorithm.options.stat_buffer"),
    ({"advantage_clip": 0.0}, "algorithm.options.advantage_clip"),
    ({"epsilon": 0.0}, "algorithm.options.epsilon"),
    ({"temperature": 0.5}, "algorithm.options.temperature"),  # a token option on the diffusion plugin
    ({"sampling": {"eta": 0}}, "algorithm.options.sampling.eta"),
    ({"sampling": {"strength": 1}}, "algorithm.options.sampling.strength"),
])
def test_bad_ddpo_options_exit_2_before_anything_loads(tmp_path, options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as caught:
        mmalign.train(diffusion_config(tmp_path, **options), log=lambda *a: None)
    assert caught.value.exit_code == 2
    assert not (tmp_path / "run").exists()


def test_the_text_plugin_has_no_sampling_options_of_its_own(tmp_path):
    with pytest.raises(ConfigError, match=r"algorithm\.options\.sampling") as caught:
        mmalign.train(text_config(tmp_path, scorers={"sentiment": 1.0}, sampling={"eta": 1.0}), log=lambda *a: None)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("algorithm,need", [("remax", "greedy"), ("ppo", "value model")])
def test_algorithms_that_need_a_greedy_response_or_a_critic_are_refused_for_diffusion(tmp_path, algorithm, need):
    cfg = diffusion_config(tmp_path, algorithm)
    cfg["algorithm"]["options"].update(samples_per_prompt=1, epochs=1)
    with pytest.raises(ConfigError, match=f"needs a {need}") as caught:
        mmalign.train(cfg, log=lambda *a: None)
    assert caught.value.exit_code == 2 and not (tmp_path / "run").exists()


def test_a_diffusion_run_is_evaluated_on_held_out_prompts_as_it_samples(tmp_path):
    """online_rewards on the diffusion plugin: images drawn with the run's DDIM options, scored by
    the run's scorers, with the per-step KL to the reference; token options are refused."""
    cfg = diffusion_config(tmp_path, steps=2)
    cfg["loss"]["beta"] = 0.1
    cfg["data"]["eval"] = cfg["data"]["train"]
    cfg["train"]["eval_every"] = 1
    cfg["eval"] = {"evaluators": ["online_rewards"], "batch_size": 2}
    history = mmalign.train(cfg, log=lambda *a: None).history
    for row in history:
        assert 0.0 <= row["eval/rewards/brightness"] <= 1.0 and "eval/completions/mean_length" not in row
        assert math.isfinite(row["eval/kl"])
    assert history[0]["eval/kl"] != history[1]["eval/kl"]  # the policy moved between the evaluations
    cfg["eval"]["options"] = {"online_rewards": {"max_new_tokens": 8}}
    cfg["output_dir"] = str(tmp_path / "other")
    with pytest.raises(ConfigError, match="online_rewards.max_new_tokens: the 'diffusion' plugin"):
        mmalign.train(cfg, log=lambda *a: None)
