"""A VLM and its processor passed to mmalign.train (``model=``, ``tokenizer_or_processor=``;
mmalign/in_memory.py): the tiny LLaVA trains exactly as the same checkpoint loaded from
``model.name_or_path``; without a processor, it is loaded from the path the model came from; a
tokenizer alone is refused (the plugin needs the image processor), with exit 2."""

import pytest

import mmalign
from mmalign.errors import ConfigError
from vlm_helpers import make_vlm_config
from vlm_helpers import saved_vlm, vlm_world  # noqa: F401  (fixtures)


def config(vlm_world, tmp_path, name, path=None):  # noqa: F811
    cfg = make_vlm_config(vlm_world, tmp_path / name, train={"max_steps": 2})
    cfg["model"] = {"reward": "vlm", **({"name_or_path": str(path)} if path else {})}
    return cfg


def load(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path)


def losses(result):
    return [row["loss"] for row in result.history]


def test_a_vlm_object_trains_as_its_checkpoint_does(vlm_world, tmp_path, saved_vlm):  # noqa: F811
    from transformers import AutoProcessor

    from_path = mmalign.train(config(vlm_world, tmp_path, "path", saved_vlm), log=lambda *a: None)
    given = mmalign.train(config(vlm_world, tmp_path, "object"), model=load(saved_vlm),
                          tokenizer_or_processor=AutoProcessor.from_pretrained(saved_vlm), log=lambda *a: None)
    assert losses(given) == losses(from_path)
    without = mmalign.train(config(vlm_world, tmp_path, "no-processor"), model=load(saved_vlm), log=lambda *a: None)
    assert losses(without) == losses(from_path)
    assert (without.final_dir / "processor_config.json").exists()


def test_a_tokenizer_alone_is_refused(vlm_world, tmp_path, saved_vlm):  # noqa: F811
    from transformers import AutoTokenizer

    with pytest.raises(ConfigError, match="needs the model's processor") as caught:
        mmalign.train(config(vlm_world, tmp_path, "tokenizer"), model=load(saved_vlm),
                      tokenizer_or_processor=AutoTokenizer.from_pretrained(saved_vlm), log=lambda *a: None)
    assert caught.value.exit_code == 2 and not (tmp_path / "tokenizer").exists()
