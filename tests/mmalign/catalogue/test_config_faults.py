"""Catalogue of bad configs, each run through the real CLI entry point (``mmalign.cli.main``).

Every case must: exit with code 2; print one message that names the key (or the file, for faults of
the file itself) and the config file; print no traceback; and leave what is already in output_dir
untouched (a file planted there before the run is checked byte for byte, and nothing is added).
All of them fail before any model loads, so the whole catalogue runs in seconds.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import yaml

from conftest import base_config
import mmalign
from mmalign import cli
from mmalign.cli import main
from mmalign.hookspecs import hookimpl
from mmalign.protocol import ModalityPlugin

PLANTED = b"an earlier run's metrics: must survive every failed start\n"

# (id, --set overrides, words the message must contain). Each starts from the valid text config of
# tests/conftest.py (tiny Llama, hidden 32, 2 heads, demo pairs, max_steps 4).
SET_CASES = [
    # the cases of issue 12
    ("epochs-nan", ["train.max_steps=0", "train.epochs=.nan"], ["train.epochs", "finite"]),
    ("epochs-zero", ["train.max_steps=0", "train.epochs=0"], ["train.epochs", "positive"]),
    ("seed-negative", ["seed=-1"], ["'seed'", "[0, 4294967295]"]),
    ("adam-beta-above-1", ["train.adam_betas=[1.5, 0.999]"], ["train.adam_betas[0]", "[0, 1)"]),
    ("weight-decay-negative", ["train.weight_decay=-1"], ["train.weight_decay", ">= 0"]),
    ("lora-r-zero", ["model.lora.r=0"], ["model.lora.r", "at least 1"]),
    ("heads-do-not-divide-hidden", ["model.tiny.hidden_size=64", "model.tiny.num_attention_heads=3",
                                    "model.tiny.num_key_value_heads=3"],
     ["model.tiny.num_attention_heads", "hidden_size"]),
    ("label-smoothing-not-a-number", ["loss.options.label_smoothing=abc"],
     ["loss.options.label_smoothing", "a number"]),
    ("max-grad-norm-negative", ["train.max_grad_norm=-1"], ["train.max_grad_norm", ">= 0"]),
    ("warmup-steps-negative", ["train.warmup_steps=-5"], ["train.warmup_steps", "at least 0"]),
    ("save-every-negative", ["train.save_every=-1"], ["train.save_every", "at least 0"]),
    ("eval-size-negative", ["data.eval_size=-3"], ["data.eval_size", "at least 0"]),
    ("lr-inf", ["train.lr=.inf"], ["train.lr", "finite"]),
    ("evaluator-of-vlm-on-text", ["eval.evaluators=[reward_accuracy, chair]"],
     ["eval.evaluators[1]", "'chair', which applies to model.reward vlm", "reward_accuracy"]),
    ("evaluator-of-diffusion-on-text", ["eval.evaluators=[diffusion_accuracy]"],
     ["eval.evaluators[0]", "diffusion"]),
    ("eval-batch-size-zero", ["eval.batch_size=0"], ["eval.batch_size", "at least 1"]),
    ("loss-option-unknown", ["loss.options.temperature=2"],
     ["loss.options.temperature", "not an option of loss 'sigmoid'", "label_smoothing"]),
    # numbers: non-finite, out of range, huge
    ("lr-nan", ["train.lr=.nan"], ["train.lr", "finite"]),
    ("lr-zero", ["train.lr=0"], ["train.lr", "positive"]),
    ("lr-string-nan", ["train.lr='nan'"], ["train.lr", "finite"]),
    ("epochs-1e400", ["train.max_steps=0", "train.epochs=1e400"], ["train.epochs", "finite"]),
    ("beta-zero", ["loss.beta=0"], ["loss.beta", "positive"]),
    ("beta-nan", ["loss.beta=.nan"], ["loss.beta", "finite"]),
    ("sft-weight-negative", ["loss.sft_weight=-0.5"], ["loss.sft_weight", ">= 0"]),
    ("label-smoothing-out-of-range", ["loss.options.label_smoothing=0.7"],
     ["loss.options.label_smoothing", "[0, 0.5)"]),
    ("weighted-unknown-term", ["loss.name=weighted", "loss.options.terms={sigmoid: 1, nope: 2}"],
     ["Unknown loss 'nope'", "loss.options.terms.nope"]),
    ("weighted-weight-nan", ["loss.name=weighted", "loss.options.terms={sigmoid: .nan}"],
     ["loss.options.terms.sigmoid", "finite"]),
    ("loss-option-inf", ["loss.options.label_smoothing=.inf"], ["loss.options.label_smoothing", "finite"]),
    ("adam-betas-one-number", ["train.adam_betas=[0.9]"], ["train.adam_betas", "two numbers"]),
    ("adam-beta-negative", ["train.adam_betas=[0.9, -0.1]"], ["train.adam_betas[1]", "[0, 1)"]),
    ("warmup-ratio-above-1", ["train.warmup_ratio=1.5"], ["train.warmup_ratio", "[0, 1)"]),
    ("max-steps-negative", ["train.max_steps=-1"], ["train.max_steps", "at least 0"]),
    ("max-steps-huge", ["train.max_steps=100000000000000000000000"], ["train.max_steps", "at least 0"]),
    ("seed-huge", ["seed=99999999999"], ["'seed'", "4294967295"]),
    ("batch-size-zero", ["train.batch_size=0"], ["train.batch_size", "at least 1"]),
    ("batch-size-negative", ["train.batch_size=-4"], ["train.batch_size", "at least 1"]),
    ("accumulation-zero", ["train.gradient_accumulation_steps=0"],
     ["train.gradient_accumulation_steps", "at least 1"]),
    ("log-every-zero", ["train.log_every=0"], ["train.log_every", "at least 1"]),
    ("eval-every-negative", ["train.eval_every=-10"], ["train.eval_every", "at least 0"]),
    ("keep-last-zero", ["train.keep_last=0"], ["train.keep_last", "at least 1"]),
    ("prompt-length-zero", ["data.max_prompt_length=0"], ["data.max_prompt_length", "at least 1"]),
    ("completion-length-negative", ["data.max_completion_length=-1"],
     ["data.max_completion_length", "at least 1"]),
    ("lora-dropout-one", ["model.lora.dropout=1.0"], ["model.lora.dropout", "[0, 1)"]),
    ("lora-alpha-zero", ["model.lora.alpha=0"], ["model.lora.alpha", "positive"]),
    ("lora-no-target-modules", ["model.lora.target_modules=[]"], ["model.lora.target_modules", "empty"]),
    ("tiny-hidden-negative", ["model.tiny.hidden_size=-64"], ["model.tiny.hidden_size", "positive integer"]),
    ("tiny-no-layers", ["model.tiny.num_hidden_layers=0"], ["model.tiny.num_hidden_layers", "positive"]),
    ("tiny-kv-heads", ["model.tiny.num_key_value_heads=3", "model.tiny.num_attention_heads=4"],
     ["model.tiny.num_key_value_heads", "must divide"]),
    ("tiny-nan-inside", ["model.tiny.rms_norm_eps=.nan"], ["model.tiny.rms_norm_eps", "finite"]),
    ("tiny-size-not-a-number", ["model.tiny.hidden_size=abc"], ["model.tiny.hidden_size", "positive integer"]),
    ("tiny-unknown-architecture", ["model.tiny.model_type=not_a_model"], ["model.tiny", "not_a_model"]),
    # wrong types, one in every section
    ("type-top-level", ["seed=1.5"], ["'seed' must be an integer"]),
    ("type-model", ["model.dtype=float8"], ["model.dtype", "one of"]),
    ("type-reference", ["reference.cache=ram"], ["reference.cache", "one of"]),
    ("type-data", ["data.strict=maybe"], ["data.strict", "true/false"]),
    ("type-loss", ["loss.beta=[1]"], ["loss.beta", "a number"]),
    ("type-train", ["train.epochs=many"], ["train.epochs", "a number"]),
    ("type-eval", ["eval.evaluators=reward_accuracy"], ["eval.evaluators", "a list"]),
    ("type-lora", ["model.lora.r=abc"], ["model.lora.r", "an integer"]),
    ("type-section", ["train=3"], ["'train' must be a mapping"]),
    ("type-options-key", ["loss.options={1: 2}"], ["loss.options", "keys must be names"]),
    ("type-eval-options", ["eval.options.reward_accuracy=3"], ["eval.options.reward_accuracy", "mapping"]),
    # empty strings
    ("empty-output-dir", ["output_dir="], ["output_dir", "empty string"]),
    ("empty-data-train", ["data.train=''"], ["data.train", "empty string"]),
    ("empty-reward", ["model.reward=''"], ["model.reward", "empty string"]),
    ("empty-loss-name", ["loss.name=''"], ["loss.name", "empty string"]),
    ("empty-callback", ["train.callbacks=['']"], ["train.callbacks[0]", "empty string"]),
    # unknown names and sections
    ("unknown-section", ["trainer.lr=1"], ["unknown key 'trainer'"]),
    ("unknown-key", ["train.learning_rate=1e-5"], ["train.learning_rate", "Valid keys"]),
    ("unknown-loss", ["loss.name=dpoo"], ["Unknown loss 'dpoo'", "loss.name"]),
    ("unknown-evaluator", ["eval.evaluators=[nope]"], ["Unknown evaluator 'nope'", "eval.evaluators[0]"]),
    ("unknown-callback", ["train.callbacks=[nope]"], ["Unknown callback 'nope'", "train.callbacks[0]"]),
    ("unknown-format", ["data.format=xml"], ["Unknown dataset format 'xml'", "data.format"]),
    ("unknown-model-option", ["model.options.turbo=true"], ["model.options", "turbo"]),
    ("model-option-type", ["model.options.packing=sometimes"], ["model.options.packing", "true or false"]),
    ("evaluator-options-without-evaluator", ["eval.options.chair={max_new_tokens: 8}"],
     ["eval.options.chair", "not in eval.evaluators"]),
    ("evaluator-twice", ["eval.evaluators=[reward_accuracy, reward_accuracy]"], ["eval.evaluators", "twice"]),
    # rules across keys
    ("loss-of-another-modality", ["loss.name=mdpo"], ["loss.name", "'mdpo'", "vlm"]),
    ("mapo-on-text", ["loss.name=mapo"], ["loss.name", "diffusion"]),
    ("no-reference-for-dpo", ["reference.strategy=none"], ["reference.strategy", "needs a reference"]),
    ("disable-adapters-without-lora", ["reference.strategy=disable_adapters"],
     ["reference.strategy", "LoRA"]),
    ("warmup-steps-and-ratio", ["train.warmup_steps=1", "train.warmup_ratio=0.1"],
     ["train.warmup_ratio", "train.warmup_steps"]),
    ("eval-size-and-eval-file", ["data.eval_size=5", "data.eval=/dev/null"], ["data.eval_size", "data.eval"]),
    ("name-or-path-and-tiny", ["model.name_or_path=gpt2"], ["model.tiny", "model.name_or_path"]),
    ("no-training-data", ["data.train=null"], ["data.train", "required"]),
]


def _config(tmp_path: Path, tokenizer_dir: Path, pairs_file: Path) -> tuple[Path, Path]:
    """A valid config file and its output_dir, holding one planted file."""
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file)
    out = Path(cfg["output_dir"])
    out.mkdir()
    (out / "metrics.jsonl").write_bytes(PLANTED)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, out


def _assert_fails_cleanly(capsys, args: list[str], out: Path | None, words: list[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    if out is not None:
        assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]
        assert (out / "metrics.jsonl").read_bytes() == PLANTED
    return err


def test_catalogue_is_large_enough():
    assert len(SET_CASES) + len(MODALITY_CASES) + len(FILE_CASES) >= 45


@pytest.mark.parametrize("name,overrides,words", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_bad_value(tmp_path, tokenizer_dir, pairs_file, capsys, name, overrides, words):
    path, out = _config(tmp_path, tokenizer_dir, pairs_file)
    args = ["train", str(path)] + [a for o in overrides for a in ("--set", o)]
    err = _assert_fails_cleanly(capsys, args, out, words)
    assert str(path) in err  # the message names the file as well as the key


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid where a GPU is visible")
def test_fp16_on_cpu_is_refused_with_the_fix(tmp_path, tokenizer_dir, pairs_file, capsys):
    path, out = _config(tmp_path, tokenizer_dir, pairs_file)
    err = _assert_fails_cleanly(capsys, ["train", str(path), "--set", "train.precision=fp16"], out,
                         ["train.precision", "fp16", "bf16"])
    assert str(path) in err


def test_warmup_longer_than_the_run_is_a_warning(tmp_path, tokenizer_dir, pairs_file, capsys):
    """Legal (the demos' --quick runs do it) but not silent."""
    path, _ = _config(tmp_path, tokenizer_dir, pairs_file)
    assert main(["check", str(path), "--set", "train.warmup_steps=10"]) == 0
    err = capsys.readouterr().err
    assert "mmalign: warning:" in err and "train.warmup_steps (10) is not below train.max_steps (4)" in err


def test_output_dir_that_is_a_file(tmp_path, tokenizer_dir, pairs_file, capsys):
    path, _ = _config(tmp_path, tokenizer_dir, pairs_file)
    blocker = tmp_path / "a-file"
    blocker.write_bytes(PLANTED)
    _assert_fails_cleanly(capsys, ["train", str(path), "--set", f"output_dir={blocker}/run"], None,
                   ["output_dir", "is a file", str(blocker)])
    assert blocker.read_bytes() == PLANTED


REPO = Path(__file__).resolve().parents[3]

# (id, shipped demo config, --set overrides, words): the other modalities' own keys and fits
MODALITY_CASES = [
    ("vlm-diffusion-evaluator", "vlm", ["eval.evaluators=[diffusion_accuracy]"],
     ["eval.evaluators[0]", "diffusion_accuracy", "not 'vlm'"]),
    ("diffusion-chair-evaluator", "diffusion", ["eval.evaluators=[chair]"], ["eval.evaluators[0]", "not 'diffusion'"]),
    ("diffusion-orpo", "diffusion", ["loss.name=orpo"], ["loss.name", "'orpo'", "text, vlm"]),
    ("vlm-mapo", "vlm", ["loss.name=mapo"], ["loss.name", "'mapo'", "diffusion"]),
    ("vlm-corruption-unknown", "vlm", ["model.options.corrupted_image=blur"], ["model.options.corrupted_image"]),
    ("vlm-option-type", "vlm", ["model.options.train_projector=yes please"], ["model.options.train_projector"]),
    ("vlm-unknown-option", "vlm", ["model.options.prefix_caching=true"], ["model.options", "prefix_caching"]),
    ("vlm-text-heads", "vlm", ["model.tiny.text_config.num_attention_heads=3"],
     ["model.tiny.text_config.num_attention_heads", "hidden_size"]),
    ("vlm-vision-size-negative", "vlm", ["model.tiny.vision_config.image_size=-32"],
     ["model.tiny.vision_config.image_size", "positive integer"]),
    ("vlm-no-processor", "vlm", ["model.tokenizer=null"], ["model.tokenizer", "required"]),
    ("diffusion-noise-mode", "diffusion", ["model.options.noise=sometimes"], ["model.options.noise", "per_step"]),
    ("diffusion-eval-draws-zero", "diffusion", ["model.options.eval_draws=0"], ["model.options.eval_draws", ">= 1"]),
    ("diffusion-resolution-string", "diffusion", ["model.options.resolution=big"], ["model.options.resolution"]),
    ("diffusion-dtype-auto", "diffusion", ["model.dtype=auto"], ["model.dtype", "diffusion plugin"]),
    ("diffusion-lora-r-negative", "diffusion", ["model.lora.r=-4"], ["model.lora.r", "at least 1"]),
    ("diffusion-beta-inf", "diffusion", ["loss.beta=.inf"], ["loss.beta", "finite"]),
    ("text-tiny-defaults-are-huge", "text", ["model.tiny={}"], ["model.tiny", "6.6B parameters"]),
]


@pytest.mark.parametrize("name,demo,overrides,words", MODALITY_CASES, ids=[c[0] for c in MODALITY_CASES])
def test_bad_value_other_modalities(tmp_path, capsys, name, demo, overrides, words):
    path = REPO / "configs" / "demo" / f"{demo}.yaml"
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_bytes(PLANTED)
    args = ["train", str(path), "--set", f"output_dir={out}"] + [a for o in overrides for a in ("--set", o)]
    err = _assert_fails_cleanly(capsys, args, out, words)
    assert str(path) in err


# Faults of the file itself: (id, text of the file or a callable that makes it, words)
FILE_CASES = [
    ("top-level-list", "- model\n- train\n", ["top level must be a mapping", "list"]),
    ("top-level-scalar", "42\n", ["top level must be a mapping", "int"]),
    ("top-level-string", "just some words\n", ["top level must be a mapping"]),
    ("duplicate-key", "seed: 1\nseed: 2\nmodel: {tiny: {}}\n", ["'seed' is given twice", "line 2"]),
    ("duplicate-nested-key", "model:\n  tiny: {}\n  reward: text\n  reward: vlm\n",
     ["'reward' is given twice", "line 4"]),
    ("invalid-yaml", "model:\n  tiny: [1, 2\n", ["not valid YAML"]),
    ("non-utf8", "model:\n  reward: text\n  tokenizer: caf\xe9\n".encode("latin-1"), ["line 3", "UTF-8"]),
    ("empty-file", "", ["model.name_or_path", "required"]),
    ("unknown-section", "model: {tiny: {}}\ntrainer: {lr: 1}\n", ["unknown key 'trainer'"]),
    ("section-is-a-list", "model: [tiny]\n", ["'model' must be a mapping"]),
    ("deeply-nested", "model: " + "[" * 2000 + "]" * 2000 + "\n", []),
    ("alias-bomb", "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi")),
     ["expands to more than 100000 values"]),
    ("tab-indentation", "model:\n\ttiny: {}\n", ["line 2", "not valid YAML"]),
    ("utf16", "model: {tiny: {}}\n".encode("utf-16"), ["line 1", "UTF-8"]),
]


