"""Streaming (``data.streaming: true``, plugins/mmalign_data/streaming.py): the buffer shuffle, a streamed run
against the same records read whole, exact resume, the formats that stream (JSONL, Parquet, a
``save_to_disk`` folder), bad records met mid-run, and the settings a stream refuses."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import base_config, write_jsonl

import mmalign
from mmalign.data import Record
from mmalign.errors import ConfigError, DataError
from mmalign_data.streaming import shuffled


def quiet(*_):
    pass


def records(n):
    return [Record({"i": i}, f"f:{i + 1}", None) for i in range(n)]


def order(n, size, seed=0):
    return [r.fields["i"] for r in shuffled(iter(records(n)), size, torch.Generator().manual_seed(seed))]


def test_a_buffer_shuffle_yields_every_record_once():
    for size in (1, 3, 10, 50):
        assert sorted(order(20, size)) == list(range(20))
    assert order(20, 1) == list(range(20))  # a buffer of one: file order
    assert order(20, 5) == order(20, 5) and order(20, 5) != order(20, 5, seed=1)
    # a buffer that holds every record: torch.randperm, the order of a run that reads them whole
    assert order(20, 20) == torch.randperm(20, generator=torch.Generator().manual_seed(0)).tolist()
    # a small buffer keeps records near their place: record 19 cannot come out before position 15
    assert order(20, 5).index(19) >= 15


def streamed(tmp_path, pairs_file, tokenizer_dir, **data):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, data={"streaming": True, **data},
                      train={"max_steps": 6, "lr_scheduler": "constant", "save_every": 2})
    return cfg


def untimed(history):
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in history]


def test_a_stream_shuffled_whole_trains_exactly_as_the_records_read_whole(tmp_path, pairs_file, tokenizer_dir):
    """64 records, 4 a step: with a buffer of every record the stream's order is the permutation a
    whole-file run draws, so the two runs see the same batches (a second epoch included: 20 steps)."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(pairs_file.read_text().splitlines(keepends=True)[:64]))
    cfg = streamed(tmp_path / "s", data, tokenizer_dir, shuffle_buffer=64)
    cfg["train"].update(max_steps=20, save_every=0)
    stream = mmalign.train(cfg, log=quiet)
    whole = base_config(tmp_path / "w", tokenizer_dir, data, train={"max_steps": 20, "lr_scheduler": "constant"})
    read = mmalign.train(whole, log=quiet)
    assert untimed(stream.history) == untimed(read.history)
    assert stream.history[-1]["epoch"] == pytest.approx(20 * 4 / 64)
    report = stream.data_reports[0]
    assert (report.read, report.used) == (80, 80)  # every record prepared as training reached it


def test_a_resumed_stream_continues_exactly(tmp_path, pairs_file, tokenizer_dir):
    straight = mmalign.train(streamed(tmp_path / "a", pairs_file, tokenizer_dir, shuffle_buffer=16), log=quiet)
    cfg = streamed(tmp_path / "b", pairs_file, tokenizer_dir, shuffle_buffer=16)
    cfg["train"]["max_steps"] = 4
    mmalign.train(cfg, log=quiet)
    cfg["train"]["max_steps"] = 6
    resumed = mmalign.train(cfg, resume=True, log=quiet)
    assert untimed(resumed.history) == untimed(straight.history)


def test_parquet_and_a_saved_dataset_stream_as_jsonl_does(tmp_path, pairs_file, tokenizer_dir):
    import datasets

    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    jsonl = mmalign.train(streamed(tmp_path / "j", pairs_file, tokenizer_dir), log=quiet)
    for name in ("pairs.parquet", "saved"):
        other = mmalign.train(streamed(tmp_path / f"run-{name}", tmp_path / name, tokenizer_dir), log=quiet)
        assert untimed(other.history) == untimed(jsonl.history), name


def test_a_bad_record_stops_the_run_with_its_line_when_training_reaches_it(tmp_path, tokenizer_dir):
    good = {"prompt": "didi", "chosen": " great", "rejected": " awful"}
    data = write_jsonl(tmp_path / "pairs.jsonl", [good] * 12 + [{"prompt": "didi", "chosen": " great"}])
    cfg = streamed(tmp_path, data, tokenizer_dir, shuffle_buffer=1)  # file order
    cfg["train"].update(max_steps=4, save_every=2)
    with pytest.raises(DataError, match=r"pairs\.jsonl:13") as caught:
        mmalign.train(cfg, log=quiet)
    assert caught.value.exit_code == 2
    assert (tmp_path / "run" / "checkpoints" / "step-0000002").is_dir()  # the steps before it are kept


def test_records_the_plugin_skips_are_counted_and_passed_over(tmp_path, tokenizer_dir):
    good = {"prompt": "didi", "chosen": " great", "rejected": " awful"}
    same = {"prompt": "didi", "chosen": " great", "rejected": " great"}  # nothing to prefer: skipped
    data = write_jsonl(tmp_path / "pairs.jsonl", [good, same] * 8)
    cfg = streamed(tmp_path, data, tokenizer_dir, shuffle_buffer=1)
    cfg["train"].update(max_steps=2, save_every=0)
    result = mmalign.train(cfg, log=quiet)
    report = result.data_reports[0]
    # file order: the 8th good record is line 15; line 16 is never reached
    assert report.used == 8 and report.read == 15 and sum(report.skipped.values()) == 7
    assert result.history[-1]["records_seen"] == 15  # the data position counts what was passed over


