"""``mmalign push RUN_DIR REPO_ID`` and ``train.push_to_hub``, offline up to the upload: HfApi's
``create_repo`` and ``upload_folder`` are replaced by recorders, and the test checks what would be
uploaded (final/ with a model card whose loading code names the repository) and the errors
without a token, with a bad repository id and when the upload fails."""

import json
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from huggingface_hub import HfApi

from conftest import base_config
from mmalign import train
from mmalign.cli import main
from mmalign.config import dump_config, load_config, to_dict
from mmalign.errors import ConfigError
from mmalign.run_validation import validate_for_run
from mmalign_hub.card import write_model_card


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """HfApi's two calls recorded, never sent; a token in HF_TOKEN and none on disk."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        files = sorted(p.relative_to(kwargs["folder_path"]).as_posix()
                       for p in Path(kwargs["folder_path"]).rglob("*") if p.is_file())
        card = (Path(kwargs["folder_path"]) / "README.md").read_text()
        calls.append(("upload_folder", kwargs["repo_id"], dict(kwargs, files=files, card=card, token=self.token)))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    return calls


def no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


def finished_run(tmp_path, lora: bool = False):
    """A run folder as training leaves it (config.yaml, metrics.jsonl, final/), without training."""
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    model = {"reward": "text", "name_or_path": "Qwen/Qwen2.5-0.5B", **({"lora": {"r": 8}} if lora else {})}
    cfg = load_config(data={"output_dir": str(run), "model": model, "data": {"train": "pairs.jsonl"}})
    (run / "config.yaml").write_text(dump_config(cfg))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 0.4321}) + "\n")
    (run / "final" / ("adapter_config.json" if lora else "config.json")).write_text("{}")
    write_model_card(run / "final", to_dict(cfg), [{"step": 5, "loss": 0.4321}], str(run / "final"))
    return run


def test_mmalign_push_uploads_final_with_a_card_naming_the_repository(tmp_path, hub, capsys):
    run = finished_run(tmp_path, lora=True)
    assert main(["push", str(run), "org/dpo-qwen", "--private"]) == 0
    (_, repo, create), (_, repo_again, upload) = hub
    assert repo == repo_again == "org/dpo-qwen"
    assert create == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert upload["folder_path"] == str(run / "final") and upload["token"] == "hf_test_token"
    assert upload["files"] == ["README.md", "adapter_config.json"]
    card = upload["card"]
    assert 'PeftModel.from_pretrained(base, "org/dpo-qwen")' in card and "base_model: Qwen/Qwen2.5-0.5B" in card
    assert "| loss | 0.4321 |" in card and card == (run / "final" / "README.md").read_text()
    assert "pushed" in capsys.readouterr().err


def test_no_token_is_a_clear_error_and_nothing_is_uploaded(tmp_path, hub, capsys, monkeypatch):
    no_token(monkeypatch)
    run = finished_run(tmp_path)
    assert main(["push", str(run), "org/model"]) == 2
    err = capsys.readouterr().err
    assert "hf auth login" in err and "HF_TOKEN" in err and not hub
    assert f'from_pretrained("{run / "final"}")' in (run / "final" / "README.md").read_text()  # untouched


def test_a_card_edited_by_hand_is_uploaded_as_it_is(tmp_path, hub, capsys):
    run = finished_run(tmp_path)
    (run / "final" / "README.md").write_text("---\nlicense: mit\n---\n# My model\n")
    assert main(["push", str(run), "org/model"]) == 0
    assert hub[1][2]["card"] == "---\nlicense: mit\n---\n# My model\n"
    assert "is not the card mmalign wrote" in capsys.readouterr().err


def test_a_bad_repository_or_a_run_without_final_is_refused(tmp_path, hub, capsys):
    assert main(["push", str(finished_run(tmp_path)), "org/a/b"]) == 2
    assert "not a Hub repository id" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "elsewhere"), "org/model"]) == 2
    assert "holds no final/" in capsys.readouterr().err and not hub


def test_a_failed_upload_says_final_is_intact_and_how_to_retry(tmp_path, hub, capsys, monkeypatch):
    def refuse(self, **kwargs):
        raise OSError("403 Forbidden: no write access")

    monkeypatch.setattr(HfApi, "upload_folder", refuse)
    run = finished_run(tmp_path)
    assert main(["push", str(run), "org/model"]) == 2
    err = capsys.readouterr().err
    assert "403 Forbidden" in err and f"mmalign push {run} org/model" in err and "is intact" in err


@pytest.mark.slow
def test_train_push_to_hub_uploads_final_after_training(tmp_path, tokenizer_dir, pairs_file, hub, capsys):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, train={"max_steps": 2, "push_to_hub": "org/tiny-dpo"})
    result = train(cfg, log=lambda *a: None)
    out = capsys.readouterr().out
    assert "pushed" in out and "not the card" not in out  # the card training wrote, made again
    (_, _, _), (_, repo, upload) = hub
    assert repo == "org/tiny-dpo" and upload["folder_path"] == str(result.final_dir)
    assert {"README.md", "model.safetensors", "config.json"} <= set(upload["files"])
    assert 'AutoModelForCausalLM.from_pretrained("org/tiny-dpo")' in upload["card"]
    assert upload["card"] == (result.final_dir / "README.md").read_text()


def test_train_push_to_hub_without_a_token_stops_before_training(tmp_path, tokenizer_dir, pairs_file, hub,
                                                                  monkeypatch):
    no_token(monkeypatch)
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, train={"max_steps": 2, "push_to_hub": "org/tiny-dpo"})
    with pytest.raises(ConfigError, match="train.push_to_hub: .*hf auth login"):
        train(cfg, log=lambda *a: None)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "final").exists()


def test_a_bad_push_to_hub_is_refused_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match="train.push_to_hub.*'org/a/b'"):
        validate_for_run(load_config(data={"model": {"tiny": {"model_type": "llama"}},
                                           "train": {"push_to_hub": "org/a/b"}}))
    assert yaml.safe_load(dump_config(load_config(data={"model": {"tiny": {}}})))["train"]["push_to_hub"] is None