@pytest.mark.parametrize("name,content,words", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_file(tmp_path, capsys, name, content, words):
    path = tmp_path / "config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    err = _assert_fails_cleanly(capsys, ["check", str(path)], None, words)
    assert str(path) in err


def test_config_that_is_a_directory(tmp_path, capsys):
    _assert_fails_cleanly(capsys, ["train", str(tmp_path)], None, ["is a directory", str(tmp_path)])


def test_config_that_is_a_pipe(tmp_path, capsys):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    _assert_fails_cleanly(capsys, ["check", str(fifo)], None, ["not a regular file", str(fifo)])


def test_a_utf8_bom_is_fine(tmp_path, tokenizer_dir, pairs_file, capsys):
    path, _ = _config(tmp_path, tokenizer_dir, pairs_file)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert main(["check", str(path)]) == 0, capsys.readouterr().err


def test_config_that_does_not_exist(tmp_path, capsys):
    _assert_fails_cleanly(capsys, ["check", str(tmp_path / "nope.yaml")], None, ["does not exist", "nope.yaml"])


def test_unreadable_config(tmp_path, capsys, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("model: {tiny: {}}\n")
    if os.getuid() != 0:
        path.chmod(0)
    else:  # root reads any file: make the read fail as it would for another user
        real = Path.read_bytes

        def read_bytes(self):
            if self == path:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    _assert_fails_cleanly(capsys, ["check", str(path)], None, ["cannot be read", str(path), "permission"])


def test_override_without_a_value(tmp_path, tokenizer_dir, pairs_file, capsys):
    path, out = _config(tmp_path, tokenizer_dir, pairs_file)
    _assert_fails_cleanly(capsys, ["train", str(path), "--set", "train.lr"], out, ["--set 'train.lr'", "KEY=VALUE"])


def test_the_same_faults_under_eval_and_score(tmp_path, tokenizer_dir, pairs_file, capsys):
    path, out = _config(tmp_path, tokenizer_dir, pairs_file)
    for command in ("eval", "score", "check"):
        _assert_fails_cleanly(capsys, [command, str(path), "--set", "eval.batch_size=0"], out, ["eval.batch_size"])


@pytest.mark.slow  # several seconds: kept out of the quick set
def test_a_subprocess_run_exits_2_without_traceback(tmp_path, tokenizer_dir, pairs_file):
    import subprocess
    import sys

    path, out = _config(tmp_path, tokenizer_dir, pairs_file)
    proc = subprocess.run([sys.executable, "-m", "mmalign.cli", "train", str(path), "--set", "train.lr=.inf"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "train.lr" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "metrics.jsonl").read_bytes() == PLANTED


# --- the last-resort handler -----------------------------------------------------------------------


class _BrokenPlugin(ModalityPlugin):
    """A modality plugin with a bug: it raises RuntimeError when the engine builds it."""

    from mmalign_text.data_options import TextDataOptions as data_options  # the config's data.max_length

    def __init__(self, model_cfg, data_cfg):
        raise RuntimeError("plugin bug: the tensor shapes disagree\nsecond line of detail")


class _BrokenPluginHooks:
    @hookimpl
    def mmalign_register_rewards(self, register):
        register("broken", _BrokenPlugin)


@pytest.fixture
def broken_plugin():
    with mmalign.register(_BrokenPluginHooks(), name="tests.broken_plugin"):
        yield


def test_a_bug_gives_a_short_message_and_a_log(tmp_path, tokenizer_dir, pairs_file, capsys, broken_plugin,
                                                monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    path, out = _config(tmp_path, tokenizer_dir, pairs_file)
    (out / "metrics.jsonl").unlink()  # an empty output_dir: a new run may start there
    code = main(["train", str(path), "--set", "model.reward=broken"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and "second line" not in err
    assert "RuntimeError: plugin bug: the tensor shapes disagree" in err
    assert "this is a bug in mmalign or a plugin; please report it".lower() in err.lower()
    log = Path(err.strip().split("full log: ")[1])
    assert log.parent == out  # output_dir existed: the log goes there, next to the run's files
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in __init__" in text
    assert "second line of detail" in text and "model.reward=broken" in text


def test_a_bug_before_output_dir_exists_logs_to_the_temp_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def crash(args):
        raise ValueError("unexpected")

    monkeypatch.setitem(cli.COMMANDS, "plugins", crash)
    assert main(["plugins"]) == 1
    err = capsys.readouterr().err
    log = Path(err.strip().split("full log: ")[1])
    assert log.parent == tmp_path and "ValueError: unexpected" in log.read_text()


@pytest.mark.parametrize("exc,words", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/step-4/model.safetensors"),
     ["disk is full", "/runs/x/checkpoints/step-4/model.safetensors"]),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"), ["read-only", "/mnt/ro/run"]),
    (PermissionError(errno.EACCES, "Permission denied", "/srv/run/config.yaml"),
     ["permission denied", "/srv/run/config.yaml"]),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/tmp/file/run"), ["not a directory", "/tmp/file/run"]),
    (RecursionError("maximum recursion depth exceeded"), ["nested too deeply"]),
    (UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte"), ["not UTF-8"]),
    (MemoryError(), ["Out of memory", "train.batch_size"]),
])
def test_user_caused_library_errors_exit_2(capsys, monkeypatch, exc, words):
    def fail(args):
        raise exc

    monkeypatch.setitem(cli.COMMANDS, "plugins", fail)
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bug" not in err
    for word in words:
        assert word in err


def test_ctrl_c_exits_130_with_one_line(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "plugins", interrupted)
    assert main(["plugins"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "mmalign: interrupted."
