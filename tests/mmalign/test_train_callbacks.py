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
