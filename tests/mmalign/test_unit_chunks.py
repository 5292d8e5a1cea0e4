"""Backpropagating unit by unit (mmalign/unit_chunks.py): for the group loss with per-token
importance sampling, every aggregation, with and without the KL to the reference and DAPO's kept
groups, the gradient, the loss and the metrics equal those of one backward over all units; it is
used only where the loss is separable, the plugin scores units alone, and the run is not sharded."""

from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mmalign.losses.objective import make_objective, objective_loss
from mmalign.protocol import ModalityPlugin
from mmalign.scores import Scores
from mmalign.unit_chunks import backward_by_units, unit_by_unit
from mmalign_rl.algorithms import GROUP_LOSS

C, G, U, D = 2, 3, 4, 5


class UnitModel(nn.Module):
    """logp[c, g, u] = -(x[c, g, u] . w - y[c, g, u])^2 / D + b: each unit its own computation."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w, self.b = nn.Parameter(torch.randn(D) * 0.3), nn.Parameter(torch.tensor(-0.5))

    def forward(self, x, y):
        return -((x @ self.w) - y).pow(2) / D + self.b


class UnitPlugin:
    """Scores every unit, or with ``units`` only those (the others 0, without a graph)."""

    unit_chunks, calls = True, []

    def unit_count(self, data):
        return data["x"].shape[2]

    def score(self, model, data, *, per_unit=False, units=None):
        keep = torch.zeros(U, dtype=torch.bool)
        keep[units or slice(None)] = True
        self.calls.append(int(keep.sum()))
        x, y = data["x"][:, :, keep], data["y"][:, :, keep]
        unit_scores = torch.zeros(C, G, U)
        unit_scores[:, :, keep] = model(x, y)
        mask = data["mask"]
        return Scores((unit_scores * mask).sum(-1), mask.sum(-1), unit_scores=unit_scores, unit_mask=mask)


def fake_run(model, plugin, objective):
    accelerator = SimpleNamespace(no_sync=lambda m: nullcontext(), autocast=nullcontext,
                                  backward=lambda loss: loss.backward())
    return SimpleNamespace(plugin=plugin, policy=model, objective=objective, accelerator=accelerator,
                           stream=SimpleNamespace(accumulation=1))


def batch_and_reference(keep_groups: bool):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(C, G, U)
    mask[0, 1, 3:] = 0  # a shorter response
    data = {"x": torch.randn(C, G, U, D, generator=g), "y": torch.randn(C, G, U, generator=g), "mask": mask}
    values = {"advantages": torch.randn(C, G, generator=g)}
    if keep_groups:
        values["keep"] = torch.tensor([True, False])
    ref_units = -torch.rand(C, G, U, generator=g)
    reference = Scores((ref_units * mask).sum(-1), mask.sum(-1), unit_scores=ref_units, unit_mask=mask)
    return SimpleNamespace(data=data, values=values), reference


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "constant_norm"])
@pytest.mark.parametrize("beta,keep", [(0.0, False), (0.1, False), (0.1, True)])
def test_unit_by_unit_gives_the_gradient_loss_and_metrics_of_one_backward(aggregation, beta, keep):
    options = {"epsilon": 0.2, "loss_aggregation": aggregation, "max_new_tokens": U}
    objective = make_objective(GROUP_LOSS, beta=beta, options=options)
    batch, reference = batch_and_reference(keep)
    plugin = UnitPlugin()

    whole = UnitModel()
    loss, metrics = objective_loss(objective, plugin.score(whole, batch.data, per_unit=True), reference, batch.values)
    loss.backward()

    chunked, plugin.calls[:] = UnitModel(), []
    chunk_loss, chunk_metrics = backward_by_units(fake_run(chunked, plugin, objective), batch, reference, last=True)
    assert plugin.calls == [1] * U  # one unit scored per pass
    assert torch.allclose(chunk_loss, loss, atol=1e-7)
    assert chunk_metrics.keys() == metrics.keys()
    assert all(torch.allclose(chunk_metrics[k], metrics[k], atol=1e-7) for k in metrics)
    for mine, theirs in zip(chunked.parameters(), whole.parameters()):
        assert torch.allclose(mine.grad, theirs.grad, atol=1e-6), (mine.grad, theirs.grad)
        assert theirs.grad.abs().sum() > 0


def test_it_is_used_only_where_it_is_exact():
    plugin = UnitPlugin()
    token = make_objective(GROUP_LOSS, beta=0.1, options={"importance_sampling": "token"})
    sequence = make_objective(GROUP_LOSS, beta=0.1, options={"importance_sampling": "sequence"})
    assert unit_by_unit(plugin, token, sharded=False)
    assert not unit_by_unit(plugin, sequence, sharded=False)  # GSPO's ratio needs every unit
    assert not unit_by_unit(plugin, token, sharded=True)  # FSDP reduces once per backward
    assert not unit_by_unit(ModalityPlugin(), token, sharded=False)  # a plugin that scores all units at once
