"""The example third-party plugin (examples/mmalign-example-plugin), installed for real.

The package is pip-installed (offline) into a temporary directory and found by mmalign only
through its ``mmalign`` entry point, with that directory on PYTHONPATH of a subprocess: the same
path a user's ``pip install`` takes. The unit tests load the plugin module from the source tree.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mmalign.data import Record
from mmalign.errors import DataError
from mmalign.losses import LossSpec, call_loss

REPO = Path(__file__).resolve().parents[2]
PLUGIN_SRC = REPO / "examples" / "mmalign-example-plugin"
SHIPPED_DATA = REPO / "configs" / "demo" / "data" / "text"
TINY_LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                  tie_word_embeddings=True)  # as mmalign_text.demo.TINY_LLAMA
SOURCE = "from example (mmalign-example-plugin 0.1.0)"


def _load_source_module():
    spec = importlib.util.spec_from_file_location(
        "mmalign_example_src", PLUGIN_SRC / "mmalign_example" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = _load_source_module()


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package pip-installed into a fresh directory (no network, no build isolation).
    It is built from a copy so that pip's in-tree build leaves nothing in the repository."""
    root = tmp_path_factory.mktemp("example-plugin")
    src = root / "src"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    target = root / "site"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(src)],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(target.glob("mmalign_example_plugin-0.1.0.dist-info")), sorted(target.iterdir())
    return target


