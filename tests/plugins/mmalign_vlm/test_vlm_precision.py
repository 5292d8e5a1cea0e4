"""A VLM loaded in bfloat16 trains fp32 master weights (mmalign/precision.py): the language model
and projector in full fine-tuning, the adapters and the projector (modules_to_save) with LoRA;
the frozen vision tower stays in model.dtype."""

import math

import pytest
import torch
from safetensors.torch import load_file

from mmalign.config import load_config
from mmalign.engine import train
from vlm_helpers import make_vlm_config
from vlm_helpers import saved_vlm, vlm_world  # noqa: F401  (fixtures)


@pytest.mark.parametrize("lora", [None, {"r": 4}], ids=["full", "lora"])
def test_bf16_vlm_trains_fp32_master_weights(tmp_path, vlm_world, saved_vlm, lora):  # noqa: F811
    model = {"tiny": None, "name_or_path": str(saved_vlm), "tokenizer": None, "dtype": "bfloat16"}
    if lora:
        model["lora"] = lora
    cfg = make_vlm_config(vlm_world, tmp_path, model=model, train={"max_steps": 1, "callbacks": []})
    result = train(load_config(data=cfg), log=lambda *a: None)
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    saved = load_file(str(result.final_dir / ("adapter_model.safetensors" if lora else "model.safetensors")))
    projector = {k: v.dtype for k, v in saved.items() if "multi_modal_projector" in k}
    assert projector and set(projector.values()) == {torch.float32}
    if lora:
        assert {v.dtype for v in saved.values()} == {torch.float32}
        assert any("lora_A" in k for k in saved)
    else:
        tower = {v.dtype for k, v in saved.items() if "vision_tower" in k}
        language = {v.dtype for k, v in saved.items() if "language_model" in k}
        assert tower == {torch.bfloat16} and language == {torch.float32}
