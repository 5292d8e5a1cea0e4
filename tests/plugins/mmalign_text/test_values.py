"""PPO's critic for the text plugin: ``unit_values`` reads the value model's own forward pass at
the position that predicts each completion token (aligned with the per-token log-probs), and a
critic started from the policy has the policy's backbone and a zero head."""

import pytest
import torch

from test_text_sample import draw, make


def test_unit_values_are_the_value_models_forward_at_each_predicting_position(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    critic = reward.load_value_model(model, None)
    torch.nn.init.normal_(critic.score.weight)  # a head that is not zero, to see the positions
    samples = draw(reward, model)
    batch = reward.collate(samples.examples, torch.Generator())
    with torch.no_grad():
        values = reward.unit_values(critic, batch)
        scores = reward.score(model, batch, per_unit=True)
    assert values.shape == scores.unit_scores.shape and torch.equal(values != 0, scores.unit_mask.bool())
    for i, group in enumerate(samples.examples):
        for j, completion in enumerate(group.completions):
            with torch.no_grad():
                out = critic(torch.tensor([group.prompt_ids + completion])).logits[0, :, 0]
            expected = out[len(group.prompt_ids) - 1:len(group.prompt_ids) - 1 + len(completion)]
            assert values[i, j, :len(completion)] == pytest.approx(expected.tolist(), abs=1e-5)


def test_a_critic_from_the_policy_shares_its_backbone_and_starts_at_zero(tokenizer_dir):
    reward, model = make(tokenizer_dir)
    critic = reward.load_value_model(model, None)
    policy_backbone = model.model.state_dict()
    assert all(torch.equal(v, policy_backbone[k]) for k, v in critic.model.state_dict().items())
    assert critic.score.weight.abs().sum() == 0 and critic.score.weight.dtype == torch.float32
    batch = reward.collate(draw(reward, model).examples, torch.Generator())
    values = reward.unit_values(critic, batch)
    values.sum().backward()  # differentiable in the critic's weights
    assert critic.score.weight.grad is not None and critic.score.weight.grad.abs().sum() > 0
