"""``train.report_to``: every metrics.jsonl row reaches the experiment trackers (TensorBoard's event
files read back), the config as flat hyperparameters, a resumed session hides what an earlier one
logged past its checkpoint, and an unknown or missing tracker is refused before anything loads."""

import importlib.util
import json
import math
import os

import pytest
import yaml

from conftest import base_config
from mmalign import train
from mmalign.cli import main
from mmalign.config import load_config
from mmalign.errors import ConfigError
from mmalign.precision import make_accelerator
from mmalign_metrics.trackers import TrackerCallback, flat_config, mlflow_store

pytest.importorskip("tensorboard", reason="the test extra installs tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_holds_every_row_of_metrics_jsonl(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, train={"max_steps": 3, "report_to": ["tensorboard"]},
                      data={"eval_size": 8})
    out = train(cfg, log=lambda *a: None).output_dir
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = scalars(out / "trackers" / "mmalign")
    assert [step for step, _ in logged["loss"]] == [1, 2, 3]
    for key in ("loss", "rewards/chosen", "rewards/margins", "rewards/accuracies", "lr", "eval/reward_accuracy"):
        expected = [(r["step"], r[key]) for r in rows if key in r]
        assert [s for s, _ in logged[key]] == [s for s, _ in expected], key
        assert [v for _, v in logged[key]] == pytest.approx([v for _, v in expected], rel=1e-6), key  # float32
    assert logged["loss"][0][1] == pytest.approx(math.log(2), abs=1e-6)
    hparams = yaml.safe_load(next((out / "trackers" / "mmalign").rglob("hparams.yml")).read_text())
    assert hparams["loss.beta"] == 0.1 and hparams["train.report_to"] == '["tensorboard"]'


def test_a_resumed_session_hides_what_the_last_one_logged_past_its_checkpoint(tmp_path):
    """purge_step: rows an earlier session logged after the checkpoint it resumes from are hidden,
    as --resume drops them from metrics.jsonl."""
    cfg = load_config(data={"output_dir": str(tmp_path), "model": {"tiny": {"model_type": "llama"}},
                            "train": {"report_to": ["tensorboard"]}})
    for first, value in ((1, 1.0), (3, 2.0)):  # killed after step 4, resumed from a step-2 checkpoint
        accelerator = make_accelerator("no", cpu=True, log_with=["tensorboard"], project_dir=tmp_path / "trackers")
        callback = TrackerCallback(tmp_path, cfg=cfg, accelerator=accelerator)
        for step in range(first, 5):
            callback.on_log(step, {"step": step, "loss": value})
        if first == 3:
            callback.on_train_end([])
    assert scalars(tmp_path / "trackers" / "mmalign")["loss"] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]


def test_the_config_becomes_flat_scalar_hyperparameters():
    cfg = load_config(data={"model": {"tiny": {"model_type": "llama", "hidden_size": 8}, "lora": {"r": 4}},
                            "loss": {"options": {"label_smoothing": 0.1}}})
    flat = flat_config(cfg)
    assert flat["model.tiny.hidden_size"] == 8 and flat["model.lora.r"] == 4
    assert flat["loss.options.label_smoothing"] == 0.1 and flat["train.adam_betas"] == "[0.9, 0.999]"
    assert flat["model.name_or_path"] == "null" and flat["train.report_to"] == "[]"
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_trackers_listed_without_report_to_is_a_config_error(tmp_path):
    cfg = load_config(data={"model": {"tiny": {"model_type": "llama"}}})
    with pytest.raises(ConfigError, match="train.report_to"):
        TrackerCallback(tmp_path, cfg=cfg, accelerator=object())


def _check(tmp_path, capsys, report_to) -> tuple[int, str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "model": {"tiny": {"model_type": "llama"}},
                                    "data": {"train": "missing.jsonl"}, "train": {"report_to": report_to}}))
    code = main(["train", str(path)])
    return code, capsys.readouterr().err


def test_an_unknown_tracker_is_refused_before_anything_loads(tmp_path, capsys):
    code, err = _check(tmp_path, capsys, ["tensorbord"])
    assert code == 2 and "train.report_to[0]" in err and "tensorboard, wandb, mlflow, trackio" in err


@pytest.mark.parametrize("name", ["wandb", "mlflow", "trackio", "tensorboard"])
def test_a_tracker_that_is_not_installed_is_refused_with_the_pip_fix(tmp_path, capsys, monkeypatch, name):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda module, *a: None if module.split(".")[0].lower().startswith(name.lower())
                        else found(module, *a))
    code, err = _check(tmp_path, capsys, ["tensorboard", name] if name != "tensorboard" else [name])
    index = 1 if name != "tensorboard" else 0
    assert code == 2 and f"train.report_to[{index}]" in err and f"pip install {name}" in err
    assert not (tmp_path / "run").exists()  # refused before the output directory was touched


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_other_trackers_log_offline_where_installed(tmp_path, tokenizer_dir, pairs_file, monkeypatch, name):
    pytest.importorskip(name)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, train={"max_steps": 2, "report_to": [name], "eval_every": 2},
                      eval={"samples": 2})  # the policy's answers too (mmalign_metrics/samples.py)
    out = train(cfg, log=lambda *a: None).output_dir
    if name == "wandb":
        runs = list((out / "trackers" / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1 and runs[0].stat().st_size > 0
        tables = list((out / "trackers" / "wandb").glob("offline-run-*/files/media/table/samples_*.table.json"))
        assert len(tables) == 1 and json.loads(tables[0].read_text())["columns"] == ["prompt", "response"]
    else:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=mlflow_store(out / "trackers"))
        (run,) = client.search_runs([client.get_experiment_by_name("mmalign").experiment_id])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
        assert run.data.params["loss.name"] == "sigmoid" and run.info.run_name == "run"
        samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
        assert samples == ["samples/step-0000002.jsonl"]
    assert os.environ.get("MLFLOW_TRACKING_URI") is None
