"""The control modality: preferences over behaviour segments (Contrastive Preference Learning,
Hejna et al. 2023). The score of a segment sigma = ((s_1, a_1), ..., (s_T, a_T)) is

    s(sigma) = sum_t log pi(a_t | s_t)

(one unit per step; per-step log-likelihoods with ``per_unit``), so that CPL's
alpha * sum_t log pi(a_t | s_t) is ``loss.beta`` times this score and every loss of the registry
applies to segments as it does to responses. There is no context: each record is a pair of
segments (chosen first). Continuous actions are scored under a tanh-squashed Gaussian, so the
scores are log-densities (they can be positive): ``score_kind = "log_density"``, and losses
defined on probabilities (ORPO's odds, unlikelihood) are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from mmalign.config import DataConfig, ModelConfig
from mmalign.data import Record
from mmalign.errors import ConfigError
from mmalign.protocol import ModalityPlugin
from mmalign.scores import Scores
from mmalign_control.policy import (WEIGHTS_NAME, ControlPolicy, PolicyConfig, action_log_prob, load_policy,
                                    policy_config, read_config, save_policy)
from mmalign_control.segments import SegmentBatch, collate_segments, parse_record

OPTIONS = {"action_clip": 0.995}  # model.options of the control plugin and their defaults


def check_options(model_cfg: ModelConfig) -> dict:
    unknown = sorted(set(model_cfg.options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"model.options.{unknown[0]}: not an option of the control plugin (its options: "
                          f"{', '.join(OPTIONS)}).")
    options = dict(OPTIONS, **model_cfg.options)
    clip = options["action_clip"]
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0.5 <= clip < 1.0:
        raise ConfigError(f"model.options.action_clip: the share of the half-range that recorded "
                          f"actions are clipped to before atanh, in [0.5, 1); got {clip!r}.")
    return options


class ControlReward(ModalityPlugin):
    name = "control"
    score_kind = "log_density"  # summed log-likelihoods of actions; densities for continuous ones
    deterministic_collate = True  # collate only pads: reference scores may be cached per record
    per_unit_scores = True  # score(..., per_unit=True): log pi(a_t | s_t) of every step

    @staticmethod
    def check_config(model_cfg: ModelConfig, data_cfg: Optional[DataConfig]) -> None:
        check_options(model_cfg)
        ControlReward.policy_config_of(model_cfg)

    @staticmethod
    def policy_config_of(model_cfg: ModelConfig) -> PolicyConfig:
        """The policy's shape: from ``model.name_or_path``'s config.json, else ``model.tiny``."""
        if model_cfg.name_or_path is not None:
            return read_config(model_cfg.name_or_path)
        if model_cfg.tiny is None:
            raise ConfigError("model.tiny: the control plugin builds its policy from model.tiny (e.g. "
                              "{obs_dim: 3, action_dim: 1, action_low: [-2], action_high: [2]}) or loads "
                              "one saved by a control run from model.name_or_path.")
        return policy_config(dict(model_cfg.tiny))

    def __init__(self, model_cfg: ModelConfig, data_cfg: Optional[DataConfig]):
        self.cfg = model_cfg
        self.options = check_options(model_cfg)
        self.policy_config = self.policy_config_of(model_cfg)

    # --- models -------------------------------------------------------------------------------
    def load_policy(self) -> nn.Module:
        if self.cfg.name_or_path is not None:
            return load_policy(self.cfg.name_or_path).train()
        return ControlPolicy(self.policy_config)  # initialised from torch's RNG (the run's seed)

    def load_reference(self, name_or_path: str) -> nn.Module:
        reference = load_policy(name_or_path)
        if reference.config != self.policy_config:
            raise ConfigError(f"reference.name_or_path: the policy in {name_or_path} has another shape "
                              f"than the trained one ({reference.config} vs {self.policy_config}).")
        return reference

    def save(self, model: nn.Module, directory: Path) -> None:
        """``config.json`` and ``model.safetensors``, read back by ``mmalign_control.load_policy``."""
        save_policy(_unwrap(model), directory)

    def load_weights(self, model: nn.Module, directory: Path) -> None:
        from safetensors.torch import load_file

        _unwrap(model).load_state_dict(load_file(str(Path(directory) / WEIGHTS_NAME)))

    def load_trained(self, directory: Path) -> nn.Module:
        return load_policy(directory)

    @classmethod
    def how_to_load(cls, directory: Path, ref: str, base: Optional[str]) -> Optional[tuple[str, str]]:
        return ("mmalign", "import torch\nfrom mmalign_control import load_policy\n\n"
                           f"policy = load_policy({ref!r})\n"
                           "action = policy.act(torch.as_tensor(observation))  # the mean action\n")

    # --- data ---------------------------------------------------------------------------------
    def prepare(self, record: Record, *, paired: bool):
        return parse_record(record, paired=paired, config=self.policy_config,
                            action_clip=float(self.options["action_clip"]))

    def collate(self, examples: list, generator: torch.Generator) -> SegmentBatch:
        return collate_segments(examples, self.policy_config)

    def batch_counts(self, batch: SegmentBatch) -> dict:
        return {}  # steps are neither tokens nor images: no rate in the log

    # --- scores -------------------------------------------------------------------------------
    def score(self, model: nn.Module, batch: SegmentBatch, *, per_unit: bool = False) -> Scores:
        """sums [C, k] = sum over real steps of log pi(a_t | s_t); units [C, k] = the number of
        steps; with ``per_unit`` the per-step log-likelihoods [C, k, T] and their mask."""
        per_step = action_log_prob(self.policy_config, model(batch.observations), batch.actions) * batch.mask
        sums, units = per_step.sum(-1), batch.mask.sum(-1)
        if per_unit:
            return Scores(sums, units, unit_scores=per_step, unit_mask=batch.mask)
        return Scores(sums, units)


def _unwrap(model: nn.Module) -> ControlPolicy:
    """The ControlPolicy inside DDP / compile wrappers."""
    while not isinstance(model, ControlPolicy) and hasattr(model, "module"):
        model = model.module
    while not isinstance(model, ControlPolicy) and hasattr(model, "_orig_mod"):
        model = model._orig_mod
    return model
