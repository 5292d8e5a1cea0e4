"""Diffusion-DPO through the engine equals eq. 14 of Wallace et al. computed directly, for SD 1.5 and
SDXL architectures, epsilon and v-prediction; at initialization the loss is ln 2."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from diffusion_helpers import examples, make_reward, pairs_file, perturbed
from mmalign.losses.objective import preference_loss
from mmalign.evaluate import EvalContext
from mmalign.losses import LossSpec
from mmalign_losses import sigmoid
from mmalign.plugins import registry
from mmalign.batches import Batch
from mmalign_reference.strategies import FrozenCopy, make_reference
from mmalign_diffusion.evaluate import diffusion_accuracy

SIGMOID = LossSpec("sigmoid", sigmoid)


def _double(batch):
    return replace(batch, latents=batch.latents.double(), noise=batch.noise.double(),
                   text=batch.text.double(), pooled=None if batch.pooled is None else batch.pooled.double(),
                   time_ids=None if batch.time_ids is None else batch.time_ids.double())


def eq14_direct(reward, policy, reference, batch, beta):
    """Eq. 14 with one UNet call per image, x_t and the v target written out by hand:

        L = -mean_i log sigmoid(-beta/2 * (||e_w - pol(x_t^w)||^2 - ||e_w - ref(x_t^w)||^2
                                          - (||e_l - pol(x_t^l)||^2 - ||e_l - ref(x_t^l)||^2)))
    (||.||^2 a mean over latent dims; beta/2 is the diffusers scripts' scale of --beta_dpo)."""
    abar = reward.scheduler.alphas_cumprod.double()
    v_pred = reward.scheduler.config.prediction_type == "v_prediction"
    b = batch.noise.shape[0]
    losses = []
    for i in range(b):
        t = batch.timesteps[i]
        a, s = abar[t].sqrt(), (1 - abar[t]).sqrt()
        eps = batch.noise[i:i + 1]

        def err(model, row):
            x0 = batch.latents[row:row + 1]
            kwargs = {}
            if batch.time_ids is not None:
                kwargs["added_cond_kwargs"] = {"text_embeds": batch.pooled[i:i + 1],
                                               "time_ids": batch.time_ids[row:row + 1]}
            pred = model(a * x0 + s * eps, t.view(1), encoder_hidden_states=batch.text[i:i + 1], **kwargs).sample
            target = a * eps - s * x0 if v_pred else eps
            return (target - pred).pow(2).mean()

        inside = (err(policy, i) - err(reference, i)) - (err(policy, b + i) - err(reference, b + i))
        losses.append(-F.logsigmoid(-beta / 2 * inside))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("arch,prediction", [("sd15", "epsilon"), ("sd15", "v_prediction"),
                                             ("sdxl", "epsilon"), ("sdxl", "v_prediction")])
def test_engine_loss_equals_eq14(tmp_path, arch, prediction):
    reward = make_reward(arch, prediction)
    policy = reward.load_policy().double().eval()
    reference = perturbed(policy)
    exs = examples(reward, pairs_file(tmp_path, n=3))
    batch = _double(reward.encode(reward.to_device(reward.collate(exs, torch.Generator().manual_seed(0)), "cpu")))
    beta = 5000.0
    with torch.no_grad():
        engine_loss, _ = preference_loss(SIGMOID, reward.score(policy, batch), reward.score(reference, batch),
                                         beta=beta, options={})
        direct = eq14_direct(reward, policy, reference, batch, beta)
    assert abs(float(engine_loss) - float(direct)) < 1e-6
    assert abs(float(direct) - math.log(2)) > 1e-3  # the reference differs: not the trivial value


def test_sdxl_time_ids_follow_original_size_and_crop(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 48), (200, 10, 10)).save(tmp_path / "tall.png")  # w 32, h 48
    Image.new("RGB", (32, 32), (10, 10, 10)).save(tmp_path / "sq.png")
    (tmp_path / "d.jsonl").write_text('{"prompt": "a red bar", "chosen": "tall.png", "rejected": "sq.png"}\n')
    reward = make_reward("sdxl")
    batch = reward.collate(examples(reward, tmp_path / "d.jsonl"), torch.Generator().manual_seed(0))
    # original (h, w), centre-crop top-left (y, x), target (h, w)
    assert batch.time_ids.tolist() == [[48, 32, 8, 0, 32, 32], [32, 32, 0, 0, 32, 32]]


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}])
def test_at_init_loss_is_ln2_and_accuracy_one_half(tmp_path, lora):
    """LoRA (reference = adapters disabled) and full fine-tuning (frozen copy): policy == reference,
    so every margin is 0. The engine's rewards/accuracies counts only strict wins (0.0 on ties, as
    TRL); diffusion_accuracy counts ties one half (as the diffusers scripts) and reports 0.5."""
    reward = make_reward("sdxl", lora=lora)
    spec = registry().get("losses", "sigmoid")
    policy = reward.load_policy()
    reference = make_reference("auto", policy, reward, None, True, torch.device("cpu"))
    assert reference.name == ("disable_adapters" if lora else "copy")
    exs = examples(reward, pairs_file(tmp_path, n=4))
    batch = reward.encode(reward.to_device(reward.collate(exs, torch.Generator().manual_seed(0)), "cpu"))
    loss, metrics = preference_loss(spec, reward.score(policy, batch), reference.scores(Batch(batch)),
                                    beta=5000.0, options={})
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-6)
    assert float(metrics["rewards/margins"]) == 0.0 and float(metrics["rewards/accuracies"]) == 0.0
    ctx = EvalContext(policy, reference, reward, exs, spec, 5000.0, 8, 0)
    result = diffusion_accuracy(ctx)
    assert result["implicit_accuracy"] == 0.5 and result["implicit_margin"] == 0.0


