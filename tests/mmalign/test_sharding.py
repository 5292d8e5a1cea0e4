"""mmalign/sharding.py in one process (the 2-process FSDP2 runs are in test_fsdp.py): a method run
as a forward pass; unsupported set-ups are refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mmalign import sharding
from mmalign.errors import ConfigError


def test_run_as_forward_is_a_plain_call_without_fsdp():
    model = torch.nn.Linear(2, 2)
    assert sharding.run_as_forward(model, lambda a, b=0: a + b, 2, b=3) == 5


def test_deepspeed_and_fsdp1_are_refused(monkeypatch):
    from accelerate.utils import DistributedType

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    plain = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, is_fsdp2=False)
    with pytest.raises(ConfigError, match="DeepSpeed is not supported yet"):
        sharding.check_supported(plain)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    sharding.check_supported(plain)
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        sharding.check_supported(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False))
