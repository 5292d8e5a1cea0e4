"""PPO's critic for causal LMs: a value model with one scalar per position, read where the policy's
log-prob of each completion token is read.

The value of the state before completion token t is V(h), h the hidden state at the position
that predicts t: the same (row, position) the policy's log p(y_t) comes from, so ``unit_values``
returns [C, k, U] aligned with ``score(..., per_unit=True).unit_scores``.

The critic is ``AutoModelForTokenClassification`` with one label: transformers' per-position
scalar head on the policy's backbone, dropout off (as PPO for LMs runs). From a path (a reward model mmalign trained, as InstructGPT
initialises its value function; any checkpoint of the architecture), or from the policy's own
backbone with the head at zero (V = 0 before the first update).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from mmalign.errors import ConfigError
from mmalign_text.causal_lm import base_state_dict, loading_options, unwrap
from mmalign_text.logps import unit_scores


def load_value_model(cfg, policy: nn.Module, name_or_path: Optional[str]) -> nn.Module:
    """The critic in fp32 (it trains), in train mode. ``cfg``: the plugin's ModelConfig."""
    from transformers import AutoModelForTokenClassification

    if name_or_path:
        try:
            critic = AutoModelForTokenClassification.from_pretrained(
                name_or_path, num_labels=1, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code,
                **loading_options(cfg))
        except (OSError, ValueError) as e:
            raise ConfigError(f"algorithm.options.value_model: cannot load '{name_or_path}' as a value "
                              f"model ({str(e).splitlines()[0][:200]}). Pass a directory with config.json "
                              f"and weights of a causal LM or reward model, or leave it unset to start "
                              f"from the policy.") from None
    else:
        base = unwrap(policy)
        config = copy.deepcopy(base.config)
        config.num_labels = 1
        critic = AutoModelForTokenClassification.from_config(config, dtype=torch.float32)
        backbone = {k.removeprefix(base.base_model_prefix + "."): v.float() for k, v in base_state_dict(base).items()
                    if k.startswith(base.base_model_prefix + ".")}
        critic.base_model.load_state_dict(backbone)
        head = critic.get_output_embeddings() or getattr(critic, "score", None) or getattr(critic, "classifier")
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
    if critic.config.pad_token_id is None:
        critic.config.pad_token_id = unwrap(policy).config.pad_token_id
    for module in critic.modules():  # the head's classifier dropout would make V noisy: PPO runs without
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return critic.train()


def unit_values(critic: nn.Module, batch) -> Tensor:
    """V at every scored token of a sampled-groups batch (plain rows, k per context): [C, k, U],
    0 on padding. Differentiable in the critic's weights."""
    if not getattr(batch, "group", 0):
        raise ConfigError("a value model scores sampled groups only (an online algorithm's batches).")
    out = critic(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[..., 0]
    flat = out[batch.target_rows, batch.target_positions].float()  # [N]
    mask, k = batch.target_mask, batch.group
    values = flat[batch.layout] * mask
    return unit_scores([(values[j::k], mask[j::k]) for j in range(k)])[0]
