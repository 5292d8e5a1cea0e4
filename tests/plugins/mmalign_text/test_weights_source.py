"""mmalign_text.weights_source: a model passed from Python is checked against the weights its
name_or_path holds (a directory, or the Hub cache where from_pretrained left them), so a LoRA
adapter never points at a base it was not trained on. The training side (base_model/ written,
loading back to the trained logits) is tests/mmalign/test_model_objects.py."""

import shutil

import pytest
import torch
from conftest import DEMO_DATA, TINY

from mmalign.in_memory import keep_object, weights_source
from mmalign_text.weights_source import check_weights_source, sampled_weights_match, weight_files


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEMO_DATA / "tokenizer")
    tiny = dict(TINY)
    config = AutoConfig.for_model(tiny.pop("model_type"), vocab_size=len(tokenizer), **tiny)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def hub_cache(root, repo: str, files: dict) -> None:
    """The Hub cache's layout for ``repo`` at revision main: refs/main and one snapshot."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    snapshot = folder / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)


def kept(model, name):
    """The model kept as mmalign.train keeps it, named ``name`` (the address carries the name: a
    mark on one address does not reach another test's)."""
    model.name_or_path = model.config._name_or_path = name
    return keep_object(f"model-{name.replace('/', '-')}", model)


def loaded(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def test_a_directory_with_the_same_weights_is_the_source(saved):
    model = loaded(saved)
    address = kept(model, str(saved))
    check_weights_source(address, model)
    assert weights_source(address) == str(saved)
    assert sampled_weights_match(model, [saved / "model.safetensors"]) is True  # compared, not trusted


def test_other_weights_are_not_the_source(saved, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(saved))
    address = kept(model, str(saved))
    check_weights_source(address, model)
    assert weights_source(address) is None and "its weights differ" in capsys.readouterr().err


def test_hub_ids_are_looked_up_in_the_hub_cache(saved, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    from safetensors.torch import save_file

    config = saved / "config.json"
    half = tmp_path / "model.fp16.safetensors"  # a variant, as variant="fp16" downloads it
    save_file({k: v.half().contiguous() for k, v in loaded(saved).state_dict().items()}, str(half))
    hub_cache(tmp_path, "org/tiny", {"config.json": config, "model.safetensors": saved / "model.safetensors"})
    hub_cache(tmp_path, "org/old", {"config.json": config, "pytorch_model.bin": config})  # only .bin: not read
    hub_cache(tmp_path, "org/config-only", {"config.json": config})  # what AutoConfig.from_pretrained leaves
    hub_cache(tmp_path, "org/both", {"config.json": config, "model.safetensors": saved / "model.safetensors",
                                     "model.fp16.safetensors": half})
    model = loaded(saved)
    # org/absent: not in the cache at its main revision (a revision= or cache_dir= load): cannot tell, trusted
    for repo, expected in (("org/tiny", "org/tiny"), ("org/old", "org/old"), ("org/absent", "org/absent"),
                           ("org/config-only", None), (str(tmp_path / "gone"), None)):
        address = kept(model, repo)
        check_weights_source(address, model)
        assert weights_source(address) == expected, repo
    rounded = loaded(saved).half()  # loaded from the fp16 variant: it matches that file, not the fp32 one
    for dtype in (torch.float16, torch.float32):
        address = kept(rounded.to(dtype), "org/both")
        check_weights_source(address, rounded)
        assert weights_source(address) == "org/both", dtype
    # a diffusers component's folder (the diffusion plugin checks a pipeline's components so)
    (tmp_path / "unet").mkdir()
    shutil.copy(saved / "model.safetensors", tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    shutil.copy(config, tmp_path / "unet" / "config.json")
    hub_cache(tmp_path, "org/pipe", {})
    snapshot = tmp_path / "models--org--pipe" / "snapshots" / "abc123"
    shutil.copytree(tmp_path / "unet", snapshot / "unet")
    assert weight_files("org/pipe", "unet") == [snapshot / "unet" / "diffusion_pytorch_model.safetensors"]
    assert weight_files("org/pipe", "vae") is None  # a component not in the cache: cannot tell


def test_a_peft_model_is_compared_by_its_base(saved):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(loaded(saved), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    address = keep_object("model-peft", model)  # its name_or_path is its base's
    check_weights_source(address, model)
    assert weights_source(address) == str(saved)
    assert sampled_weights_match(model, [saved / "model.safetensors"]) is True  # compared, not trusted


def test_resized_rounded_and_cleared(saved, capsys):
    """Resized embeddings are not the path's weights; a bfloat16 load later upcast is; a mark is
    cleared when the same weights are checked against a name_or_path that holds them."""
    from mmalign.in_memory import not_its_weights

    resized = loaded(saved)
    resized.resize_token_embeddings(resized.config.vocab_size + 8)
    assert sampled_weights_match(resized, [saved / "model.safetensors"]) is False
    upcast = loaded(saved).to(torch.bfloat16).float()
    assert sampled_weights_match(upcast, [saved / "model.safetensors"]) is True
    model = loaded(saved)
    address = kept(model, str(saved))
    not_its_weights(address)
    check_weights_source(address, model)
    assert weights_source(address) == str(saved) and "differ" not in capsys.readouterr().err
