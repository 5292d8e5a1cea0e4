"""QLoRA (``model.options.quantization``): the base loaded in 4-bit NF4 (or 8-bit) by bitsandbytes,
frozen, LoRA adapters trained in float32; ln 2 at the first step, a bitwise resume, an adapter in
final/ that peft loads on the quantized base; refused without LoRA, on a tiny model or with another
value, before anything is written."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, base_config

import mmalign
from mmalign.errors import ConfigError

LORA = {"r": 4, "alpha": 8, "target_modules": "all-linear"}


def quiet(*_):
    pass


@pytest.fixture
def saved_llama(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = {k: v for k, v in TINY.items() if k != "model_type"} | {"hidden_size": 64, "intermediate_size": 128,
                                                                     "vocab_size": len(tokenizer)}
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def qlora_config(tmp_path, tokenizer_dir, pairs_file, model_dir, steps=4, **options):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file,
                      train={"max_steps": steps, "save_every": 2, "lr_scheduler": "constant", "lr": 1e-2})
    cfg["model"] = {"reward": "text", "name_or_path": str(model_dir), "tokenizer": str(tokenizer_dir),
                    "lora": dict(LORA), "options": {"quantization": "4bit", **options}}
    return cfg


def test_qlora_trains_adapters_on_a_4bit_base_and_resumes_exactly(tmp_path, tokenizer_dir, pairs_file, saved_llama):
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    straight = mmalign.train(qlora_config(tmp_path / "a", tokenizer_dir, pairs_file, saved_llama), log=quiet)
    assert straight.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert straight.history[-1]["loss"] < straight.history[0]["loss"]
    cut = qlora_config(tmp_path / "b", tokenizer_dir, pairs_file, saved_llama, steps=2)
    mmalign.train(cut, log=quiet)
    cut["train"]["max_steps"] = 4
    resumed = mmalign.train(cut, resume=True, log=quiet)
    untimed = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in resumed.history]
    assert untimed == [{k: v for k, v in r.items() if not k.startswith("time/")} for r in straight.history]
    # final/ is the adapter alone; peft loads it on the quantized base
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    assert (straight.final_dir / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(saved_llama, quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    model = PeftModel.from_pretrained(base, straight.final_dir)
    assert isinstance(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, Linear4bit)


@pytest.mark.parametrize("change,message", [
    ({"lora": None}, "only LoRA adapters can train"),
    ({"name_or_path": None, "tiny": dict(TINY)}, "set model.name_or_path"),
    ({"options": {"quantization": "2bit"}}, "must be 4bit or 8bit"),
])
def test_bad_quantization_settings_are_refused_before_anything_is_written(tmp_path, tokenizer_dir, pairs_file, change,
                                                                          message):
    cfg = qlora_config(tmp_path, tokenizer_dir, pairs_file, tmp_path / "nowhere")
    cfg["model"].update(change)
    with pytest.raises(ConfigError, match=message) as caught:
        mmalign.train(cfg, log=quiet)
    assert caught.value.exit_code == 2 and not (tmp_path / "run").exists()
