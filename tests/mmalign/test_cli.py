"""The CLI: bad input is a one-paragraph error with exit code 2, never a traceback."""

import subprocess
import sys

import pytest
import yaml

from conftest import base_config, write_jsonl
from mmalign.cli import main


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_config(tmp_path, cfg):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_plugins_lists_rewards_losses_datasets_evaluators(capsys):
    code, out, _ = run_cli(["plugins"], capsys)
    assert code == 0
    for name in ("rewards:", "text", "losses:", "sigmoid", "ipo", "hinge", "sft", "datasets:",
                 "jsonl", "evaluators:", "reward_accuracy", "demos:"):
        assert name in out


@pytest.mark.parametrize("mutate,expected", [
    (lambda c: c["train"].update(learnig_rate=1), "unknown key 'train.learnig_rate'"),
    (lambda c: c["train"].update(max_steps="many"), "train.max_steps' must be an integer"),
    (lambda c: c["data"].update(train="/nonexistent/pairs.jsonl"), "/nonexistent/pairs.jsonl' (from 'data.train') does not exist"),
    (lambda c: c["loss"].update(name="dpoo"), "Unknown loss 'dpoo'"),
    (lambda c: c["model"].update(reward="audio"), "Unknown reward 'audio'"),
])
def test_bad_config_exit_2(tmp_path, tokenizer_dir, pairs_file, capsys, mutate, expected):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file)
    mutate(cfg)
    code, _, err = run_cli(["train", str(write_config(tmp_path, cfg))], capsys)
    assert code == 2
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("line,expected", [
    ('{"prompt": "a", "chosen": "b", "rejected": ', "pairs.jsonl:3: invalid JSON"),
    ('{"prompt": "a", "rejected": "c"}', 'pairs.jsonl:3: missing key "chosen"'),
    ('{"prompt": "a", "chosen": "", "rejected": "c"}', 'pairs.jsonl:3: "chosen" is empty'),
    ('{"prompt": "a", "chosen": "b", "rejected": "   "}', 'pairs.jsonl:3: "rejected" is empty'),
])
def test_bad_data_exit_2(tmp_path, tokenizer_dir, capsys, line, expected):
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2)
    with data.open("a") as f:
        f.write(line + "\n")
    code, _, err = run_cli(["train", str(write_config(tmp_path, base_config(tmp_path, tokenizer_dir, data)))], capsys)
    assert code == 2 and expected in err


def test_set_override_and_missing_config(tmp_path, capsys):
    code, _, err = run_cli(["train", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "does not exist" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {tiny: {}}\n")
    code, _, err = run_cli(["train", str(cfg), "--set", "train.lr=-1"], capsys)
    assert code == 2 and "train.lr' must be positive" in err


def test_train_then_eval(tmp_path, tokenizer_dir, pairs_file, capsys):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, data={"eval": str(pairs_file)})
    path = write_config(tmp_path, cfg)
    assert run_cli(["train", str(path)], capsys)[0] == 0
    code, out, _ = run_cli(["eval", str(path), "--set", "eval.batch_size=64"], capsys)
    assert code == 0
    import json

    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0.0 <= result["eval/reward_accuracy"] <= 1.0 and result["eval/pairs"] == 512
    (tmp_path / "step-0000002" / "sharded").mkdir(parents=True)  # an FSDP checkpoint: no whole model
    code, _, err = run_cli(["eval", str(path), "--set", f"eval.checkpoint={tmp_path / 'step-0000002'}"], capsys)
    assert code == 2 and "is a sharded FSDP checkpoint" in err


def test_real_process_exit_code(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {tiny: {}}\ntrain: {bogus: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "mmalign.cli", "train", str(cfg)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown key 'train.bogus'" in proc.stderr and "Traceback" not in proc.stderr


def test_score_and_per_subset_eval(tmp_path, tokenizer_dir, pairs_file, capsys):
    import json

    rows = [json.loads(x) for x in pairs_file.read_text().splitlines()[:40]]
    for i, r in enumerate(rows):
        r["subset"] = "even" if i % 2 == 0 else "odd"
    held_out = write_jsonl(tmp_path / "held_out.jsonl", rows)
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, data={"eval": str(held_out)},
                      train={"max_steps": 10, "lr": 3e-3})
    path = write_config(tmp_path, cfg)
    assert run_cli(["train", str(path)], capsys)[0] == 0
    code, out, _ = run_cli(["score", str(path)], capsys)
    assert code == 0 and "40 records scored" in out
    scores = [json.loads(x) for x in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 40 and scores[0]["record"].endswith("held_out.jsonl:1")
    assert scores[0]["margin"] == pytest.approx(scores[0]["reward_chosen"] - scores[0]["reward_rejected"])
    from mmalign.errors import MmalignError
    from mmalign_inspect import score

    assert score(str(path)) == scores  # the same from Python
    with pytest.raises(MmalignError, match="no_such_loss"):  # names checked as the CLI checks them
        score(str(path), overrides=["loss.name=no_such_loss"])
    assert run_cli(["eval", str(path)], capsys)[0] == 0
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    even = sum(s["margin"] > 0 for s in scores[0::2]) / 20
    assert result["eval/reward_accuracy/even"] == pytest.approx(even)
    assert result["eval/reward_accuracy"] == pytest.approx(sum(s["margin"] > 0 for s in scores) / 40)