def test_diffusion_accuracy_counts_positive_margins(tmp_path):
    reward = make_reward("sd15", eval_draws=2)
    policy = reward.load_policy().eval()
    reference = FrozenCopy(perturbed(policy, 0.05), reward)
    exs = examples(reward, pairs_file(tmp_path, n=6))
    ctx = EvalContext(policy, reference, reward, exs, registry().get("losses", "sigmoid"), 100.0, 4, 3)
    result = diffusion_accuracy(ctx)
    generator, margins = torch.Generator().manual_seed(3), torch.zeros(len(exs))
    with torch.no_grad():
        for _ in range(2):
            for s in range(0, len(exs), 4):
                b = reward.encode(reward.to_device(reward.collate(exs[s:s + 4], generator), "cpu"))
                p, r = reward.score(policy, b), reward.score(reference.model, b)
                margins[s:s + 4] += 100.0 * ((p.chosen - r.chosen) - (p.rejected - r.rejected))
    assert result["implicit_accuracy"] == pytest.approx(float((margins > 0).float().mean()))
    assert result["draws"] == 2 and result["pairs"] == 6


def test_chosen_and_rejected_in_one_unet_pass_with_shared_noise(tmp_path):
    reward = make_reward("sdxl")
    policy = reward.load_policy().eval()
    calls = []
    policy.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    exs = examples(reward, pairs_file(tmp_path, n=3))
    batch = reward.encode(reward.to_device(reward.collate(exs, torch.Generator().manual_seed(5)), "cpu"))
    again = reward.encode(reward.to_device(reward.collate(exs, torch.Generator().manual_seed(5)), "cpu"))
    assert batch.noise.shape[0] == 3 and batch.timesteps.shape == (3,)  # one draw per pair
    assert torch.equal(batch.noise, again.noise) and torch.equal(batch.timesteps, again.timesteps)
    with torch.no_grad():
        first, second = reward.score(policy, batch), reward.score(policy, batch)
    assert calls == [6, 6]  # 2B rows, one pass per call
    assert reward.batch_counts(batch) == {"images": 6}  # a pair's two images (the log's time/images_per_s)
    assert torch.equal(first.chosen, second.chosen)  # deterministic given the batch


def test_sft_score_is_the_denoising_loss(tmp_path):
    reward = make_reward("sd15")
    policy = reward.load_policy().eval()
    exs = examples(reward, pairs_file(tmp_path, n=2), paired=False)
    batch = reward.encode(reward.to_device(reward.collate(exs, torch.Generator().manual_seed(0)), "cpu"))
    with torch.no_grad():
        scores = reward.score(policy, batch)
        loss, _ = preference_loss(registry().get("losses", "sft"), scores, None, beta=1.0, options={})
        noisy = reward.scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
        pred = policy(noisy, batch.timesteps, encoder_hidden_states=batch.text).sample
    assert scores.rejected is None and batch.latents.shape[0] == 2 and reward.batch_counts(batch) == {"images": 2}
    assert float(loss) == pytest.approx(0.5 * float((pred - batch.noise).pow(2).mean()), rel=1e-5)
