"""The log-probability of each denoising step of a sampled DDIM trajectory (DDPO, Black et al. 2023).

With eta > 0 a DDIM step is a Gaussian in x_{t-1} given x_t (Song et al. 2021, eq. 12):

    x_{t-1} ~ N(mu_t, sigma_t^2 I)
    mu_t    = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps_hat
    sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))

where eps_hat and x0_hat come from the (guided) model prediction at (x_t, t, c), converted as the
scheduler converts it (epsilon or v prediction), and abar_prev is the cumulative alpha of
t - T_train / steps (the scheduler's final alpha below 0). The step's log-probability is the
Gaussian log-density averaged over the D latent dimensions, as DDPO's sampler reports it:

    log p(x_{t-1} | x_t, c) = 1/D sum_d [ -(x_{t-1,d} - mu_{t,d})^2 / (2 sigma_t^2) - log sigma_t - log sqrt(2 pi) ]

(the per-dimension mean keeps PPO's ratio exp(log p - log p_old) in a usable range for latents of
thousands of dimensions). mu_t is the scheduler's own ``step`` with zero variance noise, so every
option of the pipeline's scheduler (prediction type, clipping, thresholding) is honoured. A step with
sigma_t = 0 (the last step of a schedule whose final alpha is 1) is deterministic: it has no
log-probability, and ``stochastic`` marks it off. The sampler records these as it draws
(``Trajectory.log_probs``); :func:`mmalign_diffusion.online.trajectory_log_probs` recomputes them
under a model (the policy's side of DDPO's ratio).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def step_sigma(scheduler, t: int, eta: float) -> float:
    """sigma_t of the DDIM step from timestep ``t`` (module docstring)."""
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    abar = float(scheduler.alphas_cumprod[t])
    abar_prev = float(scheduler.alphas_cumprod[prev_t]) if prev_t >= 0 else float(scheduler.final_alpha_cumprod)
    return eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))


def step_log_prob(scheduler, prediction: Tensor, t: Tensor, x_t: Tensor, x_prev: Tensor, eta: float) -> Tensor:
    """log p(x_prev | x_t) of one DDIM step [rows], fp32, per latent dimension (module docstring).
    ``prediction``: the guided model output at (x_t, t) [rows, c, h, w]. Needs sigma_t > 0."""
    sigma = step_sigma(scheduler, int(t), eta)
    if sigma <= 0:
        raise ValueError(f"the DDIM step from t = {int(t)} has sigma 0 (eta {eta}): it has no log-probability")
    mean = scheduler.step(prediction.float(), t, x_t.float(), eta=eta,
                          variance_noise=torch.zeros_like(x_t, dtype=torch.float32)).prev_sample
    density = -(x_prev.float() - mean) ** 2 / (2 * sigma ** 2) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    return density.flatten(1).mean(1)


def stochastic_steps(scheduler, eta: float) -> Tensor:
    """[steps] bool: which steps of the schedule have sigma_t > 0 (a log-probability)."""
    return torch.tensor([step_sigma(scheduler, int(t), eta) > 0 for t in scheduler.timesteps])
