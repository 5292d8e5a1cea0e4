"""How fast a run goes: a row's rates are its window's total work over total step time, time/data
is the batch-getting share of a step, epoch counts records, and time/elapsed survives a resume."""

import json
from types import SimpleNamespace

import pytest
import torch

import mmalign.engine
import mmalign.throughput
import mmalign_data.batch_stream
from conftest import base_config
from mmalign import train
from mmalign.throughput import Meter
from mmalign_text.reward import TextReward


class Processes:
    """An accelerator's reduce as ``n`` processes that did the same work would give it."""

    def __init__(self, n: int):
        self.num_processes, self.device = n, torch.device("cpu")

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        return tensor * self.num_processes


def test_a_row_divides_the_windows_work_by_its_step_time():
    meter = Meter()
    meter.add_batch(0.5, 4, {"tokens": torch.tensor(100)})
    meter.add_step(2.0)
    meter.add_batch(0.25, 4, {"tokens": 60})  # a step of two micro-batches
    meter.add_batch(0.25, 4, {"tokens": torch.tensor(40)})
    meter.add_step(6.0)
    row = meter.row(Processes(1))
    assert row["time/samples_per_s"] == 12 / 8  # a mean of the steps' rates would say (4/2 + 8/6) / 2
    assert row["time/tokens_per_s"] == 200 / 8
    assert row["time/data"] == 1.0 / 2 and row["time/data_share"] == 1.0 / 8
    assert "time/images_per_s" not in row  # the plugin counted no images
    meter.add_batch(1.0, 4, {"tokens": 10})
    meter.add_step(4.0)
    assert meter.row(Processes(1))["time/samples_per_s"] == 1.0  # a new window: the last row's work is gone


def test_a_rate_the_plugin_cannot_count_in_every_batch_is_left_out():
    meter = Meter()
    meter.add_batch(0.0, 2, {"images": 4})
    meter.add_batch(0.0, 2, {})
    meter.add_step(1.0)
    row = meter.row(Processes(1))
    assert row["time/samples_per_s"] == 4.0
    assert "time/images_per_s" not in row and "time/tokens_per_s" not in row


def test_every_process_adds_its_work_and_the_processes_step_together():
    meter = Meter()
    meter.add_batch(0.5, 4, {"tokens": 30})
    meter.add_step(2.0)
    row = meter.row(Processes(2))
    assert row["time/samples_per_s"] == 8 / 2 and row["time/tokens_per_s"] == 60 / 2
    assert row["time/data"] == 0.5 and row["time/data_share"] == 0.25


class FakeClock:
    """perf_counter for the engine and the meter: it moves only when a batch is fetched or scored."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def test_a_run_logs_its_speed_on_a_clock_it_cannot_misread(tmp_path, tokenizer_dir, pairs_file, monkeypatch):
    clock, tokens = FakeClock(), []
    for module in (mmalign.engine, mmalign.throughput):
        monkeypatch.setattr(module, "time", clock)
    fetch, collate, score = mmalign_data.batch_stream.next_batch, TextReward.collate, TextReward.score

    def slow_fetch(*args):
        clock.now += 0.25
        return fetch(*args)

    def counting_collate(self, examples, generator=None):  # the tokens each pair's shared row holds
        assert all(e.rejected_prompt_ids is None for e in examples)  # every pair shares its prompt
        tokens.append(sum(len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids) for e in examples))
        return collate(self, examples, generator)

    def slow_score(self, *args, **kwargs):
        clock.now += 1.0
        return score(self, *args, **kwargs)

    monkeypatch.setattr(mmalign_data.batch_stream, "next_batch", slow_fetch)
    monkeypatch.setattr(TextReward, "collate", counting_collate)
    monkeypatch.setattr(TextReward, "score", slow_score)
    history = train(base_config(tmp_path, tokenizer_dir, pairs_file, train={"max_steps": 4, "log_every": 2}),
                    log=lambda *a: None).history
    assert [row["epoch"] for row in history] == [8 / 512, 16 / 512]  # 4 pairs a step of 512
    for i, row in enumerate(history):
        window = 2 * row["time/step"]  # every step takes as long: a fetch and the same scoring
        assert row["time/data"] == 0.25 and row["time/data_share"] == 0.25 / row["time/step"]
        assert row["time/samples_per_s"] * window == pytest.approx(8)
        assert row["time/tokens_per_s"] * window == pytest.approx(sum(tokens[2 * i:2 * i + 2]))
    assert [row["time/elapsed"] for row in history] == [2 * 2.25, 4 * 2.25]  # the clock moved only in steps


def test_a_resumed_run_continues_the_clock_and_the_epoch(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, train={"max_steps": 2, "save_every": 2})
    train(cfg, log=lambda *a: None)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    cfg["train"]["max_steps"] = 4
    history = train(cfg, resume=True, log=lambda *a: None).history
    elapsed = [row["time/elapsed"] for row in history]
    assert elapsed[1] <= state["elapsed"] < elapsed[2] < elapsed[3]
    assert [row["epoch"] for row in history] == [4 * step / 512 for step in (1, 2, 3, 4)]


def test_the_progress_bar_shows_the_speed(tmp_path, tokenizer_dir, pairs_file, monkeypatch):
    shown = []
    monkeypatch.setattr(mmalign.engine, "_progress", lambda *a: SimpleNamespace(
        set_postfix=shown.append, update=lambda n: None, close=lambda: None))
    train(base_config(tmp_path, tokenizer_dir, pairs_file, train={"max_steps": 1}), log=lambda *a: None)
    assert {"loss", "samples/s", "tokens/s"} <= set(shown[-1])
