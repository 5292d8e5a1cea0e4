"""Shared fixtures: a tiny Llama config and the word-level tokenizer shipped with the demo data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# No hub at test time: a hub id in a test fails at once instead of waiting on the network (set before
# huggingface_hub is imported, which reads it once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "configs" / "demo" / "data" / "text"

TINY = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=True)


# Test modules that must run on the same worker: the outcome checks that share a full demo's
# session fixture (built once per worker), and the 2-process runs (they use one port). A table
# rather than xdist_group marks: pytest-xdist 3.8 groups by a nodeid suffix that pytest 9 ignores.
SAME_WORKER = {
    "tests/demos/test_vlm_demo.py": "vlm-demo", "tests/demos/test_vlm_rl_demo.py": "vlm-demo",
    "tests/demos/test_diffusion_demo.py": "diffusion-demo", "tests/demos/test_diffusion_rl_demo.py": "diffusion-demo",
    "tests/mmalign/test_ddp.py": "processes", "tests/mmalign/test_fsdp.py": "processes",
}


def pytest_xdist_make_scheduler(config, log):
    """Two workers (pyproject's ``-n 2``): each test module runs whole on one worker, so its
    module fixtures are built once, and the modules of one SAME_WORKER group share a worker."""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SAME_WORKER.get(module, module)

    return ModulesAndGroups(config, log)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny models: threads cost more than they give, and 2 cores are shared


@pytest.fixture
def tokenizer_dir() -> Path:
    return DEMO_DATA / "tokenizer"


@pytest.fixture
def pairs_file() -> Path:
    return DEMO_DATA / "train.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def base_config(tmp_path: Path, tokenizer_dir: Path, train_file: Path, **sections) -> dict:
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {"reward": "text", "tiny": dict(TINY), "tokenizer": str(tokenizer_dir)},
        "data": {"train": str(train_file), "max_length": 32},
        "loss": {"name": "sigmoid", "beta": 0.1},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "log_every": 1, "progress": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


@pytest.fixture(scope="session")
def full_diffusion_demo(tmp_path_factory):
    """The full offline diffusion demo (about 2.5 minutes on 2 cores), run once: its own outcome
    check (tests/demos/test_diffusion_demo.py) and where the diffusion RL demo's starts."""
    from mmalign.cli import main

    out = tmp_path_factory.mktemp("diffusion-demo")
    assert main(["demo", "diffusion", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def full_vlm_demo(tmp_path_factory):
    """The full offline VLM demo (about 2.3 minutes on 2 cores), run once: its own outcome check
    (tests/demos/test_vlm_demo.py) and the SFT model the VLM RL demo's outcome check starts from."""
    from mmalign.cli import main

    out = tmp_path_factory.mktemp("vlm-demo")
    assert main(["demo", "vlm", "--out", str(out)]) == 0
    return out
