"""Sampled trajectories as what trains (mmalign_diffusion.steps): the per-step log-probs the
policy losses see are the sampler's recorded ones under an unchanged UNet (ratio 1), each image
trains its own random fraction of the steps, and the online sampling options are checked."""

from types import SimpleNamespace

import pytest
import torch

from diffusion_helpers import make_reward, perturbed
from mmalign.errors import ConfigError
from mmalign_diffusion.options import sampling_options
from mmalign_rl.algorithms import GroupOptions
from mmalign_rl.ddpo import DDPOOptions
from mmalign_rl.online_dpo import OnlineDPOOptions

CONTEXTS = [{"prompt": "a red circle"}, {"prompt": "a blue square"}]


def _trajectory_batch(reward, policy, n=3, steps=6, fraction=0.5, guidance=1.0, seed=0):
    samples = reward.sample(policy, CONTEXTS, n, torch.Generator().manual_seed(seed), steps=steps,
                            guidance_scale=guidance, score="trajectory", timestep_fraction=fraction)
    batch = reward.collate(samples.examples, torch.Generator().manual_seed(seed + 1))
    return samples, reward.encode(reward.to_device(batch, "cpu"))


@pytest.mark.parametrize("arch,prediction,guidance", [("sd15", "epsilon", 1.0), ("sdxl", "v_prediction", 3.0)])
def test_unit_scores_are_the_recorded_log_probs_of_the_trained_steps(arch, prediction, guidance):
    """Under the UNet that sampled, score(per_unit=True) gives back the sampler's log-probs at the
    steps each image trains (ratio 1); under another UNet they differ; the sums are their sums."""
    reward = make_reward(arch, prediction)
    policy = reward.load_policy()
    samples, batch = _trajectory_batch(reward, policy, guidance=guidance)
    recorded = samples.trajectory.log_probs  # [C*n rows context-major, steps]
    stochastic = samples.trajectory.stochastic.nonzero().squeeze(1)
    assert batch.steps.selected.shape == (6, int(0.5 * len(stochastic)))  # R rows, int(fraction * 5) = 2
    policy.eval()
    with torch.no_grad():
        scores = reward.score(policy, batch, per_unit=True)
    assert scores.unit_scores.shape == (2, 3, 2) and torch.equal(scores.unit_mask, torch.ones(2, 3, 2))
    for i in range(2):
        for j in range(3):
            row = batch.steps.selected[j * 2 + i]  # batch rows are response-major
            assert set(row.tolist()) <= set(stochastic.tolist())
            expected = recorded[i * 3 + j, row]
            assert torch.allclose(scores.unit_scores[i, j], expected, atol=1e-5)
    assert torch.allclose(scores.sums, scores.unit_scores.sum(-1))
    assert torch.equal(scores.units, torch.full((2, 3), 2.0))
    with torch.no_grad():
        other = reward.score(perturbed(policy, 0.05), batch, per_unit=True)
    assert not torch.allclose(other.unit_scores, scores.unit_scores, atol=1e-4)


def test_each_image_draws_its_own_steps_from_the_generator():
    reward = make_reward("sd15")
    policy = reward.load_policy()
    _, a = _trajectory_batch(reward, policy, n=4, steps=10, fraction=0.3)
    _, b = _trajectory_batch(reward, policy, n=4, steps=10, fraction=0.3)
    assert torch.equal(a.steps.selected, b.steps.selected)
    assert len({tuple(r) for r in a.steps.selected.tolist()}) > 1  # not one subset for every image
    assert (a.steps.selected.diff(dim=1) > 0).all()  # distinct steps, in order


def test_the_update_runs_one_unet_pass_per_trained_step_over_every_row():
    """Rows train different timesteps (their own random subsets); the scores still take U passes
    of all R rows (each row at its own timestep), not one pass per distinct timestep."""
    reward = make_reward("sd15")
    policy = reward.load_policy()
    _, batch = _trajectory_batch(reward, policy, n=4, steps=10, fraction=0.3, guidance=2.0)
    rows, units = batch.steps.selected.shape
    assert len(batch.steps.selected.unique()) > units  # more distinct timesteps than passes
    calls = []
    hook = policy.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    try:
        with torch.no_grad():
            reward.score(policy, batch, per_unit=True)
    finally:
        hook.remove()
    assert calls == [2 * rows] * units  # the unconditional and conditional rows of guidance


