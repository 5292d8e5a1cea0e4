"""The model card's loading code for diffusion (``DiffusionReward.how_to_load``): it runs as written
on what ``save`` wrote and gives the trained UNet, for a full model and for a LoRA adapter."""

import pytest
import torch

from diffusion_helpers import make_reward, perturbed
from mmalign_diffusion.reward import DiffusionReward

LORA = {"r": 4, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


def _unet_out(unet):
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 12, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=e).sample


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_cards_code_loads_the_trained_unet(tmp_path, lora):
    reward = make_reward("sd15", lora=LORA if lora else None)
    policy = perturbed(reward.load_policy()) if not lora else reward.load_policy().eval()
    if lora:
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.01)
    reward.save(policy, tmp_path / "final")
    library, code = DiffusionReward.how_to_load(tmp_path / "final", str(tmp_path / "final"), None)
    assert library == "diffusers" and ("load_lora_weights" in code) == lora
    namespace: dict = {}
    exec(code, namespace)
    assert torch.allclose(_unet_out(namespace["pipeline"].unet), _unet_out(policy), atol=1e-5)
    if lora:  # and the adapter matters: the base alone computes something else
        with policy.disable_adapter():
            assert not torch.allclose(_unet_out(policy), _unet_out(namespace["pipeline"].unet), atol=1e-3)


def test_a_lora_on_a_named_base_loads_the_base_then_the_adapter(tmp_path):
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(b"")
    _, code = DiffusionReward.how_to_load(tmp_path, "org/sdxl-dpo-lora", "stabilityai/stable-diffusion-xl-base-1.0")
    assert code.splitlines()[2:] == [
        'pipeline = DiffusionPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")',
        'pipeline.load_lora_weights("org/sdxl-dpo-lora")']
