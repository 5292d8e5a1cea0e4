"""plugins/mmalign_runs/sharded_state.py in one process (the 2-process FSDP2 runs are in
tests/mmalign/test_fsdp.py): the sharded checkpoint format round-trips model and optimizer state
exactly, refuses a model it does not fit, writes no pickle; the full-parameter swap restores the
model."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mmalign.errors import ConfigError
from mmalign_runs import sharded_state as sharding


def tiny_llama(seed: int = 0, hidden: int = 16) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=hidden, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                        tie_word_embeddings=True))


def train_steps(model, optimizer, seeds) -> list[float]:
    losses = []
    for seed in seeds:
        ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(seed))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    return losses


def test_sharded_checkpoint_round_trips_model_and_optimizer_exactly(tmp_path):
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_steps(model, optimizer, [0, 1])
    meta = sharding.save_sharded(tmp_path / "sharded", model, optimizer)
    expected = train_steps(model, optimizer, [2, 3])

    fresh = tiny_llama(seed=1)  # other weights, empty optimizer state
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=5.0)
    sharding.load_sharded(tmp_path / "sharded", fresh, fresh_optimizer, meta)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # still tied
    assert fresh_optimizer.param_groups[0]["lr"] == 1e-2
    assert train_steps(fresh, fresh_optimizer, [2, 3]) == expected
    assert {p.suffix for p in (tmp_path / "sharded").iterdir()} == {".safetensors"}  # no pickle
    # the tied output layer is stored once, under the embedding's name
    assert "step" in str(meta["sharded"]) and "lm_head" not in str(meta["sharded"])


def test_a_sharded_checkpoint_of_another_model_is_refused(tmp_path):
    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters())
    meta = sharding.save_sharded(tmp_path / "sharded", model, optimizer)
    other = tiny_llama(hidden=24)
    with pytest.raises(ConfigError, match="does not fit the model"):
        sharding.load_sharded(tmp_path / "sharded", other, torch.optim.AdamW(other.parameters()), meta)


def test_full_parameters_puts_whole_tensors_in_place_and_restores_the_model():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    full = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    with sharding.full_parameters(model, full):
        assert all(bool((p == 0.5).all()) for p in model.parameters())
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert list(model.parameters()) == params  # the very same objects, untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
