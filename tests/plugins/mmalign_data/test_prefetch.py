"""``data.prefetch`` (plugins/mmalign_data/prefetch.py): micro-batches collated ahead by a thread train exactly
as batches collated in place, diffusion noise included, resumed or not; a bad streamed record is
still met where it lies; the thread ends with its run."""

from __future__ import annotations

import gc
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import base_config, write_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "mmalign"))  # train_processes.py
from train_processes import modality_config  # noqa: E402

import mmalign
from mmalign.errors import DataError


def quiet(*_):
    pass


def untimed(history):
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in history]


def config(modality, tmp_path, name, prefetch, steps):
    cfg = modality_config(modality, tmp_path / name / "run", max_steps=steps, save_every=2, log_every=1,
                          lr_scheduler="constant")
    cfg["data"]["prefetch"] = prefetch
    return cfg


@pytest.mark.parametrize("modality", ["text", pytest.param("vlm", marks=pytest.mark.slow),
                                      pytest.param("diffusion", marks=pytest.mark.slow)])  # diffusion: collate draws noise
def test_prefetched_batches_train_and_resume_exactly_as_batches_collated_in_place(modality, tmp_path, monkeypatch):
    from mmalign_data import prefetch

    threads, original = [], prefetch.Prefetched
    monkeypatch.setattr(prefetch, "Prefetched", lambda *a: threads.append(a) or original(*a))
    plain = mmalign.train(config(modality, tmp_path, "plain", 0, 4), log=quiet)
    assert not threads
    ahead = mmalign.train(config(modality, tmp_path, "ahead", 3, 4), log=quiet)
    assert threads  # collated by the thread
    assert untimed(ahead.history) == untimed(plain.history)
    cut = config(modality, tmp_path, "cut", 3, 2)
    mmalign.train(cut, log=quiet)
    cut["train"]["max_steps"] = 4
    assert untimed(mmalign.train(cut, resume=True, log=quiet).history) == untimed(plain.history)


def test_a_streamed_set_prefetched_trains_as_read_in_place_and_meets_a_bad_record_where_it_lies(
        tmp_path, pairs_file, tokenizer_dir):
    def streamed(name, data, prefetch, steps=6):
        return base_config(tmp_path / name, tokenizer_dir, data,
                           data={"streaming": True, "shuffle_buffer": 8, "prefetch": prefetch},
                           train={"max_steps": steps, "lr_scheduler": "constant", "save_every": 2})

    plain = mmalign.train(streamed("plain", pairs_file, 0), log=quiet)
    assert untimed(mmalign.train(streamed("ahead", pairs_file, 4), log=quiet).history) == untimed(plain.history)
    good = {"prompt": "didi", "chosen": " great", "rejected": " awful"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [good] * 12 + [{"prompt": "didi"}] + [good] * 20)
    cfg = streamed("bad", bad, 8, steps=5)
    cfg["data"]["shuffle_buffer"] = 1  # file order: line 13 is the 4th step's first record
    with pytest.raises(DataError, match=r"bad\.jsonl:13"):
        mmalign.train(cfg, log=quiet)
    checkpoints = sorted(p.name for p in (tmp_path / "bad" / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-0000002"]  # the steps before it trained, not the one it is in


def test_the_thread_ends_with_its_run(tmp_path, pairs_file, tokenizer_dir):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, data={"prefetch": 2}, train={"max_steps": 2})
    mmalign.train(cfg, log=quiet)
    gc.collect()
    deadline = time.time() + 5
    while any(t.name == "mmalign-prefetch" for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "mmalign-prefetch" for t in threading.enumerate())


def test_prefetch_is_refused_for_an_online_run(tmp_path):
    from mmalign.errors import ConfigError

    cfg = modality_config("text-grpo", tmp_path / "run", max_steps=1)
    cfg["data"]["prefetch"] = 2
    with pytest.raises(ConfigError, match="data.prefetch"):
        mmalign.train(cfg, log=quiet)