def test_one_unit_alone_is_its_column_at_the_cost_of_one_pass():
    """score(units=slice(u, u + 1)) (an update backpropagating step by step, mmalign/unit_chunks.py):
    column u as the full scoring gives it, the others 0 without a graph, one UNet pass of every row."""
    reward = make_reward("sd15")
    policy = reward.load_policy()
    _, batch = _trajectory_batch(reward, policy, n=2, steps=10, fraction=0.3, guidance=2.0)
    rows, units = batch.steps.selected.shape
    assert reward.unit_chunks and reward.unit_count(batch) == units == 2  # int(0.3 * 9 stochastic steps)
    with torch.no_grad():
        whole = reward.score(policy, batch, per_unit=True).unit_scores
    calls = []
    hook = policy.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    try:
        one = reward.score(policy, batch, per_unit=True, units=slice(1, 2)).unit_scores
    finally:
        hook.remove()
    assert calls == [2 * rows]
    assert torch.allclose(one[..., 1], whole[..., 1], atol=1e-6) and one.requires_grad
    assert torch.equal(one[..., 0], torch.zeros_like(one[..., 0]))


def test_gradients_reach_lora_adapters_only():
    lora = {"r": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    reward = make_reward("sdxl", lora=lora)
    policy = reward.load_policy()
    _, batch = _trajectory_batch(reward, policy, n=2, steps=4, fraction=1.0)
    reward.score(policy, batch, per_unit=True).unit_scores.sum().backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert grads and all("lora" in n for n in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())


def _options(kind=GroupOptions, **values):
    sampling = values.pop("sampling", {})
    return kind(scorers={"brightness": 1.0}, sampling=sampling, **values)


def test_sampling_options_resolve_the_score_by_algorithm():
    assert sampling_options(_options(DDPOOptions)) == {"steps": 20, "eta": 1.0, "guidance_scale": 1.0,
                                                       "timestep_fraction": 1.0, "score": "trajectory"}
    assert sampling_options(_options(OnlineDPOOptions))["score"] == "denoising"  # online Diffusion-DPO
    dpo = _options(OnlineDPOOptions, sampling={"score": "trajectory", "num_inference_steps": 8, "eta": 0.5})
    assert sampling_options(dpo) == {"steps": 8, "eta": 0.5, "guidance_scale": 1.0, "timestep_fraction": 1.0,
                                     "score": "trajectory"}


@pytest.mark.parametrize("values,key", [
    ({"temperature": 0.7}, "algorithm.options.temperature"),
    ({"max_new_tokens": 8}, "algorithm.options.max_new_tokens"),
    ({"sampling": {"steps": 4}}, "algorithm.options.sampling.steps"),
    ({"sampling": {"num_inference_steps": 0}}, "algorithm.options.sampling.num_inference_steps"),
    ({"sampling": {"eta": 0.0}}, "algorithm.options.sampling.eta"),  # no log-probs at eta 0
    ({"sampling": {"guidance_scale": 0.5}}, "algorithm.options.sampling.guidance_scale"),
    ({"sampling": {"timestep_fraction": 0}}, "algorithm.options.sampling.timestep_fraction"),
    ({"sampling": {"timestep_fraction": 1.5}}, "algorithm.options.sampling.timestep_fraction"),
    ({"sampling": {"score": "denoising"}}, "algorithm.options.sampling.score"),  # grpo needs per-step ratios
    ({"sampling": {"score": "pixels"}}, "algorithm.options.sampling.score"),
])
def test_bad_sampling_options_are_named(values, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        sampling_options(_options(**values))


def test_the_sampler_refuses_trajectories_without_noise():
    reward = make_reward("sd15")
    with pytest.raises(ConfigError, match="eta > 0"):
        reward.sample(reward.load_policy(), CONTEXTS, 1, torch.Generator(), steps=2, eta=0.0, score="trajectory")


def test_records_are_contexts_too():
    """The online source hands the sampler data records ({fields, where}), not mappings."""
    reward = make_reward("sd15")
    record = SimpleNamespace(fields={"prompt": "a red circle", "answer": 1}, where="p.jsonl:1")
    out = reward.sample(reward.load_policy(), [record], 1, torch.Generator().manual_seed(0), steps=2)
    assert [e.caption for e in out.examples] == ["a red circle"]
