"""The data-source seam (``mmalign_register_data_sources``): a source registered in-process under
``files`` replaces the built-in one, so records can come from anywhere (here: generated in Python,
no file read); the run trains on exactly what it hands over, and its ``content`` enters the run's
identity. An online run asks for ``prompts``, a streamed one for ``streamed``; ``data.source``
names any registered source, a new one too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import base_config

import mmalign
from mmalign import train
from mmalign.data import Record, TrainingData
from mmalign.hookspecs import hookimpl
from mmalign.data import data_source

ASKED: list[str] = []


def generated(cfg, plugin, paired, layout, log) -> TrainingData:
    """Eight pairs made in Python: each record prepared by the modality plugin, as a reader's would be."""
    from mmalign_data.batch_stream import BatchStream

    ASKED.append(f"paired={paired} batch={layout[0]} accumulation={layout[1]} processes={layout[2]}")
    records = [Record({"prompt": f"w{i} w{i + 1}", "chosen": f"w{i + 2}", "rejected": f"w{i + 3}"},
                      f"generated:{i}", Path(".")) for i in range(8)]
    examples = [plugin.prepare(record, paired=paired) for record in records]
    return TrainingData(BatchStream(examples, *layout), [], [], content="generated-v1")


class Registers:
    """A plugin registering ``generated`` as the data source ``name``."""

    def __init__(self, name: str):
        self.name = name

    @hookimpl
    def mmalign_register_data_sources(self, register):
        register(self.name, generated)


def test_a_registered_source_replaces_the_files_one(tmp_path, tokenizer_dir, pairs_file):
    ASKED.clear()
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, train={"max_steps": 3, "batch_size": 2, "save_every": 3})
    with mmalign.register(Registers("files"), name="test-generated"):
        result = train(mmalign.as_config(cfg), log=lambda *a: None)
    assert ASKED == ["paired=True batch=2 accumulation=1 processes=1"]
    assert [row["step"] for row in result.history] == [1, 2, 3]
    assert result.history[-1]["records_seen"] == 6  # 3 steps of 2 of the 8 generated pairs
    assert result.history[-1]["epoch"] == 6 / 8
    assert result.data_reports == []  # the source read no file, so it reports none
    identity = json.loads((result.output_dir / "checkpoints" / "step-0000003" / "run_identity.json").read_text())
    assert identity["settings"]["data.train (files it points to)"] == "generated-v1"  # what a resume must match


@pytest.mark.parametrize("sections,name", [
    ({}, "files"),
    ({"data": {"streaming": True}}, "streamed"),
    ({"algorithm": {"name": "grpo"}, "loss": {"name": "sigmoid", "beta": 0.04}}, "prompts"),
    ({"data": {"source": "warehouse", "streaming": True}}, "warehouse"),
])
def test_the_run_asks_for_the_source_its_config_names(tmp_path, tokenizer_dir, pairs_file, sections, name):
    assert data_source(mmalign.as_config(base_config(tmp_path, tokenizer_dir, pairs_file, **sections))) == name


def test_data_source_names_a_new_source_beside_the_built_in_ones(tmp_path, tokenizer_dir, pairs_file):
    from mmalign.errors import ConfigError, RegistryError
    from mmalign.run_validation import validate_for_run

    ASKED.clear()
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, data={"source": "warehouse"},
                      train={"max_steps": 2, "batch_size": 2, "callbacks": []}, eval={"evaluators": []})
    with pytest.raises(RegistryError, match="Unknown data source 'warehouse' \\(config key 'data.source'\\)"):
        validate_for_run(mmalign.as_config(cfg))
    with mmalign.register(Registers("warehouse"), name="test-warehouse"):
        result = train(mmalign.as_config(cfg), log=lambda *a: None)
        files = mmalign.as_config(cfg, overrides=["data.source=files", "data.streaming=true"])
        with pytest.raises(ConfigError, match="data.streaming' is true, but data.source is 'files'"):
            validate_for_run(files)
    assert ASKED == ["paired=True batch=2 accumulation=1 processes=1"]
    assert result.history[-1]["records_seen"] == 4 and result.data_reports == []


@pytest.mark.parametrize("sections,words", [
    ({"data": {"source": "files"}, "algorithm": {"name": "grpo"}, "loss": {"name": "sigmoid", "beta": 0.04}},
     "data.source' is 'files', but an online algorithm (grpo) samples from prompts"),
    ({"data": {"source": "streamed"}, "algorithm": {"name": "grpo"}, "loss": {"name": "sigmoid", "beta": 0.04}},
     "data.source' is 'streamed', but an online algorithm"),
    ({"data": {"source": "prompts"}}, "data.source' is 'prompts', the prompts an online algorithm samples from"),
])
def test_a_built_in_source_named_against_the_run_kind_is_refused(tmp_path, tokenizer_dir, pairs_file, sections,
                                                                 words):
    from mmalign.errors import ConfigError
    from mmalign.run_validation import validate_for_run

    with pytest.raises(ConfigError, match=words.replace("(", "\\(").replace(")", "\\)")):
        validate_for_run(mmalign.as_config(base_config(tmp_path, tokenizer_dir, pairs_file, **sections)))
