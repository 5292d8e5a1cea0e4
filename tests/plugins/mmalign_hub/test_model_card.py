"""``final/README.md``: a Hugging Face model card written with final/, naming the base model, data,
loss and its settings and the final metrics, with loading code that runs as written; final/ still
loads with plain from_pretrained."""

import json

import pytest
import torch
import yaml

from conftest import base_config
from mmalign import train
from mmalign.config import load_config, to_dict
from mmalign_hub.card import model_card


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def loading_code(card: str) -> str:
    return card.split("## How to load")[1].split("```python\n")[1].split("```")[0]


@pytest.mark.slow
def test_a_text_run_card_names_the_loss_beta_base_and_final_loss(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, train={"max_steps": 2, "save_every": 2},
                      loss={"name": "ipo", "beta": 0.25})
    result = train(cfg, log=lambda *a: None)
    card = (result.final_dir / "README.md").read_text()
    last = json.loads((result.output_dir / "metrics.jsonl").read_text().splitlines()[-1])
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["tags"][:2] == ["mmalign", "ipo"]
    assert "base_model" not in meta  # a model.tiny base has no Hub id
    assert "| loss | `ipo`" in card and "| beta | 0.25 |" in card
    assert "| base model | built from `model.tiny` (llama" in card and "| training data | `train.jsonl` |" in card
    assert f"| loss | {last['loss']:.4g} |" in card and "mmalign 0.1.0" in card
    namespace: dict = {}
    exec(loading_code(card), namespace)  # the card's own code loads final/
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert all(torch.equal(a, b) for a, b in zip(namespace["model"].state_dict().values(),
                                                 plain.state_dict().values()))
    assert namespace["tokenizer"] is not None
    # the card sits in final/ only; checkpoints, verified file by file, are unchanged
    from mmalign_runs.checkpoint import find_resume_checkpoint

    path, _, _ = find_resume_checkpoint(result.output_dir / "checkpoints", None, lambda *a: None)
    assert path.name == "step-0000002" and not (path / "model" / "README.md").exists()


@pytest.mark.slow
def test_a_lora_run_card_shows_the_peft_loading_code(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, train={"max_steps": 2, "lr": 1e-2})
    cfg["model"]["lora"] = {"r": 4, "alpha": 8}
    result = train(cfg, log=lambda *a: None)
    card = (result.final_dir / "README.md").read_text()
    assert front_matter(card)["library_name"] == "peft" and "lora" in front_matter(card)["tags"]
    assert "PeftModel.from_pretrained" in loading_code(card) and "LoRA (r 4, alpha 8" in card
    namespace: dict = {}
    exec(loading_code(card), namespace)
    from peft import PeftModel

    assert isinstance(namespace["model"], PeftModel)
    lora = {k: v for k, v in namespace["model"].state_dict().items() if "lora_B" in k}
    assert lora and any(v.abs().max() > 0 for v in lora.values())  # the trained adapter, not a fresh one


def _config(tmp_path, **sections) -> dict:
    data = {"output_dir": str(tmp_path / "run"), "model": {"reward": "text", "name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},
            "data": {"train": str(tmp_path / "pairs.jsonl")}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return to_dict(load_config(data=data))


def test_a_hub_base_is_the_cards_base_model_and_the_peft_base(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "adapter_config.json").write_text("{}")
    config = _config(tmp_path, model={"lora": {"r": 8}})
    card = model_card(config, [{"step": 3, "loss": 0.5}], tmp_path / "final", "org/dpo-model")
    meta = front_matter(card)
    assert meta == {"library_name": "peft", "base_model": "Qwen/Qwen2.5-0.5B-Instruct",
                    "tags": ["mmalign", "dpo", "text", "lora"]}
    code = loading_code(card)
    assert 'AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")' in code
    assert 'PeftModel.from_pretrained(base, "org/dpo-model")' in code
    assert "| loss | `sigmoid`" in card and "| beta | 0.1 |" in card and "| loss | 0.5 |" in card
    assert str(tmp_path) not in card  # local paths appear by their last component only


def test_an_online_run_card_names_the_algorithm_and_its_options(tmp_path):
    (tmp_path / "final").mkdir()
    config = _config(tmp_path, algorithm={"name": "grpo", "options": {"num_generations": 4}},
                     loss={"beta": 0.04}, model={"reward": "text"})
    card = model_card(config, [], tmp_path / "final", "runs/x/final")
    assert front_matter(card)["tags"] == ["mmalign", "grpo", "text"]
    assert "| online algorithm | `grpo`" in card and '"num_generations": 4' in card
    assert "| beta (KL to the reference) | 0.04 |" in card and "No metrics were logged." in card
    assert 'AutoModelForCausalLM.from_pretrained("runs/x/final")' in loading_code(card)


def test_a_plugin_without_loading_code_sends_the_reader_to_mmalign(tmp_path, monkeypatch):
    from mmalign.protocol import ModalityPlugin
    from mmalign_text.reward import TextReward

    monkeypatch.setattr(TextReward, "how_to_load", ModalityPlugin.how_to_load)
    (tmp_path / "final").mkdir()
    card = model_card(_config(tmp_path), [], tmp_path / "final", "runs/x/final")
    assert front_matter(card)["library_name"] == "mmalign" and "`mmalign eval`" in card
