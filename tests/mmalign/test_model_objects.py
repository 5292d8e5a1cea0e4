"""Models passed to mmalign.train from Python (``model=``, ``ref_model=``,
``tokenizer_or_processor=``; mmalign/in_memory.py): a model object trains exactly as the same
weights loaded from ``model.name_or_path``; without a tokenizer, the tokenizer comes from the path
the model was loaded from (as TRL's trainers do); the address carries a fingerprint of the initial
weights, so a resume accepts the same weights and refuses others; what is saved loads with plain
transformers / peft, with a base model written beside the adapter when the object has no path;
contradictions are refused with exit 2 before anything is written."""

import pytest
import torch
from conftest import DEMO_DATA, TINY, base_config

import mmalign
from mmalign.errors import ConfigError

TOKENIZER, PAIRS = DEMO_DATA / "tokenizer", DEMO_DATA / "train.jsonl"


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny Llama with the demo tokenizer, saved as a checkpoint directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    tiny = dict(TINY)
    config = AutoConfig.for_model(tiny.pop("model_type"), vocab_size=len(tokenizer),
                                  pad_token_id=tokenizer.pad_token_id, **tiny)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny-llama"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def path_config(tmp_path, name, model_path, **sections):
    model = {"reward": "text", "name_or_path": str(model_path), **sections.pop("model", {})}
    cfg = base_config(tmp_path / name, TOKENIZER, PAIRS, **sections)
    cfg["model"] = model
    return cfg


def object_config(tmp_path, name, **sections):
    cfg = path_config(tmp_path, name, "unused", **sections)
    del cfg["model"]["name_or_path"]
    return cfg


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def built_in_memory(path):
    """A random model of the saved config, with no name_or_path (a config read from a directory
    carries that directory as its name)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    config._name_or_path = ""
    return AutoModelForCausalLM.from_config(config)


def losses(result):
    return [row["loss"] for row in result.history]


def test_a_model_object_trains_as_its_directory_does(tmp_path, saved_model):
    from transformers import AutoTokenizer

    from_path = mmalign.train(path_config(tmp_path, "path", saved_model), log=quiet)
    given = load(saved_model)
    with_tokenizer = mmalign.train(object_config(tmp_path, "object"), model=given,
                                   tokenizer_or_processor=AutoTokenizer.from_pretrained(saved_model), log=quiet)
    assert losses(with_tokenizer) == losses(from_path)
    # the object itself was trained, and final/ holds its weights
    final = load(with_tokenizer.final_dir)
    assert all(torch.equal(final.state_dict()[k], v) for k, v in given.state_dict().items())
    # no tokenizer given: loaded from the path the model came from
    without = mmalign.train(object_config(tmp_path, "no-tokenizer"), model=load(saved_model), log=quiet)
    assert losses(without) == losses(from_path)
    assert AutoTokenizer.from_pretrained(without.final_dir).get_vocab() == AutoTokenizer.from_pretrained(
        saved_model).get_vocab()
    card = (without.final_dir / "README.md").read_text()
    assert "tiny-llama" in card and "memory://" not in card


def test_a_reference_object_gives_the_reference_scores(tmp_path, saved_model):
    """ref_model=: a separate model of the same weights scores as the default frozen copy does."""
    default = mmalign.train(path_config(tmp_path, "default", saved_model), log=quiet)
    given = mmalign.train(path_config(tmp_path, "ref", saved_model), ref_model=load(saved_model), log=quiet)
    assert losses(given) == losses(default)


def test_lora_on_a_model_built_in_memory_saves_its_base(tmp_path, saved_model):
    """No name_or_path to point the adapter at: save writes base_model/ beside it, which plain peft
    loads back to the trained model's outputs."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = built_in_memory(saved_model)
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    cfg = object_config(tmp_path, "lora", model={"lora": lora})
    result = mmalign.train(cfg, model=model, tokenizer_or_processor=AutoTokenizer.from_pretrained(saved_model),
                           log=quiet)
    final = result.final_dir
    assert (final / "base_model" / "config.json").exists()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(final / "base_model"), final).eval()
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-5)


