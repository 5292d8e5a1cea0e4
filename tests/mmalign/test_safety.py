"""Safe by default: no remote code unless the config says so, YAML read with safe_load, nothing
written is a pickle, and file paths inside data cannot leave the data directory unless allowed."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, base_config

from mmalign import train
from mmalign.config import DataConfig, ModelConfig, load_config
from mmalign.data import Record
from mmalign_formats.files import resolve_data_path
from mmalign.errors import ConfigError, DataError

SOURCES = sorted((REPO / "mmalign").rglob("*.py")) + sorted((REPO / "plugins").rglob("*.py"))


def is_pickle(path: Path) -> bool:
    """Pickle protocol 2+ (b'\\x80' + protocol byte), or a zip with a pickle inside
    (torch.save's format)."""
    with path.open("rb") as f:
        head = f.read(2)
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return any(n.endswith((".pkl", ".pickle")) for n in z.namelist())
    return path.suffix in (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")


def test_nothing_a_run_writes_is_a_pickle(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file,
                      train={"max_steps": 2, "save_every": 1, "on_nonfinite": "skip"},
                      data={"eval_size": 8})
    out = train(cfg, log=lambda *a: None).output_dir
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "optimizer.safetensors" for p in files) and len(files) > 10
    assert [p for p in files if is_pickle(p)] == []


def test_the_pickle_detector_detects_pickles(tmp_path):
    import pickle

    import torch

    (tmp_path / "a").write_bytes(pickle.dumps({"x": 1}))
    torch.save({"x": torch.ones(1)}, tmp_path / "b")
    (tmp_path / "c.json").write_text("{}")
    assert [is_pickle(tmp_path / n) for n in ("a", "b", "c.json")] == [True, True, False]


def test_yaml_tags_that_run_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(cfg)
    assert not marker.exists()


def _safe_yaml_loader(path: Path, line: str) -> bool:
    """``yaml.load(..., Loader=X)`` where X, looked up in the module, subclasses yaml.SafeLoader."""
    import importlib

    import yaml

    match = re.search(r"yaml\.load\(.*Loader=(\w+)", line)
    if not match:
        return False
    parts = path.relative_to(REPO).with_suffix("").parts
    module = importlib.import_module(".".join(parts[1:] if parts[0] == "plugins" else parts))
    loader = getattr(module, match.group(1), None)
    return isinstance(loader, type) and issubclass(loader, yaml.SafeLoader)


def test_no_unsafe_loaders_in_the_sources():
    unsafe = re.compile(r"yaml\.(unsafe_)?load\(|yaml\.Loader|import pickle|pickle\.load|"
                        r"trust_remote_code\s*=\s*True|weights_only\s*=\s*False")
    found = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in SOURCES
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if unsafe.search(line) and not _safe_yaml_loader(p, line)]
    assert found == []
    # torch.load only with weights_only=True (no pickle of arbitrary objects)
    loads = [f"{p.relative_to(REPO)}:{i}" for p in SOURCES
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if "torch.load(" in line and "weights_only=True" not in line]
    assert loads == []


def test_remote_code_only_when_the_config_says_so(tmp_path, tokenizer_dir, monkeypatch):
    import transformers
    from mmalign_text.reward import TextReward

    assert ModelConfig().trust_remote_code is False
    seen = []
    real = transformers.AutoTokenizer.from_pretrained

    def tokenizer(path, **kwargs):
        seen.append(("tokenizer", kwargs.get("trust_remote_code")))
        return real(path, **{k: v for k, v in kwargs.items() if k != "trust_remote_code"})

    def model(path, **kwargs):
        seen.append(("model", kwargs.get("trust_remote_code")))
        raise OSError("not downloaded in tests")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    for trust in (False, True):
        reward = TextReward(ModelConfig(name_or_path="some/model", tokenizer=str(tokenizer_dir),
                                        trust_remote_code=trust), DataConfig())
        with pytest.raises(ConfigError):
            reward.load_policy()
    assert seen == [("tokenizer", False), ("model", False), ("tokenizer", True), ("model", True)]


# --- paths inside data records ---------------------------------------------------------------------

@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", root / "images" / "link.png")
    return root


def record(root):
    return Record({}, f"{root}/pairs.jsonl:3", root)


def test_paths_inside_the_data_directory_resolve(data_root):
    rec = record(data_root)
    assert resolve_data_path(rec, "images/a.png", "image") == (data_root / "images" / "a.png").resolve()
    assert resolve_data_path(rec, "images/../images/a.png", "image").name == "a.png"
    assert resolve_data_path(rec, str(data_root / "images" / "a.png"), "image").name == "a.png"


@pytest.mark.parametrize("value", ["../secret.txt", "images/../../secret.txt", "images/link.png",
                                   "ABSOLUTE"])
def test_paths_outside_the_data_directory_are_refused_unless_allowed(data_root, value):
    value = str(data_root.parent / "secret.txt") if value == "ABSOLUTE" else value
    rec = record(data_root)
    with pytest.raises(DataError) as err:
        resolve_data_path(rec, value, "image")
    message = str(err.value)
    assert message.startswith(f"{rec.where}: \"image\"") and "outside the data directory" in message
    assert "data.allow_outside_paths: true" in message
    assert resolve_data_path(rec, value, "image", allow_outside=True) == (data_root.parent / "secret.txt")


@pytest.mark.parametrize("value,expected", [
    ("images/missing.png", "not found"), ("", "must be a file path"), (None, "must be a file path"),
    (3, "must be a file path"),
])
def test_missing_or_malformed_paths_are_clear_errors(data_root, value, expected):
    with pytest.raises(DataError, match=expected):
        resolve_data_path(record(data_root), value, "image")


@pytest.mark.parametrize("value", ["../secret.txt", "images/link.png", "ABSOLUTE", "~/secret.txt"])
def test_the_plugins_refuse_outside_paths_unless_the_config_allows_them(data_root, value):
    from mmalign_diffusion.records import image_ref
    from mmalign_vlm.reward import resolve_image

    value = str(data_root.parent / "secret.txt") if value == "ABSOLUTE" else value
    rec = Record({"prompt": "a", "chosen": value}, f"{data_root}/pairs.jsonl:3", data_root)
    assert DataConfig().allow_outside_paths is False and rec.allow_outside is False
    for read in (lambda: resolve_image(value, rec), lambda: image_ref(rec, "chosen")):
        with pytest.raises(DataError, match="outside the data directory"):
            read()
    if value != "~/secret.txt":
        rec.allow_outside = True  # what prepare_examples sets from data.allow_outside_paths: true
        assert Path(resolve_image(value, rec)) == (data_root.parent / "secret.txt")
        with pytest.raises(DataError, match="not a readable image"):  # read, then found no image
            image_ref(rec, "chosen")


def test_plugins_resolve_record_paths_only_through_mmalign_files():
    """No plugin joins a record's directory with a value itself (which would skip the rules)."""
    joins = [f"{p.relative_to(REPO)}:{i}" for p in SOURCES if p.name != "files.py"
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\.root\s*/|Path\(record\.root\)\s*/", line)]
    assert joins == []
