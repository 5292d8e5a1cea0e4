"""The diffusion plugin across architectures: SD 1.5 (epsilon), SDXL (epsilon) and SDXL
(v-prediction), each a tiny pipeline built offline from configs and saved with the sampling
scheduler its family ships with (PNDM for SD 1.5, Euler for SDXL), then used as
``model.name_or_path`` exactly as a real checkpoint is. For each:

- the score equals the documented Diffusion-DPO surrogate computed directly with the pipeline's
  own UNet, VAE and text encoders (same noise and timestep), to 1e-5;
- through the engine: loss ln 2 at step 1, two training steps, a save that plain diffusers loads
  (``from_pretrained``; LoRA with ``pipeline.load_lora_weights``) with the trained weights, and
  the input pipeline's scheduler (class and config) kept in the saved pipeline."""

import json
import math

import pytest
import torch

from diffusion_helpers import examples, pairs_file, tiny
from mmalign.config import load_config
from mmalign.engine import train
from mmalign_diffusion import components as C
from mmalign_diffusion.records import load_pixels
from mmalign_diffusion.reward import DiffusionReward
from mmalign_text.causal_lm import unwrap_wrappers

# name: (architecture, prediction type, the family's sampling scheduler and its settings)
ARCHS = {
    "sd15-epsilon": ("sd15", "epsilon", "PNDMScheduler", {"skip_prk_steps": True, "steps_offset": 1}),
    "sdxl-epsilon": ("sdxl", "epsilon", "EulerDiscreteScheduler",
                     {"timestep_spacing": "leading", "steps_offset": 1}),
    "sdxl-v": ("sdxl", "v_prediction", "EulerDiscreteScheduler",
               {"timestep_spacing": "trailing", "steps_offset": 1}),
}
LORA = {"r": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory):
    """name -> a saved tiny diffusers pipeline directory (built on first use)."""
    root, built = tmp_path_factory.mktemp("pipelines"), {}

    def get(name: str):
        if name not in built:
            import diffusers

            arch, prediction, sampler, settings = ARCHS[name]
            comps, unet = C.build_tiny(tiny(arch, prediction))
            family = getattr(diffusers, sampler)
            comps.pipeline_scheduler = family.from_config(comps.scheduler.config, **settings)
            C.make_pipeline(comps, unet).save_pretrained(root / name)
            built[name] = root / name
        return built[name]

    return get


def _pipeline(directory):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(directory)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _encode_prompt(pipe, caption):
    """(text states [1, L, D], pooled [1, P] or None) with the pipeline's own encode_prompt."""
    if hasattr(pipe, "text_encoder_2"):
        states, _, pooled, _ = pipe.encode_prompt(caption, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return states, pooled
    return pipe.encode_prompt(caption, "cpu", 1, False)[0], None


@torch.no_grad()
def direct_scores(pipe, batch, resolution):
    """s = -1/2 * mean_dims (target - unet(x_t, t, c))^2 for every row, one image per UNet call,
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and target eps or v = sqrt(abar_t) eps -
    sqrt(1 - abar_t) x0 written out, with the DDPM schedule of the pipeline's scheduler config."""
    from diffusers import DDPMScheduler

    abar = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod
    v_pred = pipe.scheduler.config.prediction_type == "v_prediction"
    vae, b = pipe.vae, batch.noise.shape[0]
    scores = []
    for row, (ref, view) in enumerate(zip(batch.images, batch.views)):
        i = row % b  # chosen rows 0..b-1, rejected rows b..2b-1 share pair i's noise and timestep
        pixels = load_pixels(ref, resolution, view)[None]
        x0 = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        t, eps = batch.timesteps[i], batch.noise[i:i + 1]
        a, s = abar[t].sqrt(), (1 - abar[t]).sqrt()
        states, pooled = _encode_prompt(pipe, batch.captions[i])
        kwargs = {}
        if pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": batch.time_ids[row:row + 1]}
        pred = pipe.unet(a * x0 + s * eps, t.view(1), encoder_hidden_states=states, **kwargs).sample
        target = a * eps - s * x0 if v_pred else eps
        scores.append(-0.5 * (target - pred).pow(2).mean())
    return torch.stack(scores)


@pytest.mark.parametrize("name", list(ARCHS))
def test_score_equals_the_direct_computation_with_the_unets_own_forward(tmp_path, pipeline_dirs, name):
    directory = pipeline_dirs(name)
    cfg = load_config(data={"model": {"reward": "diffusion", "name_or_path": str(directory)}})
    reward = DiffusionReward(cfg.model, cfg.data)
    policy = reward.load_policy().eval()
    batch = reward.encode(reward.to_device(reward.collate(examples(reward, pairs_file(tmp_path, n=3)),
                                                          torch.Generator().manual_seed(0)), "cpu"))
    with torch.no_grad():
        scores = reward.score(policy, batch)
    plugin = torch.cat([scores.chosen, scores.rejected])
    direct = direct_scores(_pipeline(directory), batch, reward.comps.resolution)
    assert (plugin - direct).abs().max() < 1e-5
    assert direct.std() > 1e-3  # rows differ: not a constant that any order would match


def _lora_state(unet, adapter="default"):
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, adapter_name=adapter)