def _env(site: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("MMALIGN_BLOCK_PLUGINS", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _mmalign(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmalign.cli", *args], capture_output=True,
                          text=True, env=_env(site), cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """The shipped tiny text data (tokenizer + pairs), or the same generated into a tmp dir."""
    if (SHIPPED_DATA / "tokenizer" / "tokenizer.json").is_file() and \
            (SHIPPED_DATA / "train.jsonl").is_file():
        return SHIPPED_DATA
    from mmalign_text.sentiment import write_shipped_demo_data

    directory = tmp_path_factory.mktemp("demo-data")
    write_shipped_demo_data(directory, n_train=32, n_eval=8)
    return directory


def _tsv_field(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _write_tsv(path: Path, rows: list[dict]) -> Path:
    lines = ["prompt\tchosen\trejected"]
    lines += ["\t".join(_tsv_field(r[k]) for k in ("prompt", "chosen", "rejected")) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _config(tmp: Path, data: Path, train_file: Path) -> Path:
    cfg = {
        "output_dir": str(tmp / "run"),
        "seed": 0,
        "model": {"reward": "text", "tiny": TINY_LLAMA, "tokenizer": str(data / "tokenizer")},
        "data": {"train": str(train_file), "max_length": 64},
        "loss": {"name": "exponential", "beta": 0.1},
        "train": {"max_steps": 5, "batch_size": 4, "lr": 1e-3, "log_every": 1, "progress": False,
                  "callbacks": []},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# --------------------------------------------------------------------------- installed plugin


@pytest.mark.slow  # several seconds: kept out of the quick set
def test_plugins_lists_example_with_its_source(site, tmp_path):
    proc = _mmalign(site, "plugins", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert "exponential" in lines and SOURCE in lines["exponential"], proc.stdout
    assert "exp(-beta * h)" in lines["exponential"]
    assert "tsv" in lines and SOURCE in lines["tsv"], proc.stdout
    # the built-ins are still there, from the core
    assert "from losses (mmalign" in lines["sigmoid"] and "from formats (mmalign" in lines["jsonl"]


@pytest.mark.slow  # several seconds: kept out of the quick set
def test_train_exponential_on_tsv(site, demo_data, tmp_path):
    rows = [json.loads(line) for line in
            (demo_data / "train.jsonl").read_text().splitlines()[:24] if line.strip()]
    train_file = _write_tsv(tmp_path / "train.tsv", rows)
    proc = _mmalign(site, "train", str(_config(tmp_path, demo_data, train_file)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{train_file}: {len(rows)} read, {len(rows)} used" in proc.stdout
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert metrics.is_file()
    history = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["step"] for row in history] == [1, 2, 3, 4, 5]
    # step 1 is scored before any update: policy == reference, h = 0, L = exp(0) = 1
    assert history[0]["loss"] == pytest.approx(1.0, abs=1e-5)
    assert history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert all(math.isfinite(row["loss"]) for row in history)
    assert (tmp_path / "run" / "final").is_dir()


@pytest.mark.slow  # several seconds: kept out of the quick set
def test_malformed_tsv_row_exits_2_naming_file_and_line(site, demo_data, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("prompt\tchosen\trejected\n"
                   "a prompt\ta good answer\ta bad answer\n"
                   "\n"
                   "another prompt\tonly one answer\n", encoding="utf-8")
    proc = _mmalign(site, "train", str(_config(tmp_path, demo_data, bad)), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{bad}:4:" in proc.stderr and "expected 3 tab-separated fields" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# -------------------------------------------------------------------------------- unit tests


def test_exponential_loss_hand_computed():
    beta = 0.5
    pc = torch.tensor([-1.0, -2.0, 0.5])
    pr = torch.tensor([-3.0, -1.0, 0.5])
    rc = torch.tensor([-2.0, -2.0, 0.0])
    rr = torch.tensor([-2.0, -2.0, 0.0])
    # h = (pc - rc) - (pr - rr) = [1 - (-1), 0 - 1, 0.5 - 0.5] = [2, -1, 0]
    expected = torch.tensor([math.exp(-1.0), math.exp(0.5), 1.0])
    out = ex.exponential(pc, pr, rc, rr, beta=beta)
    assert out.shape == (3,)
    torch.testing.assert_close(out, expected)
    # through the engine's entry point, as training calls it
    spec = ex.EXPONENTIAL
    out2 = call_loss(spec, pc, pr, rc, rr, beta=beta, lengths=(torch.ones(3), torch.ones(3)),
                     options={})
    torch.testing.assert_close(out2, expected)
    # dL/dpc = -beta * L
    pc_grad = pc.clone().requires_grad_()
    ex.exponential(pc_grad, pr, rc, rr, beta=beta).sum().backward()
    torch.testing.assert_close(pc_grad.grad, -beta * expected)


def test_exponential_spec_metadata():
    spec = ex.EXPONENTIAL
    assert isinstance(spec, LossSpec)
    assert spec.name == "exponential" and spec.needs_reference and spec.paired
    assert spec.score_kinds is None and spec.summary and spec.options == {}
    registered = []
    ex.mmalign_register_losses(registered.append)
    assert registered == [spec]


def test_read_tsv(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("\ufeffrejected\tprompt\tchosen\tid\r\n"
                    "no\tQ: 2+2?\t4\tr1\r\n"
                    "\r\n"
                    "tab\\there\tline\\nbreak\tback\\\\slash\tr2\r\n", encoding="utf-8")
    records = ex.read_tsv(path)
    assert [r.where for r in records] == [f"{path}:2", f"{path}:4"]
    assert all(isinstance(r, Record) and r.root == tmp_path for r in records)
    assert records[0].fields == {"rejected": "no", "prompt": "Q: 2+2?", "chosen": "4", "id": "r1"}
    assert records[1].fields == {"rejected": "tab\there", "prompt": "line\nbreak",
                                 "chosen": "back\\slash", "id": "r2"}
    registered = []
    ex.mmalign_register_datasets(lambda name, reader, **kw: registered.append((name, reader, kw)))
    assert registered == [("tsv", ex.read_tsv, {"suffixes": (".tsv",)})]


@pytest.mark.parametrize("text, line, message", [
    ("prompt\tchosen\n", 1, "lacks the column(s) rejected"),
    ("\nprompt\tchosen\trejected\nx\ty\n", 3, "expected 3 tab-separated fields"),
    ("prompt\tchosen\trejected\nx\ty\tz\tw\n", 2, "got 4"),
    ("prompt\tchosen\trejected\tprompt\n", 1, "more than once"),
    ("", 1, "empty"),
])
def test_read_tsv_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        ex.read_tsv(path)
    assert str(err.value).startswith(f"{path}:{line}:") and message in str(err.value)
