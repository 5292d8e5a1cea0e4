"""mmalign_text.causal_lm, the causal-LM code the text, reward-model, VLM (and, for DTYPES, unwrap
and the LoRA config, diffusion) plugins share: one dtype table, two clearly separated unwraps, one
LoRA builder, the loaders; and the VLM plugin built on it rather than on the text reward's insides."""

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import TINY
from mmalign.config import LoraConfig
from mmalign.errors import ConfigError
from mmalign_text import causal_lm
from mmalign_text.causal_lm import (CausalLMModels, attach_lora, from_tiny, lora_config, unwrap,
                                    unwrap_wrappers)


class Wrapper(nn.Module):
    """Stands in for DDP / FSDP / DeepSpeed: the wrapped model as ``.module``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    kwargs = {k: v for k, v in TINY.items() if k != "model_type"}
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=50, **kwargs))


def test_one_dtype_table_for_every_plugin():
    from mmalign import precision
    from mmalign_diffusion import reward as diffusion

    assert causal_lm.DTYPES is precision.DTYPES
    assert precision.DTYPES["bfloat16"] is torch.bfloat16 and precision.DTYPES["auto"] == "auto"
    assert "auto" not in diffusion.SUPPORTED_DTYPES  # diffusers components are cast, never "auto"


def test_unwrap_wrappers_keeps_peft_and_unwrap_reaches_the_transformers_model():
    model = tiny_llama()
    peft_model = attach_lora(model, LoraConfig(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"]), "CAUSAL_LM")
    wrapped = Wrapper(torch.compile(Wrapper(peft_model)))  # DDP around compile around DDP
    assert unwrap_wrappers(wrapped) is peft_model
    assert unwrap(wrapped) is model
    assert unwrap(model) is model and unwrap_wrappers(model) is model


def test_lora_config_maps_mmalign_lora_and_overrides():
    lora = LoraConfig(r=3, alpha=6, dropout=0.1, target_modules=["q_proj", "v_proj"])
    cfg = lora_config(lora, task_type="SEQ_CLS", modules_to_save=["score"])
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (3, 6, 0.1)
    assert set(cfg.target_modules) == {"q_proj", "v_proj"}
    assert cfg.task_type == "SEQ_CLS" and list(cfg.modules_to_save) == ["score"]
    assert set(lora_config(lora, target_modules=["o_proj"]).target_modules) == {"o_proj"}
    assert lora_config(lora).task_type is None


def test_from_tiny_names_model_tiny_on_a_bad_key():
    from transformers import AutoModelForCausalLM

    from mmalign.config import ModelConfig

    with pytest.raises(ConfigError, match="model.tiny"):
        from_tiny(AutoModelForCausalLM, ModelConfig(), {"model_type": "no_such_model"}, default_type="llama")


def test_load_weights_round_trips_in_float32(tmp_path):
    """CausalLMModels.load_weights reads through _from_pretrained(dtype="float32")."""
    from transformers import AutoModelForCausalLM

    from mmalign.config import ModelConfig

    class Models(CausalLMModels):
        cfg = ModelConfig(dtype="bfloat16")

        def _from_pretrained(self, path, dtype=None):
            seen.append(dtype)
            return causal_lm.from_pretrained(AutoModelForCausalLM, path, self.cfg, dtype=dtype)

    seen = []
    saved = tiny_llama()
    saved.save_pretrained(tmp_path)
    target = tiny_llama()
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    Models().load_weights(target, tmp_path)
    assert seen == ["float32"]
    for (name, a), b in zip(saved.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_vlm_reward_builds_on_causal_lm_not_on_text_internals():
    from mmalign_text.reward import TextReward
    from mmalign_vlm.reward import VLMReward

    assert not issubclass(VLMReward, TextReward) and issubclass(VLMReward, CausalLMModels)
    vlm = Path(__import__("mmalign_vlm").__file__).parent
    for path in vlm.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmalign_text"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