# about 5 s each: SDXL v-prediction full fine-tuning (the Euler scheduler kept) in the quick set
CASES = [pytest.param(name, lora, id=f"{name}-{'lora' if lora else 'full'}",
                      marks=() if (name, lora) == ("sdxl-v", False) else pytest.mark.slow)
         for name in ARCHS for lora in (False, True)]


@pytest.mark.parametrize("name, lora", CASES)
def test_train_save_and_reload_with_plain_diffusers(tmp_path, pipeline_dirs, monkeypatch, name, lora):
    directory = pipeline_dirs(name)
    saved = {}
    save = DiffusionReward.save

    def spy(self, model, out):  # the weights the engine hands to save, for comparison
        inner = unwrap_wrappers(model)
        saved["state"] = _lora_state(inner.unet) if lora else dict(inner.state_dict())
        saved["state"] = {k: v.detach().clone() for k, v in saved["state"].items()}
        save(self, model, out)

    monkeypatch.setattr(DiffusionReward, "save", spy)
    model = {"reward": "diffusion", "name_or_path": str(directory)}
    if lora:  # a bf16 base: the adapters still train as fp32 master weights
        model.update(lora=LORA, dtype="bfloat16")
    cfg = load_config(data={
        "output_dir": str(tmp_path / "run"), "model": model,
        "data": {"train": str(pairs_file(tmp_path, n=4))},
        "loss": {"name": "sigmoid", "beta": 5000.0},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "lr_scheduler": "constant", "log_every": 1,
                  "progress": False, "callbacks": []}})
    result = train(cfg, log=lambda *a: None)
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert len(result.history) == 2 and math.isfinite(result.history[-1]["loss"])
    assert {v.dtype for v in saved["state"].values()} == {torch.float32}

    if lora:
        pipe = _pipeline(directory)
        pipe.load_lora_weights(result.final_dir)
        loaded = _lora_state(pipe.unet, next(iter(pipe.unet.peft_config)))
        assert loaded.keys() == saved["state"].keys()
        assert any(v.abs().max() > 0 for k, v in loaded.items() if "lora_B" in k)  # trained
    else:
        pipe = _pipeline(result.final_dir)
        loaded = pipe.unet.state_dict()
        initial = _pipeline(directory).unet.state_dict()
        assert any(not torch.equal(loaded[k], initial[k]) for k in loaded)  # trained
        # the input pipeline's sampler, class and config, not the training DDPMScheduler
        _, _, sampler, _ = ARCHS[name]
        assert type(pipe.scheduler).__name__ == sampler
        config = lambda d: json.loads((d / "scheduler" / "scheduler_config.json").read_text())  # noqa: E731
        assert config(result.final_dir) == config(directory)
    assert all(torch.equal(loaded[k], saved["state"][k]) for k in saved["state"])
