"""The control demo's data: rollouts of the suboptimal data policy in gymnasium's Pendulum-v1, cut
into segments, paired at random and labelled by **regret** as CPL's paper does: the preferred
segment is the one with the larger sum of the scripted expert's advantages,

    A(sigma) = sum_t r_t + V(s_end) - V(s_start),

V the expert's return over a fixed horizon from a state. Labels from the raw return sum_t r_t would
mostly say where the pendulum was, not how good the actions were (DEMO-NOTES: CPL then falls below
behaviour cloning).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmalign_control import pendulum
from mmalign_control.evaluate import make_env

ENV_ID = "Pendulum-v1"


@dataclass
class Segments:
    observations: np.ndarray  # [S, L, 3]
    actions: np.ndarray  # [S, L, 1]
    rewards: np.ndarray  # [S, L]
    next_observations: np.ndarray  # [S, 3]: the state after the segment's last step

    def __len__(self) -> int:
        return self.observations.shape[0]


def rollout_segments(episodes: int, segment_length: int, seed: int) -> Segments:
    """``episodes`` episodes of the data policy (episode i reset with seed ``seed + i``), each cut
    into non-overlapping segments of ``segment_length`` steps (a remainder is dropped)."""
    env = make_env(ENV_ID, key="demo")
    rng = np.random.default_rng(seed)
    obs_parts, act_parts, rew_parts, next_parts = [], [], [], []
    for episode in range(episodes):
        observation, _ = env.reset(seed=seed + episode)
        observations, actions, rewards, done = [observation], [], [], False
        while not done:
            action = pendulum.data_action(observation, rng).astype(np.float32)
            observation, reward, terminated, truncated, _ = env.step(action)
            observations.append(observation)
            actions.append(action)
            rewards.append(reward)
            done = terminated or truncated
        count = len(actions) // segment_length
        for k in range(count):
            start, stop = k * segment_length, (k + 1) * segment_length
            obs_parts.append(np.stack(observations[start:stop]))
            act_parts.append(np.stack(actions[start:stop]))
            rew_parts.append(np.asarray(rewards[start:stop], dtype=np.float32))
            next_parts.append(observations[stop])
    env.close()
    return Segments(np.stack(obs_parts), np.stack(act_parts), np.stack(rew_parts), np.stack(next_parts))


def regret_advantages(segments: Segments, horizon: int = 100) -> np.ndarray:
    """A(sigma) [S] = return + V(end) - V(start), V from the expert's rollouts (higher is better:
    the negative of the segment's regret)."""
    values_start = pendulum.expert_values(segments.observations[:, 0], horizon)
    values_end = pendulum.expert_values(segments.next_observations, horizon)
    return segments.rewards.sum(1) + values_end - values_start


def random_pairs(count: int, advantages: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` pairs of distinct segments drawn at random: (first [P], second [P]), with
    ``label`` [P] the index (0 or 1) of the one with the larger advantage."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(advantages), size=count)
    second = (first + rng.integers(1, len(advantages), size=count)) % len(advantages)
    label = (advantages[second] > advantages[first]).astype(np.int64)
    return np.stack([first, second], 1), label


def write_pairs(path: Path, segments: Segments, pairs: np.ndarray, label: np.ndarray) -> None:
    """The pairs as the control plugin's ``npz`` format (segment_0, segment_1 and label)."""
    arrays = {"label": label}
    for j in (0, 1):
        index = pairs[:, j]
        arrays.update({f"observations_{j}": segments.observations[index], f"actions_{j}": segments.actions[index],
                       f"rewards_{j}": segments.rewards[index]})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def write_segments(path: Path, segments: Segments) -> None:
    """Every segment once (behaviour cloning on all the data), ``npz`` single-segment format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, observations=segments.observations, actions=segments.actions, rewards=segments.rewards)


def build_data(directory: Path, *, episodes: int, segment_length: int, pairs: int, eval_pairs: int,
               seed: int) -> dict:
    """pairs.npz (training pairs), segments.npz (every segment), eval.npz (pairs from held-out
    episodes: they switch the run's evaluation on). Returns counts and label statistics."""
    segments = rollout_segments(episodes, segment_length, seed)
    advantages = regret_advantages(segments)
    index, label = random_pairs(pairs, advantages, seed)
    write_pairs(directory / "pairs.npz", segments, index, label)
    write_segments(directory / "segments.npz", segments)
    held_out = rollout_segments(max(2, episodes // 20), segment_length, seed + 10 ** 6)
    eval_index, eval_label = random_pairs(eval_pairs, regret_advantages(held_out), seed + 1)
    write_pairs(directory / "eval.npz", held_out, eval_index, eval_label)
    returns = segments.rewards.sum(1)
    by_return = (returns[index[:, 1]] > returns[index[:, 0]]).astype(np.int64)
    return {"episodes": episodes, "segments": len(segments), "segment_length": segment_length,
            "pairs": pairs, "eval_pairs": eval_pairs,
            "return_and_regret_labels_agree": float((by_return == label).mean())}


def segment_json(segments: Segments, i: int) -> dict:
    """Segment ``i`` as a JSONL record's segment (rounded to 4 decimals: the file stays small)."""
    return {"observations": np.round(segments.observations[i].astype(np.float64), 4).tolist(),
            "actions": np.round(segments.actions[i].astype(np.float64), 4).tolist(),
            "rewards": np.round(segments.rewards[i].astype(np.float64), 4).tolist()}


def write_config_data(directory: Path, seed: int = 0) -> None:
    """configs/demo/data/control/: train.jsonl (64 pairs as chosen / rejected) and eval.jsonl
    (16 pairs as segment_0 / segment_1 / label) of 16-step segments, for configs/demo/control.yaml:
    ``python -m mmalign_control.demo_data configs/demo/data/control``."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    for name, episodes, count, offset in (("train", 12, 64, 0), ("eval", 4, 16, 10 ** 6)):
        segments = rollout_segments(episodes, 16, seed + offset)
        index, label = random_pairs(count, regret_advantages(segments), seed + offset)
        with (directory / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for (a, b), preferred in zip(index, label):
                if name == "train":
                    pair = (a, b) if preferred == 0 else (b, a)
                    record = {"chosen": segment_json(segments, pair[0]), "rejected": segment_json(segments, pair[1])}
                else:
                    record = {"segment_0": segment_json(segments, a), "segment_1": segment_json(segments, b),
                              "label": int(preferred)}
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    import sys

    write_config_data(Path(sys.argv[1]))
