"""Every registered loss with every modality plugin (tiny models from the demo configs): a few
optimizer steps on one fixed batch lower the loss; a loss that does not apply to a modality says
so in its metadata, and asking for it is a clear error."""

from pathlib import Path

import pytest
import torch

from mmalign.config import load_config
from mmalign_data.preparing import prepare_examples
from mmalign_data.reading import read_records
from mmalign.engine import train
from mmalign.run_setup import disable_dropout
from mmalign.losses.objective import preference_loss
from mmalign.errors import ConfigError
from mmalign.plugins import registry
from mmalign.batches import Batch
from mmalign_reference.strategies import make_reference

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "demo"
MODALITIES = {"text": ("text.yaml", 0.1), "vlm": ("vlm.yaml", 0.1), "diffusion": ("diffusion.yaml", 500.0),
              "control": ("control.yaml", 0.1)}
# control: a segment's score sums 16 steps' log-densities, so one Adam step at 1e-3 moves h by tens
LEARNING_RATES = {"diffusion": 3e-3, "control": 1e-4}
OPTIONS = {"weighted": {"terms": {"sigmoid": 0.5, "ipo": 0.5}}}
MODEL_OPTIONS = {"mdpo": {"corrupted_image": "random_crop"}}  # mDPO's third row


# the extra scores each plugin computes (for the losses that declare them)
EXTRAS = {"text": {"mismatched", "desirable"}, "vlm": {"chosen_corrupted"}, "diffusion": set(), "control": set()}


def applies(spec, modality):
    kind = registry().get("rewards", modality).score_kind
    return (spec.score_kinds is None or kind in spec.score_kinds) and set(spec.extras) <= EXTRAS[modality]


def cases():
    reg = registry()
    for name in reg.names("losses"):
        for modality in MODALITIES:
            if applies(reg.get("losses", name), modality):
                yield pytest.param(name, modality, id=f"{name}-{modality}")


def loss_on_fixed_batch(name: str, modality: str, steps: int = 6) -> list[float]:
    reg = registry()
    spec = reg.get("losses", name)
    file, beta = MODALITIES[modality]
    cfg = load_config(CONFIGS / file, overrides=[])
    cfg.model.options.update(MODEL_OPTIONS.get(name, {}))
    torch.manual_seed(0)
    reward = reg.get("rewards", modality)(cfg.model, cfg.data)
    records = read_records(cfg.data.train, "auto", "data.train")[:4]
    if name == "kto":  # unpaired records: each pair becomes a desirable and an undesirable one
        from mmalign.data import Record

        records = [Record({"prompt": r.fields["prompt"], "completion": r.fields[key], "label": key == "chosen"},
                          r.where, r.root) for r in records for key in ("chosen", "rejected")]
    examples, _ = prepare_examples(reward, records, paired=spec.paired, strict=False, path=cfg.data.train)
    batch = reward.collate(examples, torch.Generator().manual_seed(0))  # one fixed batch, fixed noise
    batch = reward.encode(reward.to_device(batch, torch.device("cpu")))
    policy = reward.load_policy()
    disable_dropout(policy)
    reference = make_reference("auto", policy, reward, None, spec.needs_reference, torch.device("cpu"))
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATES.get(modality, 1e-3))
    history = []
    for _ in range(steps + 1):
        ref = reference.scores(Batch(batch)) if reference else None
        loss, _ = preference_loss(spec, reward.score(policy, batch), ref, beta=beta,
                                  options=OPTIONS.get(name, {}))
        history.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return history


@pytest.mark.slow
@pytest.mark.parametrize("name,modality", list(cases()))
def test_every_loss_lowers_its_loss_with_every_modality(name, modality):
    torch.set_num_threads(1)
    history = loss_on_fixed_batch(name, modality)
    assert all(torch.isfinite(torch.tensor(history)))
    assert min(history[1:]) < history[0], history


def test_every_loss_is_paired_with_at_least_one_modality_and_some_apply_everywhere():
    reg = registry()
    everywhere = [n for n in reg.names("losses") if all(applies(reg.get("losses", n), m) for m in MODALITIES)]
    assert len(reg.names("losses")) >= 20 and len(everywhere) >= 15
    assert len(list(cases())) >= 60


def test_a_loss_that_does_not_apply_is_a_clear_error(tmp_path):
    cfg = load_config(CONFIGS / "diffusion.yaml", overrides=[f"output_dir={tmp_path}", "loss.name=orpo"])
    with pytest.raises(ConfigError, match="does not apply to modality 'diffusion'"):
        train(cfg, log=lambda *a: None)
