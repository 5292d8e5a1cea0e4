"""The diffusion plugin's ``sample``: DDIM (eta > 0) from the policy UNet with the trajectory
recorded, group examples that collate -> encode -> score as Scores [C, n], and a trajectory from
which every step can be recomputed."""

import numpy as np
import pytest
import torch

from diffusion_helpers import make_reward
from mmalign.errors import ConfigError, DataError
from mmalign_diffusion import online

CONTEXTS = [{"prompt": "a red circle"}, {"prompt": "a blue square"}]
LORA = {"r": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


@pytest.fixture(scope="module")
def sd15():
    reward = make_reward("sd15")
    return reward, reward.load_policy()


def _sample(reward, policy, seed=0, n=3, **options):
    return reward.sample(policy, CONTEXTS, n, torch.Generator().manual_seed(seed), steps=2, **options)


def test_shapes_and_responses(sd15):
    reward, policy = sd15
    out = _sample(reward, policy)
    traj = out.trajectory
    assert traj.latents.shape == (6, 3, 4, 8, 8)  # C*n rows, steps+1 latents, 4x8x8 (32 px, 4x VAE)
    assert traj.timesteps.shape == (2,) and traj.timesteps[0] > traj.timesteps[1]
    assert traj.text.shape[0] == 2 and traj.pooled is None and traj.negative_text is None
    assert out.contexts == CONTEXTS
    assert [len(r) for r in out.responses] == [3, 3]
    assert all(im.size == (32, 32) and im.mode == "RGB" for r in out.responses for im in r)
    assert [e.caption for e in out.examples] == ["a red circle", "a blue square"]
    assert all(e.latents.shape == (3, 4, 8, 8) for e in out.examples)
    assert torch.equal(out.examples[1].latents, traj.latents[3:6, -1])
    assert policy.training  # the sampler's eval() is undone


def test_fixed_generator_gives_the_same_samples(sd15):
    reward, policy = sd15
    a, b, c = _sample(reward, policy, 0), _sample(reward, policy, 0), _sample(reward, policy, 1)
    assert torch.equal(a.trajectory.latents, b.trajectory.latents)
    assert all(np.array_equal(np.asarray(x), np.asarray(y))
               for rx, ry in zip(a.responses, b.responses) for x, y in zip(rx, ry))
    assert not torch.equal(a.trajectory.latents, c.trajectory.latents)
    # x_T is the generator's first draw
    first = torch.randn((6, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.trajectory.latents[:, 0], first)


def test_last_latents_decode_to_the_returned_images(sd15):
    reward, policy = sd15
    out = _sample(reward, policy)
    vae = reward.comps.vae
    with torch.no_grad():
        pixels = vae.decode(out.trajectory.latents[:, -1] / vae.config.scaling_factor).sample
    expected = ((pixels / 2 + 0.5).clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()
    got = np.stack([np.asarray(im) for r in out.responses for im in r]).astype(np.float64)
    assert np.abs(got - expected).max() <= 1.0  # uint8 rounding


def test_each_step_is_the_ddim_gaussian_with_the_recorded_noise(sd15):
    """x_{t-1} = mean(x_t, t, c) + sigma_t z with z the generator's next draw after x_T and the
    earlier steps' z, mean the DDIM step without noise, sigma_t = eta * sqrt(variance(t, t_prev))."""
    reward, policy = sd15
    eta, n = 0.8, 3
    out = _sample(reward, policy, seed=4, eta=eta)
    traj = out.trajectory
    scheduler = online.ddim_scheduler(reward.comps, 2)
    assert torch.equal(scheduler.timesteps, traj.timesteps)
    g = torch.Generator().manual_seed(4)
    torch.randn((6, 4, 8, 8), generator=g)  # x_T
    text = traj.text.repeat_interleave(n, 0)
    policy.eval()
    for k, t in enumerate(traj.timesteps):
        x_t = traj.latents[:, k]
        z = torch.randn((6, 4, 8, 8), generator=g)
        with torch.no_grad():
            eps = policy(x_t, t.expand(6), encoder_hidden_states=text).sample
        x_prev = scheduler.step(eps, t, x_t, eta=eta, variance_noise=z).prev_sample
        assert torch.allclose(x_prev, traj.latents[:, k + 1], atol=1e-6)
        mean = scheduler.step(eps, t, x_t, eta=eta, variance_noise=torch.zeros_like(z)).prev_sample
        prev_t = t - scheduler.config.num_train_timesteps // 2
        sigma = eta * scheduler._get_variance(t, prev_t).sqrt()
        assert sigma > 0 or t == 0  # the step from t = 0 is deterministic (steps_offset 0)
        assert torch.allclose(traj.latents[:, k + 1] - mean, sigma * z, atol=1e-5)
    policy.train()


def test_round_trip_sample_collate_encode_score(sd15):
    reward, policy = sd15
    n = 3
    out = _sample(reward, policy)
    batch = reward.encode(reward.to_device(reward.collate(out.examples, torch.Generator().manual_seed(7)), "cpu"))
    with torch.no_grad():
        scores = reward.score(policy, batch)
    assert scores.sums.shape == (2, n) and torch.equal(scores.units, torch.ones(2, n))
    assert torch.equal(batch.text, out.trajectory.text)  # the sampler's conditioning is the score's
    # sample j of context i, scored by hand: s = -1/2 mean (eps - model(x_t, t, c))^2
    abar = reward.scheduler.alphas_cumprod
    for i in range(2):
        t = batch.timesteps[i]
        x0 = out.trajectory.latents[i * n:(i + 1) * n, -1]
        eps = batch.noise[i].expand_as(x0)
        noisy = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * eps
        with torch.no_grad():
            pred = policy(noisy, t.expand(n), encoder_hidden_states=batch.text[i].expand(n, -1, -1)).sample
        direct = -0.5 * (eps - pred).pow(2).flatten(1).mean(1)
        assert torch.allclose(scores.sums[i], direct, atol=1e-5)


def test_sdxl_lora_with_guidance_round_trip():
    reward = make_reward("sdxl", lora=LORA, noise="per_example")
    policy = reward.load_policy()
    out = reward.sample(policy, CONTEXTS[:1], 2, torch.Generator().manual_seed(0), steps=2, guidance_scale=3.0)
    traj = out.trajectory
    assert traj.latents.shape == (2, 3, 4, 8, 8) and traj.pooled.shape[0] == 1
    assert torch.equal(traj.negative_text, torch.zeros_like(traj.text))  # SDXL: zero unconditional
    assert traj.time_ids.tolist() == [32, 32, 0, 0, 32, 32]
    batch = reward.collate(out.examples)  # per_example noise: no generator needed
    assert torch.equal(batch.noise, reward.collate(out.examples).noise)
    batch = reward.encode(reward.to_device(batch, "cpu"))
    with torch.no_grad():
        scores = reward.score(policy, batch)
    assert scores.sums.shape == (1, 2) and torch.isfinite(scores.sums).all()


def test_bad_contexts_and_options_are_named(sd15):
    reward, policy = sd15
    g = torch.Generator().manual_seed(0)
    with pytest.raises(DataError, match='context 1 .*"prompt"'):
        reward.sample(policy, [{"prompt": "a cat"}, {"caption": "a dog"}], 1, g, steps=1)
    with pytest.raises(ConfigError, match="unknown option 'temperature'"):
        reward.sample(policy, CONTEXTS, 1, g, temperature=0.7)
    with pytest.raises(ConfigError, match="steps must be an integer"):
        reward.sample(policy, CONTEXTS, 1, g, steps=0)
    with pytest.raises(ConfigError, match="guidance_scale"):
        reward.sample(policy, CONTEXTS, 1, g, guidance_scale=0.5)
