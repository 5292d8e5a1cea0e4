"""A diffusers pipeline passed to mmalign.train as ``model=`` (mmalign/in_memory.py, the diffusion
plugin's components.py): it trains exactly as the same pipeline loaded from ``model.name_or_path``,
its own UNet is the one trained, a LoRA adapter saved from it loads with plain
``pipeline.load_lora_weights``, and what cannot work is refused with exit 2 before anything is
written (a tokenizer besides the pipeline, a LoRA on a pipeline with no path to point it at)."""

import pytest
import torch

import mmalign
from diffusion_helpers import pairs_file, tiny
from mmalign.errors import ConfigError
from mmalign_diffusion import components as C

LORA = {"r": 4, "alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    comps, unet = C.build_tiny(tiny("sd15"))
    path = tmp_path_factory.mktemp("pipeline") / "tiny-sd15"
    C.make_pipeline(comps, unet).save_pretrained(path)
    return path


def load(path):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(path)


def config(tmp_path, name, model_path=None, **model):
    data = {"train": str(pairs_file(tmp_path, n=4))}
    model = {"reward": "diffusion", **({"name_or_path": str(model_path)} if model_path else {}), **model}
    return {"output_dir": str(tmp_path / name), "model": model, "data": data,
            "loss": {"name": "sigmoid", "beta": 5000.0},
            "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-3, "log_every": 1, "progress": False,
                      "callbacks": []}}


def losses(result):
    return [row["loss"] for row in result.history]


def test_a_pipeline_object_trains_as_its_directory_does(tmp_path, pipeline_dir):
    from_path = mmalign.train(config(tmp_path, "path", pipeline_dir), log=lambda *a: None)
    pipe = load(pipeline_dir)
    given = mmalign.train(config(tmp_path, "object"), model=pipe, log=lambda *a: None)
    assert losses(given) == losses(from_path)
    trained = load(given.final_dir).unet.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in pipe.unet.state_dict().items())  # in place


def test_lora_on_a_pipeline_object_loads_with_plain_diffusers(tmp_path, pipeline_dir):
    from peft.utils import get_peft_model_state_dict

    pipe = load(pipeline_dir)
    result = mmalign.train(config(tmp_path, "lora", lora=LORA), model=pipe, log=lambda *a: None)
    assert not (result.final_dir / "base_pipeline").exists()  # the adapter points at the pipeline's path
    fresh = load(pipeline_dir)
    fresh.load_lora_weights(result.final_dir)
    loaded = get_peft_model_state_dict(fresh.unet, adapter_name=next(iter(fresh.unet.peft_config)))
    assert loaded.keys() == get_peft_model_state_dict(pipe.unet).keys()
    assert all(torch.equal(v, get_peft_model_state_dict(pipe.unet)[k]) for k, v in loaded.items())
    assert "tiny-sd15" in (result.final_dir / "README.md").read_text()


@pytest.mark.parametrize("case,message", [("tokenizer", "reads the tokenizers from the pipeline"),
                                          ("lora_without_path", "pipeline without a name_or_path"),
                                          ("not_a_pipeline", "takes a Stable Diffusion")])
def test_what_cannot_work_is_refused(tmp_path, pipeline_dir, case, message):
    pipe, kwargs, model = load(pipeline_dir), {}, {}
    if case == "tokenizer":
        kwargs["tokenizer_or_processor"] = pipe.tokenizer
    elif case == "lora_without_path":
        pipe.register_to_config(_name_or_path="")
        model["lora"] = LORA
    else:
        pipe = pipe.unet
    with pytest.raises(ConfigError, match=message) as caught:
        mmalign.train(config(tmp_path, case, **model), model=pipe, log=lambda *a: None, **kwargs)
    assert caught.value.exit_code == 2 and not (tmp_path / case).exists()


def test_lora_on_a_pipeline_whose_unet_is_not_its_paths_is_refused(tmp_path, pipeline_dir):
    """A pipeline loaded from a path, its UNet then replaced by a random one: the adapter would
    load over the path's UNet, so the run is refused before anything is written; without LoRA
    (the whole pipeline saved) it trains."""
    from diffusers import UNet2DConditionModel

    pipe = load(pipeline_dir)
    torch.manual_seed(3)
    pipe.unet = UNet2DConditionModel.from_config(pipe.unet.config)
    with pytest.raises(ConfigError, match="unet's weights differ from the files there"):
        mmalign.train(config(tmp_path, "replaced", lora=LORA), model=pipe, log=lambda *a: None)
    assert not (tmp_path / "replaced").exists()
    mmalign.train(config(tmp_path, "full"), model=pipe, log=lambda *a: None)
