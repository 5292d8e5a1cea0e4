"""Each DDIM step's log-probability (DDPO): against the Gaussian density written out by hand for
epsilon and v prediction on SD 1.5 and SDXL; recorded by the sampler and recomputed under the
unchanged policy to the same value (ratio 1); deterministic steps marked off."""

import math

import pytest
import torch

from diffusion_helpers import make_reward, perturbed
from mmalign_diffusion.online import ddim_scheduler, trajectory_log_probs
from mmalign_diffusion.trajectory import step_log_prob, step_sigma, stochastic_steps

ARCHITECTURES = [("sd15", "epsilon"), ("sd15", "v_prediction"), ("sdxl", "epsilon"), ("sdxl", "v_prediction")]
CONTEXTS = [{"prompt": "a red circle"}, {"prompt": "a blue square"}]


def by_hand(scheduler, prediction, t, x_t, x_prev, eta):
    """log N(x_prev; mu, sigma^2 I) per dimension, with mu and sigma from DDIM's eq. 12 written out."""
    abar = scheduler.alphas_cumprod[t].double()
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    abar_prev = scheduler.alphas_cumprod[prev_t].double() if prev_t >= 0 else torch.tensor(1.0, dtype=torch.float64)
    x_t, prediction, x_prev = x_t.double(), prediction.double(), x_prev.double()
    if scheduler.config.prediction_type == "epsilon":
        x0, eps = (x_t - (1 - abar).sqrt() * prediction) / abar.sqrt(), prediction
    else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0
        x0, eps = abar.sqrt() * x_t - (1 - abar).sqrt() * prediction, abar.sqrt() * prediction + (1 - abar).sqrt() * x_t
    if scheduler.config.clip_sample:  # the tiny pipelines' DDPM config clips x0_hat (eps is not recomputed)
        x0 = x0.clamp(-scheduler.config.clip_sample_range, scheduler.config.clip_sample_range)
    sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
    mean = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma ** 2).sqrt() * eps
    return torch.distributions.Normal(mean, sigma).log_prob(x_prev).flatten(1).mean(1)


@pytest.mark.parametrize("arch,prediction", ARCHITECTURES)
def test_a_step_log_prob_is_the_gaussian_density_of_ddim(arch, prediction):
    reward = make_reward(arch, prediction)
    scheduler = ddim_scheduler(reward.comps, 4)
    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 4, 4)
    for t in scheduler.timesteps[:3]:  # the stochastic ones (t = 0 is the deterministic last step)
        x_t, prediction_, x_prev = (torch.randn(shape, generator=g) for _ in range(3))
        got = step_log_prob(scheduler, prediction_, t, x_t, x_prev, eta=0.8)
        assert torch.allclose(got.double(), by_hand(scheduler, prediction_, int(t), x_t, x_prev, 0.8), atol=1e-5)


def test_the_last_step_to_a_final_alpha_of_one_is_deterministic():
    scheduler = ddim_scheduler(make_reward("sd15").comps, 4)
    assert stochastic_steps(scheduler, 1.0).tolist() == [True, True, True, False]
    assert step_sigma(scheduler, 0, 1.0) == 0.0 and not stochastic_steps(scheduler, 0.0).any()
    with pytest.raises(ValueError, match="sigma 0"):
        step_log_prob(scheduler, torch.zeros(1, 4), torch.tensor(0), torch.zeros(1, 4), torch.zeros(1, 4), 1.0)


@pytest.mark.parametrize("arch,prediction,guidance", [("sd15", "epsilon", 1.0), ("sdxl", "v_prediction", 3.0)])
def test_recomputed_log_probs_of_a_recorded_trajectory_give_ratio_one(arch, prediction, guidance):
    """The sampler's recorded log p and the recomputation under the same UNet agree to 1e-5, with and
    without classifier-free guidance; another UNet gives other values, and gradients reach the UNet."""
    reward = make_reward(arch, prediction)
    policy = reward.load_policy()
    samples = reward.sample(policy, CONTEXTS, 2, torch.Generator().manual_seed(1), steps=4, eta=1.0,
                            guidance_scale=guidance)
    recorded = samples.trajectory.log_probs
    assert recorded.shape == (4, 4) and not recorded[:, -1].any() and recorded[:, :3].ne(0).all()
    with torch.no_grad():
        again, stochastic = trajectory_log_probs(reward, policy, samples.trajectory, 2)
    assert stochastic.tolist() == [True, True, True, False]
    assert torch.allclose(again, recorded, atol=1e-5)
    assert torch.allclose((again - recorded).exp(), torch.ones_like(again), atol=1e-4)  # PPO's ratio
    with torch.no_grad():
        other, _ = trajectory_log_probs(reward, perturbed(policy, 0.05), samples.trajectory, 2)
    assert not torch.allclose(other[:, :3], recorded[:, :3], atol=1e-4)
    policy.train()
    with_grad, _ = trajectory_log_probs(reward, policy, samples.trajectory, 2)
    with_grad.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_log_probs_per_dimension_stay_in_the_range_of_a_unit_gaussian():
    """Steps drawn with noise sigma z: log p per dimension is about -log sigma - 1/2 log(2 pi e)."""
    reward = make_reward("sd15")
    policy = reward.load_policy()
    samples = reward.sample(policy, CONTEXTS, 4, torch.Generator().manual_seed(2), steps=4, eta=1.0)
    scheduler = ddim_scheduler(reward.comps, 4)
    for k, t in enumerate(scheduler.timesteps[:3]):
        sigma = step_sigma(scheduler, int(t), 1.0)
        expected = -math.log(sigma) - 0.5 * math.log(2 * math.pi * math.e)
        assert samples.trajectory.log_probs[:, k].mean().item() == pytest.approx(expected, abs=0.15)
