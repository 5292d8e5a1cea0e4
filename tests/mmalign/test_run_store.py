"""mmalign/run_store.py: the loop writes no file itself. A store registered in-process (as a user's
plugin would be) receives every call in the documented order, a store that keeps everything in
memory trains a run that leaves nothing on disk (and refuses --resume), and an unknown store is
refused before anything is touched."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import base_config

import mmalign
from mmalign import train
from mmalign.errors import ConfigError, RegistryError
from mmalign.hookspecs import hookimpl
from mmalign.run_store import RunStore
from mmalign_runs.store import LocalRunStore

CALLS: list[str] = []


class RecordingStore(LocalRunStore):
    """The local store, noting each call."""

    def claim(self, data_content, **kwargs):
        CALLS.append("claim")
        super().claim(data_content, **kwargs)

    def start(self, run, state, resume, force_resume):
        CALLS.append("start")
        super().start(run, state, resume, force_resume)

    def append_row(self, row):
        CALLS.append(f"row {row['step']}")
        super().append_row(row)

    def save_checkpoint(self, run, state):
        CALLS.append(f"checkpoint {state.step}")
        super().save_checkpoint(run, state)

    def save_final(self, run, state):
        CALLS.append("final")
        return super().save_final(run, state)


class MemoryStore(RunStore):
    """Keeps the rows and the weights of each checkpoint in memory; writes nothing."""

    kept: dict = {}

    def claim(self, data_content, *, fresh, overwrite, cleanup):
        MemoryStore.kept = {"rows": [], "checkpoints": {}, "content": data_content}

    def start(self, run, state, resume, force_resume):
        if resume:
            raise ConfigError("--resume: the memory store keeps nothing across runs; start a new run.")
        state.history = []

    def append_row(self, row):
        self.kept["rows"].append(row)

    def save_checkpoint(self, run, state):
        self.kept["checkpoints"][state.step] = copy.deepcopy(run.unwrapped.state_dict())

    def save_final(self, run, state):
        self.kept["final"] = copy.deepcopy(run.unwrapped.state_dict())
        return Path(self.cfg.output_dir)


class Stores:
    @hookimpl
    def mmalign_register_run_stores(self, register):
        register("recording", RecordingStore)
        register("memory", MemoryStore)


@pytest.fixture
def stores():
    with mmalign.register(Stores(), name="test-stores"):
        yield


def test_a_registered_store_receives_every_call_in_order(tmp_path, tokenizer_dir, pairs_file, stores):
    CALLS.clear()
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file,
                      train={"run_store": "recording", "save_every": 2, "callbacks": []})
    result = train(mmalign.as_config(cfg), log=lambda *a: None)
    assert CALLS == ["claim", "start", "row 1", "row 2", "checkpoint 2", "row 3", "row 4", "checkpoint 4", "final"]
    assert (result.final_dir / "config.json").is_file()
    assert sorted(p.name for p in (result.output_dir / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]


def test_a_store_in_memory_trains_a_run_that_leaves_nothing_on_disk(tmp_path, tokenizer_dir, pairs_file, stores):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file,
                      train={"run_store": "memory", "save_every": 2, "callbacks": []})
    train(mmalign.as_config(cfg), log=lambda *a: None)
    kept = MemoryStore.kept
    assert not (tmp_path / "run").exists()
    assert [row["step"] for row in kept["rows"]] == [1, 2, 3, 4] and kept["content"] == ""  # text: no outside files
    assert sorted(kept["checkpoints"]) == [2, 4]
    name = next(iter(kept["final"]))
    assert torch.equal(kept["final"][name], kept["checkpoints"][4][name])
    assert not torch.equal(kept["checkpoints"][2][name], kept["checkpoints"][4][name])  # it trained
    with pytest.raises(ConfigError, match="memory store keeps nothing"):  # a store that cannot resume says so
        train(mmalign.as_config(cfg), resume=True, log=lambda *a: None)


def test_an_unknown_store_is_refused_before_anything_is_written(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, train={"run_store": "nowhere"})
    with pytest.raises(RegistryError, match=r"Unknown run store 'nowhere' \(config key 'train.run_store'\)"):
        train(mmalign.as_config(cfg), log=lambda *a: None)
    assert not (tmp_path / "run").exists()
