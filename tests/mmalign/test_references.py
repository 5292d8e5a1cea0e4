"""The reference seam (``mmalign_register_references``): the run builds the strategy
``reference.strategy`` names from the registry and scores every micro-batch with it, so a
strategy registered in-process under that name replaces the built-in one; ``reference.cache``
applies the registered ``cache``, once, after the store has started; a plugin adds a strategy under
a new name, with its own ``check=``."""

from __future__ import annotations

import dataclasses
import math

import pytest
from conftest import base_config

import mmalign
from mmalign import train
from mmalign.hookspecs import hookimpl
from mmalign_reference.cache import cache_reference
from mmalign_reference.strategies import registered

CALLS: list[str] = []


class Counting:
    """The built-in ``copy`` strategy, counting the batches it scores."""

    def __init__(self, policy, plugin, cfg, accelerator):
        CALLS.append(f"built for {type(policy).__name__}")
        self.inner = registered("copy")(policy, plugin, cfg, accelerator)

    def scores(self, batch, per_unit=False):
        CALLS.append("scores")
        return self.inner.scores(batch, per_unit=per_unit)

    def shard(self, accelerator):
        self.inner.shard(accelerator)


def counted_cache(run):
    CALLS.append(f"cache around {type(run.reference).__name__}")
    return cache_reference(run)


class References:
    @hookimpl
    def mmalign_register_references(self, register):
        register("copy", Counting)
        register("cache", counted_cache)


def test_the_strategy_reference_strategy_names_scores_every_micro_batch(tmp_path, tokenizer_dir, pairs_file):
    CALLS.clear()
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, reference={"strategy": "copy"},
                      train={"max_steps": 3, "gradient_accumulation_steps": 2, "callbacks": []}, eval={"evaluators": []})
    with mmalign.register(References(), name="test-references"):
        history = train(mmalign.as_config(cfg), log=lambda *a: None).history
    assert CALLS == ["built for LlamaForCausalLM"] + ["scores"] * 6  # 3 steps x 2 micro-batches
    assert math.isclose(history[0]["loss"], math.log(2), abs_tol=1e-6)  # it scores as the policy did at step 0


def test_reference_cache_applies_the_registered_cache_once(tmp_path, tokenizer_dir, pairs_file):
    CALLS.clear()
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, reference={"strategy": "copy", "cache": "memory"},
                      train={"max_steps": 2, "callbacks": []}, eval={"evaluators": []})
    with mmalign.register(References(), name="test-references"):
        result = train(mmalign.as_config(cfg), log=lambda *a: None)
    pairs = result.data_reports[0].used
    # the cache scored every training pair once, in batches of eval.batch_size (16), and no step scored again
    assert CALLS == ["built for LlamaForCausalLM", "cache around Counting"] + ["scores"] * math.ceil(pairs / 16)


class Halved:
    """A new strategy name: the reference scores of ``copy``, halved (so the loss at step 0 is not ln 2)."""

    def __init__(self, policy, plugin, cfg, accelerator):
        self.inner = registered("copy")(policy, plugin, cfg, accelerator)

    def scores(self, batch, per_unit=False):
        ref = self.inner.scores(batch, per_unit=per_unit)
        return dataclasses.replace(ref, sums=ref.sums / 2)

    def shard(self, accelerator):
        self.inner.shard(accelerator)


def refuse_lora(cfg):
    if cfg.model.lora is not None:
        raise mmalign.ConfigError("key 'model.lora' is set, and 'halved' scores a full copy.")


class NewStrategy:
    @hookimpl
    def mmalign_register_references(self, register):
        register("halved", Halved, check=refuse_lora)


def test_a_plugin_adds_a_strategy_under_a_new_name_with_its_own_check(tmp_path, tokenizer_dir, pairs_file):
    from mmalign.run_validation import validate_for_run

    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, reference={"strategy": "halved"},
                      train={"max_steps": 1, "callbacks": []}, eval={"evaluators": []})
    with pytest.raises(mmalign.errors.RegistryError, match="Unknown reference strategy 'halved'"):
        validate_for_run(mmalign.as_config(cfg))
    with mmalign.register(NewStrategy(), name="test-new-strategy"):
        history = train(mmalign.as_config(cfg), log=lambda *a: None).history
        with pytest.raises(mmalign.ConfigError, match="config: key 'model.lora' is set"):
            validate_for_run(mmalign.as_config(cfg, overrides=["model.lora.r=4"]))
    # s_ref / 2 against s_pol: the margin is (s_c - s_r) * beta / 2 at step 0, not 0
    assert not math.isclose(history[0]["loss"], math.log(2), abs_tol=1e-3)


def test_cache_wraps_a_strategy_and_is_not_listed_or_taken_as_one(tmp_path, tokenizer_dir, pairs_file):
    from mmalign.run_validation import validate_for_run

    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, reference={"strategy": "cache"})
    with pytest.raises(mmalign.errors.RegistryError, match="Unknown reference strategy 'cache'") as refused:
        validate_for_run(mmalign.as_config(cfg))
    assert "Registered: auto, copy, disable_adapters; or none." in str(refused.value)