@pytest.mark.parametrize("named", ["saved", "org/config-only"])
def test_lora_on_a_from_config_model_saves_its_base(tmp_path, saved_model, capsys, monkeypatch, named):
    """from_config(AutoConfig.from_pretrained(p)) carries p as its name_or_path with random weights
    (p a directory, or a Hub id of which the cache holds the config alone, as AutoConfig leaves it):
    the adapter must not point at p. The base goes to base_model/, with a warning, and the adapter
    names no base; a model loaded from p still saves the adapter alone, pointing at p."""
    import json
    import shutil

    from huggingface_hub import constants
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(saved_model)
    if named != "saved":  # the Hub cache's layout: refs/main and a snapshot holding config.json
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        snapshot = tmp_path / "hub" / "models--org--config-only" / "snapshots" / "abc"
        snapshot.mkdir(parents=True)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("abc")
        shutil.copy(saved_model / "config.json", snapshot / "config.json")
        config._name_or_path = named
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)
    assert model.name_or_path == (str(saved_model) if named == "saved" else named)
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    result = mmalign.train(object_config(tmp_path, "from-config", model={"lora": lora}), model=model,
                           tokenizer_or_processor=AutoTokenizer.from_pretrained(saved_model), log=quiet)
    assert ("its weights differ" if named == "saved" else "no weights of it") in capsys.readouterr().err
    final = result.final_dir
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(final / "base_model"), final).eval()
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model.eval()(ids).logits, atol=1e-5)
    assert "a model object passed to `mmalign.train()`" in (final / "README.md").read_text()
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    from_path = mmalign.train(object_config(tmp_path, "from-path", model={"lora": lora}), model=load(saved_model),
                              log=quiet)
    assert not (from_path.final_dir / "base_model").exists() and "differ" not in capsys.readouterr().err
    assert json.loads((from_path.final_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(saved_model)


def test_resume_accepts_the_same_weights_and_refuses_others(tmp_path, saved_model):
    cfg = object_config(tmp_path, "resume", train={"max_steps": 2, "save_every": 1})
    mmalign.train(cfg, model=load(saved_model), log=quiet)
    cfg["train"]["max_steps"] = 3
    resumed = mmalign.train(cfg, model=load(saved_model), resume=True, log=quiet)
    assert resumed.history[-1]["step"] == 3
    other = load(saved_model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    cfg["train"]["max_steps"] = 4
    with pytest.raises(ConfigError, match="model.name_or_path"):
        mmalign.train(cfg, model=other, resume=True, log=quiet)


@pytest.mark.parametrize("case,message", [
    ("tiny", "config sets model.tiny"), ("path", "config sets model.name_or_path"),
    ("same_reference", "ref_model= is the model being trained"), ("tokenizer_as_model", "is not a model|passed as a model"),
    ("quantized", "BitsAndBytesConfig"), ("no_name", "no name_or_path to load its tokenizer")])
def test_contradictions_are_refused_before_anything_is_written(tmp_path, saved_model, case, message):
    from transformers import AutoTokenizer

    model, cfg, kwargs = load(saved_model), object_config(tmp_path, case), {}
    if case == "tiny":
        cfg["model"]["tiny"] = dict(TINY)
    elif case == "path":
        cfg["model"]["name_or_path"] = str(saved_model)
    elif case == "same_reference":
        kwargs["ref_model"] = model
    elif case == "tokenizer_as_model":
        model = AutoTokenizer.from_pretrained(saved_model)
    elif case == "quantized":
        cfg["model"].update(lora={"r": 4, "alpha": 8}, options={"quantization": "4bit"})
    else:
        model = built_in_memory(saved_model)
    with pytest.raises(ConfigError, match=message) as caught:
        mmalign.train(cfg, model=model, log=quiet, **kwargs)
    assert caught.value.exit_code == 2 and not (tmp_path / case).exists()


def test_a_frozen_peft_model_is_refused_and_a_trainable_one_trains(tmp_path, saved_model):
    """A PeftModel loaded for inference (PeftModel.from_pretrained's default) has nothing to train."""
    from peft import LoraConfig, PeftModel, get_peft_model

    adapter = tmp_path / "adapter"
    get_peft_model(load(saved_model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])).save_pretrained(adapter)
    with pytest.raises(ConfigError, match="nothing to train") as caught:
        mmalign.train(object_config(tmp_path, "frozen"), model=PeftModel.from_pretrained(load(saved_model), adapter),
                      log=quiet)
    assert caught.value.exit_code == 2 and not (tmp_path / "frozen" / "run").exists()
    trainable = PeftModel.from_pretrained(load(saved_model), adapter, is_trainable=True)
    result = mmalign.train(object_config(tmp_path, "trainable"), model=trainable, log=quiet)
    assert (result.final_dir / "adapter_model.safetensors").exists() and len(result.history) == 4
