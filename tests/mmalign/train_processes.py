"""Helpers for tests that run ``mmalign train`` as real processes (kill and resume, DDP), for each
modality of ``MODALITIES`` that is registered.

Text uses the tiny Llama of tests/conftest.py; any other modality its shipped
``configs/demo/<modality>.yaml`` (a contract: tiny, offline), shortened to a few steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DEMO_DATA, REPO, base_config
from safetensors.torch import load_file

# The modalities these tests run (each costs a few minutes of subprocesses on 2 CPU cores);
# MMALIGN_TEST_MODALITIES=text picks a subset.
# "text-grpo": the text modality trained online (GRPO: sampling, scoring, advantages per step).
# "text-ppo": online with a critic the batch source trains and checkpoints, two epochs per rollout.
# "diffusion-ddpo": DDPO on the diffusion demo config's tiny SDXL (LoRA), with DDPO's per-prompt reward
# history (short enough to matter from the second step) in the checkpoint.
MODALITIES = tuple(os.environ.get("MMALIGN_TEST_MODALITIES",
                                  "text,diffusion,vlm,text-grpo,text-ppo,diffusion-ddpo").split(","))
ONLINE = {"text-grpo": {"name": "grpo", "options": {"samples_per_prompt": 4, "max_new_tokens": 6,
                                                    "scorers": {"sentiment": 1.0}}},
          "text-ppo": {"name": "ppo", "options": {"samples_per_prompt": 2, "max_new_tokens": 6, "epochs": 2,
                                                  "value_lr": 1e-3, "scorers": {"sentiment": 1.0}}},
          "diffusion-ddpo": {"name": "ddpo", "options": {"samples_per_prompt": 2, "scorers": {"brightness": 1.0},
                                                         "stat_buffer": 4, "stat_min_count": 2,
                                                         "sampling": {"num_inference_steps": 3,
                                                                      "timestep_fraction": 0.5}}}}


def registered(modality: str) -> bool:
    from mmalign.plugins import registry

    return modality in registry().names("rewards")


def modality_config(modality: str, run_dir: Path, **train) -> dict:
    """A short run of ``modality`` writing into ``run_dir``; ``train`` overrides train keys.
    Skips the test when the modality's plugin or demo config is not there (yet)."""
    common = {"progress": False, "callbacks": [], "eval_every": 0}
    online, modality = ONLINE.get(modality), modality.split("-")[0]
    if not registered(modality):
        pytest.skip(f"modality '{modality}' is not registered (`mmalign plugins`)")
    demo = REPO / "configs" / "demo" / f"{modality}.yaml"
    if modality == "text":
        cfg = base_config(run_dir.parent, DEMO_DATA / "tokenizer", DEMO_DATA / "train.jsonl")
    else:
        if not demo.is_file():
            pytest.skip(f"no {demo.relative_to(REPO)} yet")
        from mmalign.config import load_config, to_dict

        cfg = to_dict(load_config(demo))  # paths resolved against the demo config's directory
        cfg["data"].update(eval=None, eval_size=0)
    cfg["output_dir"] = str(run_dir)
    cfg["train"].update(common, **train)
    if online:
        cfg["algorithm"] = online
        cfg["loss"]["beta"] = 0.04
        if modality != "text":  # a demo config's offline loss and pair evaluators do not apply online
            cfg["loss"] = {"beta": 0.04}
            cfg["eval"]["evaluators"] = []
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def process_env(**extra: str) -> dict:
    """One thread per process (2 shared cores; and the same thread count in every run being
    compared), no inherited crash hook."""
    env = {k: v for k, v in os.environ.items() if k != "MMALIGN_TEST_CRASH_AT"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONHASHSEED="0")
    env.update(extra)  # may override the defaults above (e.g. another PYTHONHASHSEED)
    return env


def train_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mmalign.cli", "train", str(config), *args]


def launch_command(config: Path, *args: str, processes: int = 2) -> list[str]:
    """``accelerate launch`` with the repository's 2-process CPU (gloo) config."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "configs" / "accelerate" / "ddp-cpu.yaml"), "--num_processes", str(processes),
            "-m", "mmalign.cli", "train", str(config), *args]


def run(command: list[str], *, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=process_env(**env))


def run_until(command: list[str], ready, *, sig: int, timeout: float = 300, **env: str):
    """Start ``command``, send ``sig`` as soon as ``ready()`` is true, and return the finished
    process (returncode, stdout, stderr)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=process_env(**env))
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            proc.kill()
            raise AssertionError(f"the run ended (rc {proc.returncode}) or timed out before the "
                                 f"signal could be sent\n{out}\n{err}")
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


def checkpoint_names(run_dir: Path) -> list[str]:
    root = run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under ``directory``, keyed 'file::tensor'."""
    found = {}
    for file in sorted(directory.rglob("*.safetensors")):
        rel = file.relative_to(directory)
        found.update({f"{rel}::{k}": v for k, v in load_file(str(file)).items()})
    assert found, f"no safetensors under {directory}"
    return found


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def metrics_text(run_dir: Path) -> str:
    """metrics.jsonl without the wall-clock keys (``time/*``: an online run's generate and score
    seconds), which two runs never share: what must be identical across runs, byte for byte."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return "".join(json.dumps({k: v for k, v in row.items() if not k.startswith("time/")}) + "\n"
                   for row in rows)
