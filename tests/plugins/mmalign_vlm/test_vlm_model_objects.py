"""A VLM and its processor passed to mmalign.train (``model=``, ``tokenizer_or_processor=``;
mmalign/in_memory.py): the tiny LLaVA trains exactly as the same checkpoint loaded from
``model.name_or_path``; without a processor, it is loaded from the path the model came from; a
tokenizer alone is refused (the plugin needs the image processor), with exit 2."""

import pytest

import mmalign
from mmalign.config import load_config
from mmalign.errors import ConfigError
from mmalign_vlm.reward import VLMReward
from vlm_helpers import make_vlm_config
from vlm_helpers import vlm_world  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def checkpoint(vlm_world, tmp_path_factory):  # noqa: F811
    cfg = load_config(data=make_vlm_config(vlm_world, tmp_path_factory.mktemp("unused")))
    reward = VLMReward(cfg.model, cfg.data)
    path = tmp_path_factory.mktemp("llava") / "tiny-llava"
    reward._base_model().save_pretrained(path)
    reward.processor.save_pretrained(path)
    return path


def config(vlm_world, tmp_path, name, path=None):  # noqa: F811
    cfg = make_vlm_config(vlm_world, tmp_path / name, train={"max_steps": 2})
    cfg["model"] = {"reward": "vlm", **({"name_or_path": str(path)} if path else {})}
    return cfg


def load(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path)


def losses(result):
    return [row["loss"] for row in result.history]


def test_a_vlm_object_trains_as_its_checkpoint_does(vlm_world, tmp_path, checkpoint):  # noqa: F811
    from transformers import AutoProcessor

    from_path = mmalign.train(config(vlm_world, tmp_path, "path", checkpoint), log=lambda *a: None)
    given = mmalign.train(config(vlm_world, tmp_path, "object"), model=load(checkpoint),
                          tokenizer_or_processor=AutoProcessor.from_pretrained(checkpoint), log=lambda *a: None)
    assert losses(given) == losses(from_path)
    without = mmalign.train(config(vlm_world, tmp_path, "no-processor"), model=load(checkpoint), log=lambda *a: None)
    assert losses(without) == losses(from_path)
    assert (without.final_dir / "processor_config.json").exists()


def test_a_tokenizer_alone_is_refused(vlm_world, tmp_path, checkpoint):  # noqa: F811
    from transformers import AutoTokenizer

    with pytest.raises(ConfigError, match="needs the model's processor") as caught:
        mmalign.train(config(vlm_world, tmp_path, "tokenizer"), model=load(checkpoint),
                      tokenizer_or_processor=AutoTokenizer.from_pretrained(checkpoint), log=lambda *a: None)
    assert caught.value.exit_code == 2 and not (tmp_path / "tokenizer").exists()