@pytest.mark.parametrize("setting,key", [
    ({"data": {"eval_size": 4}}, "data.eval_size"),
    ({"reference": {"cache": "memory"}}, "reference.cache"),
    ({"data": {"shuffle_buffer": 0}}, "data.shuffle_buffer"),
    ({"algorithm": {"name": "grpo", "options": {"scorers": {"x": 1.0}}}}, "data.streaming"),
])
def test_what_a_stream_cannot_do_is_refused_before_anything_loads(tmp_path, pairs_file, tokenizer_dir, setting, key):
    cfg = streamed(tmp_path, pairs_file, tokenizer_dir)
    for section, values in setting.items():
        cfg.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as caught:
        mmalign.train(cfg, log=quiet)
    assert caught.value.exit_code == 2 and not (tmp_path / "run").exists()


def test_a_format_that_reads_whole_files_is_refused(tmp_path, pairs_file, tokenizer_dir):
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    with pytest.raises(ConfigError, match="'json' reader .* reads whole files only"):
        mmalign.train(streamed(tmp_path, tmp_path / "pairs.json", tokenizer_dir), log=quiet)


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a large pytest
# process would report the parent's peak; VmHWM belongs to the memory map exec made
PEAK_RSS = """
import sys
from mmalign.cli import main
code = main(["train", sys.argv[1]])
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("peak_rss_kb", hwm, "exit", code)
"""


def peak_rss_mb(tmp_path, tokenizer_dir, records: int, streaming: bool) -> float:
    """Peak RSS of a 20-step run on ``records`` records of about 2 KB (long responses, truncated)."""
    import subprocess
    import sys

    import yaml

    name = f"{records}-{'stream' if streaming else 'whole'}"
    data = tmp_path / f"{records}.jsonl"
    if not data.exists():
        words = "didi dilo dika dizu diro kavo ".split()
        with data.open("w") as f:
            for i in range(records):
                text = " ".join(words[(i + j) % 6] for j in range(165))  # about 1 KB: cut to max_length
                f.write(json.dumps({"prompt": f"didi {i}", "chosen": f" great {text}", "rejected": f" awful {text}"}) + "\n")
    cfg = base_config(tmp_path / name, tokenizer_dir, data, data={"streaming": streaming, "duplicates": "keep"},
                      train={"max_steps": 20, "save_every": 0})
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, str(tmp_path / f"{name}.yaml")], capture_output=True,
                          text=True, timeout=600)
    assert "exit 0" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    return int(proc.stdout.split("peak_rss_kb ")[1].split()[0]) / 1024


@pytest.mark.slow
def test_a_streamed_runs_peak_memory_does_not_grow_with_the_data_set(tmp_path, tokenizer_dir):
    """2,000 against 30,000 records of about 2 KB (4 MB against 60 MB of JSONL): read whole, the
    larger set costs tens of MB more; streamed through a buffer of 1,000 records, next to nothing."""
    sizes = {n: {s: peak_rss_mb(tmp_path, tokenizer_dir, n, s) for s in (True, False)} for n in (2000, 30000)}
    print(sizes)
    whole = sizes[30000][False] - sizes[2000][False]
    streamed_growth = sizes[30000][True] - sizes[2000][True]
    assert whole > 30, sizes  # the test can see the data set in memory
    assert streamed_growth < 8, sizes


def test_a_stream_with_nothing_usable_is_an_error_not_an_endless_search(tmp_path, tokenizer_dir):
    same = {"prompt": "didi", "chosen": " great", "rejected": " great"}
    cfg = streamed(tmp_path, write_jsonl(tmp_path / "pairs.jsonl", [same] * 8), tokenizer_dir)
    with pytest.raises(DataError, match="8 records in a row were skipped"):
        mmalign.train(cfg, log=quiet)


def test_check_reads_a_streamed_set_record_by_record_and_names_every_bad_one(tmp_path, tokenizer_dir, capsys):
    import yaml

    from mmalign.cli import main

    good = {"prompt": "didi", "chosen": " great", "rejected": " awful"}
    data = write_jsonl(tmp_path / "pairs.jsonl", [good, {"prompt": "didi"}, good, {"chosen": " x"}])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(streamed(tmp_path, data, tokenizer_dir)))
    assert main(["check", str(config)]) == 2
    assert "2 bad records" in capsys.readouterr().err
    write_jsonl(data, [good] * 4)
    assert main(["check", str(config)]) == 0
    assert "4 records read" in capsys.readouterr().out


def test_each_process_takes_its_slice_of_the_micro_steps_one_process_would_accumulate():
    from types import SimpleNamespace

    from mmalign.data import RecordStream
    from mmalign_data.preparing import DataReport
    from mmalign_data.streaming import StreamingStream

    plugin = SimpleNamespace(deterministic_collate=True, collate=lambda chunk, generator: chunk,
                             to_device=lambda data, device: data, encode=lambda data: data)

    def stream(world, rank):
        source = RecordStream(lambda: iter(records(10)), 10)
        return StreamingStream(source, lambda record, report: record.fields["i"], DataReport("f"), batch_size=2,
                               accumulation=1, world=world, rank=rank, seed=3, generator=torch.Generator(), buffer=4)

    alone, first, second = stream(1, 0), stream(2, 0), stream(2, 1)
    one = [alone.next_batch(plugin, "cpu").data for _ in range(8)]  # 16 records: into a second pass
    two = [(first.next_batch(plugin, "cpu").data, second.next_batch(plugin, "cpu").data) for _ in range(4)]
    assert [x for pair in two for x in pair] == one
    assert first.consumed == second.consumed == alone.consumed == 16
