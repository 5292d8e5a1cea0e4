"""``minari://`` records: behaviour segments cut from a local Minari dataset (Farama's format for
offline RL data), e.g. ``data.train: minari://D4RL/pen/human-v2?segment_length=32&pairs=2000``.

Minari datasets hold episodes and rewards, not preferences. With ``pairs=N`` (default 1000) the
reader draws N pairs of random segments of ``segment_length`` steps (default 32; episodes shorter
than that are passed over) and labels each pair by the dataset's own reward summed over the
segment, the preferred segment having the larger sum: the "scripted teacher" that preference-based
RL papers (PEBBLE, Preference Transformer) use to label offline data. Equal sums give a tie (label
0.5), which the control plugin skips and counts. With ``pairs=0`` every non-overlapping segment of
every episode is a single record (``{"segment": ...}``, for behaviour cloning). ``seed`` (default 0)
fixes the draw. Records are ``ADDRESS:pair N`` / ``ADDRESS:segment N`` in errors.

Only datasets already on this machine are read (``minari.load_dataset`` of a dataset under
``MINARI_DATASETS_PATH``, ``~/.minari/datasets`` by default); nothing is downloaded: run ``minari
download ID`` first. Observations must be flat arrays (a Box space); actions a Box or Discrete
space. Needs the ``minari`` extra (``pip install 'mmalign[minari]'``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from mmalign.data import Record
from mmalign.errors import DataError

SCHEME = "minari://"
OPTIONS = {"segment_length": 32, "pairs": 1000, "seed": 0}


def parse_minari_id(address: str) -> tuple[str, dict[str, int]]:
    """``minari://ID?option=value&...`` -> (dataset id, options with their defaults)."""
    dataset_id, _, query = address.removeprefix(SCHEME).partition("?")
    options = dict(OPTIONS)
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in OPTIONS:
            raise DataError(f"{address}: unknown option '{key}'; the options are {', '.join(OPTIONS)}.")
        if not value.isdigit():
            raise DataError(f"{address}: option {key} must be a whole number, got '{value}'.")
        options[key] = int(value)
    if options["segment_length"] < 1 or not dataset_id:
        raise DataError(f"{address}: give a dataset id and a segment_length of at least 1 "
                        f"(minari://namespace/name-v0?segment_length=32).")
    return dataset_id, options


def read_minari(address: str) -> list[Record]:
    dataset_id, options = parse_minari_id(address)
    episodes = _episodes(address, dataset_id, options["segment_length"])
    rng = np.random.default_rng(options["seed"])
    if options["pairs"] == 0:
        segments = [_segment(e, start, options["segment_length"]) for e in episodes
                    for start in range(0, len(e["actions"]) - options["segment_length"] + 1, options["segment_length"])]
        return [Record({"segment": s}, f"{address}:segment {i}", Path.cwd()) for i, s in enumerate(segments)]
    weights = np.array([len(e["actions"]) - options["segment_length"] + 1 for e in episodes], dtype=np.float64)
    records = []
    for i in range(options["pairs"]):
        pair = [_random_segment(episodes, weights, options["segment_length"], rng) for _ in range(2)]
        returns = [sum(s["rewards"]) for s in pair]
        label = 0.5 if returns[0] == returns[1] else int(returns[1] > returns[0])
        records.append(Record({"segment_0": pair[0], "segment_1": pair[1], "label": label},
                              f"{address}:pair {i}", Path.cwd()))
    return records


def _episodes(address: str, dataset_id: str, length: int) -> list[dict]:
    """The episodes of the local dataset long enough for one segment, as numpy arrays."""
    try:
        import minari
    except ImportError:
        raise DataError(f"{address}: reading Minari datasets needs the minari package: "
                        f"pip install 'mmalign[minari]'.") from None
    local = minari.list_local_datasets()
    if dataset_id not in local:
        listed = ", ".join(sorted(local)) or "(none)"
        raise DataError(f"{address}: '{dataset_id}' is not a Minari dataset on this machine (local: {listed}); "
                        f"nothing is downloaded: run `minari download {dataset_id}` first, or set "
                        f"MINARI_DATASETS_PATH to where it is.")
    dataset = minari.load_dataset(dataset_id)
    episodes = []
    for episode in dataset.iterate_episodes():
        observations = episode.observations
        if not isinstance(observations, np.ndarray) or observations.ndim != 2:
            raise DataError(f"{address}: episode {episode.id} has observations that are not flat arrays "
                            f"(a Dict or image space); the control plugin takes [T, obs_dim] observations.")
        if len(episode.actions) >= length:
            episodes.append({"observations": observations[:len(episode.actions)], "actions": episode.actions,
                             "rewards": episode.rewards})
    if not episodes:
        raise DataError(f"{address}: no episode has {length} steps; lower segment_length.")
    return episodes


def _segment(episode: dict, start: int, length: int) -> dict:
    # lists, as JSONL gives them: a record's identity (duplicate detection) hashes its fields as JSON
    window = slice(start, start + length)
    return {"observations": np.asarray(episode["observations"][window], dtype=np.float64).tolist(),
            "actions": episode["actions"][window].tolist(),
            "rewards": np.asarray(episode["rewards"][window], dtype=np.float64).tolist()}


def _random_segment(episodes: list[dict], weights: np.ndarray, length: int, rng: np.random.Generator) -> dict:
    """A segment drawn uniformly among every start position of every episode."""
    index = int(rng.choice(len(episodes), p=weights / weights.sum()))
    start = int(rng.integers(0, weights[index]))
    return _segment(episodes[index], start, length)
