"""The ``minari://`` reader: segment pairs cut from a local Minari dataset (written here, offline,
in Minari's arrow format) and labelled by their summed rewards; single segments for behaviour
cloning; CPL trained on it; bad addresses and datasets that are not on this machine refused."""

from __future__ import annotations

import numpy as np
import pytest

import mmalign
from mmalign.errors import DataError

minari = pytest.importorskip("minari")
DATASET = "mmalign/pendulum-random-v0"


@pytest.fixture
def local_dataset(tmp_path, monkeypatch):
    """Three 50-step Pendulum-v1 episodes of random actions, as a local Minari dataset."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = gym.make("Pendulum-v1", max_episode_steps=50)
    buffers = []
    for episode in range(3):
        observation, _ = env.reset(seed=episode)
        env.action_space.seed(episode)
        steps = {"observations": [observation], "actions": [], "rewards": [], "terminations": [], "truncations": []}
        while True:
            action = env.action_space.sample()
            observation, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(steps, (observation, action, reward, terminated, truncated)):
                steps[key].append(value)
            if terminated or truncated:
                break
        buffers.append(EpisodeBuffer(id=episode, **{k: np.array(v) for k, v in steps.items()}))
    minari.create_dataset_from_buffers(DATASET, buffers, env=env, eval_env=env.spec, algorithm_name="random",
                                       data_format="arrow", author="mmalign tests", author_email="t@example.com",
                                       code_permalink="tests/plugins/mmalign_control/test_minari.py",
                                       description="random actions")
    return minari.load_dataset(DATASET)


def test_pairs_are_segments_of_the_episodes_labelled_by_their_summed_rewards(local_dataset):
    from mmalign_control.minari_data import read_minari

    records = read_minari(f"minari://{DATASET}?segment_length=10&pairs=20&seed=3")
    episodes = list(local_dataset.iterate_episodes())
    assert len(records) == 20 and records[0].where == f"minari://{DATASET}?segment_length=10&pairs=20&seed=3:pair 0"
    for record in records:
        segments = [record.fields["segment_0"], record.fields["segment_1"]]
        for s in segments:  # a window of one episode: observations with the actions taken in them
            assert len(s["observations"]) == len(s["actions"]) == len(s["rewards"]) == 10
            match = [(e, t) for e in episodes for t in range(41)
                     if np.allclose(e.observations[t:t + 10], s["observations"]) and np.allclose(e.actions[t:t + 10], s["actions"])]
            assert match and np.allclose(match[0][0].rewards[match[0][1]:match[0][1] + 10], s["rewards"])
        assert record.fields["label"] == int(sum(segments[1]["rewards"]) > sum(segments[0]["rewards"]))
    assert read_minari(f"minari://{DATASET}?segment_length=10&pairs=20&seed=3")[5].fields == records[5].fields
    singles = read_minari(f"minari://{DATASET}?segment_length=10&pairs=0")
    assert len(singles) == 3 * 5 and set(singles[0].fields) == {"segment"}


def test_cpl_trains_on_a_minari_dataset(local_dataset, tmp_path):
    cfg = {"output_dir": str(tmp_path / "run"),
           "model": {"reward": "control", "tiny": {"obs_dim": 3, "action_dim": 1, "action_low": [-2.0],
                                                   "action_high": [2.0], "hidden": [16, 16]}},
           "data": {"train": f"minari://{DATASET}?segment_length=8&pairs=64"},
           "loss": {"name": "cpl", "beta": 0.1},
           "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "log_every": 1, "progress": False,
                     "callbacks": []},
           "eval": {"evaluators": []}}
    history = mmalign.train(cfg, log=lambda *a: None).history
    assert len(history) == 3 and all(np.isfinite(row["loss"]) for row in history)


@pytest.mark.parametrize("address,message", [
    (f"minari://{DATASET}?segment_len=8", "unknown option 'segment_len'"),
    (f"minari://{DATASET}?pairs=many", "must be a whole number"),
    (f"minari://{DATASET}?segment_length=500", "no episode has 500 steps"),
    ("minari://D4RL/pen/human-v2", "not a Minari dataset on this machine .* `minari download D4RL/pen/human-v2`"),
])
def test_bad_addresses_and_datasets_elsewhere_are_refused(local_dataset, address, message):
    from mmalign_control.minari_data import read_minari

    with pytest.raises(DataError, match=message):
        read_minari(address)
