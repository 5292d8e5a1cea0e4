"""``mmalign.train(..., callbacks=[...])``: Callback objects a user holds see every row, the
evaluations and the end of training, after the config's callbacks; anything else is refused."""

import pytest
from conftest import base_config

import mmalign
from mmalign import Callback


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_log(self, step, row):
        self.calls.append(("log", step))

    def on_eval(self, step, metrics):
        self.calls.append(("eval", step, sorted(metrics)))

    def on_train_end(self, history):
        self.calls.append(("end", len(history)))


def test_a_users_callbacks_see_the_run(tmp_path, tokenizer_dir, pairs_file):
    recorder = Recorder()
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, data={"eval_size": 8}, train={"max_steps": 2})
    mmalign.train(cfg, log=lambda *a: None, callbacks=[recorder])
    assert recorder.calls == [("log", 1), ("eval", 2, ["eval/loss", "eval/margin", "eval/pairs", "eval/reward_accuracy"]),
                              ("log", 2), ("end", 2)]


def test_a_callback_that_is_not_one_is_refused(tmp_path, tokenizer_dir, pairs_file):
    with pytest.raises(TypeError, match="not a mmalign.callbacks.Callback"):
        mmalign.train(base_config(tmp_path, tokenizer_dir, pairs_file), log=lambda *a: None, callbacks=[print])
    assert not (tmp_path / "run").exists()


class Failing(Callback):
    def on_train_end(self, history):
        raise OSError("upload refused")


def test_every_callback_ends_even_after_one_fails_and_the_first_error_is_raised():
    from mmalign.engine import end_callbacks

    first, last = Recorder(), Recorder()
    with pytest.raises(OSError, match="upload refused"):
        end_callbacks([first, Failing(), last, Failing()], [{"step": 1}])
    assert first.calls == last.calls == [("end", 1)]


def test_a_callback_registered_with_implied_by_is_added_when_its_key_is_set(tmp_path, tokenizer_dir, pairs_file):
    from mmalign.callbacks import callbacks_of
    from mmalign.hookspecs import hookimpl
    from mmalign.plugins import registry

    class Implied:
        @hookimpl
        def mmalign_register_callbacks(self, register):
            register("lr_watch", Recorder, implied_by="train.warmup_steps")

    cfg = mmalign.as_config(base_config(tmp_path, tokenizer_dir, pairs_file, train={"callbacks": []}))
    with mmalign.register(Implied(), name="test-implied"):
        assert callbacks_of(cfg, registry()) == []
        warm = mmalign.as_config(cfg, overrides=["train.warmup_steps=2", "train.report_to=[tensorboard]"])
        assert callbacks_of(warm, registry()) == [("trackers", "train.report_to"), ("lr_watch", "train.warmup_steps")]


def test_a_key_no_installed_callback_claims_is_refused_not_ignored(tmp_path, tokenizer_dir, pairs_file):
    from mmalign.plugins import build_registry, plugin_manager
    from mmalign.run_validation import validate_for_run

    cfg = mmalign.as_config(base_config(tmp_path, tokenizer_dir, pairs_file, train={"push_to_hub": "org/tiny"}))
    without_hub = build_registry(plugin_manager(block=["hub"]))
    with pytest.raises(mmalign.ConfigError, match="train.push_to_hub' is set, but no installed plugin registers"):
        validate_for_run(cfg, reg=without_hub)


def test_implied_by_must_name_a_config_key():
    from mmalign.errors import RegistryError
    from mmalign.hookspecs import hookimpl

    class Misspelt:
        @hookimpl
        def mmalign_register_callbacks(self, register):
            register("watch", Recorder, implied_by="train.warmup_step")

    with pytest.raises(RegistryError, match="implied_by 'train.warmup_step' is not a config key"):
        mmalign.register(Misspelt(), name="test-misspelt")
