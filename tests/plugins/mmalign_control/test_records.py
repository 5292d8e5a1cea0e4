"""Control records from JSONL and NPZ: both pair layouts, ties, single segments, and bad input as
a DataError naming the file and line (exit code 2 from the CLI)."""

import json

import numpy as np
import pytest

from mmalign.cli import main
from mmalign.data import Record
from mmalign_data.reading import read_records
from mmalign.errors import DataError, SkipRecord

from control_helpers import pair_record, plugin, segment


def test_chosen_rejected_and_labelled_pairs_give_the_preferred_segment_first():
    reward = plugin()
    a, b = segment(4, seed=1), segment(6, seed=2)
    for label, first in ((0, 4), (1, 6)):
        example = reward.prepare(Record({"segment_0": a, "segment_1": b, "label": label}, "f:1", None), paired=True)
        assert [s.observations.shape[0] for s in example] == [first, 10 - first]
    single = reward.prepare(Record({"segment_0": a, "segment_1": b, "label": 1}, "f:1", None), paired=False)
    assert len(single) == 1 and single[0].observations.shape[0] == 6
    assert reward.prepare(Record({"segment": a}, "f:1", None), paired=False)[0].actions.shape == (4, 1)


def test_a_tie_is_skipped():
    with pytest.raises(SkipRecord):
        plugin().prepare(Record({"segment_0": segment(2), "segment_1": segment(2), "label": 0.5}, "f:1", None),
                         paired=True)


@pytest.mark.parametrize("edit,message", [
    (lambda f: f.pop("rejected"), "\"rejected\" is missing"),
    (lambda f: f["chosen"].pop("actions"), "\"observations\" and \"actions\""),
    (lambda f: f["chosen"].__setitem__("observations", [[0.0] * 4] * 5), "rows of 3 numbers"),
    (lambda f: f["chosen"]["actions"].pop(), "must be 5 rows of 1 numbers"),
    (lambda f: f["chosen"]["actions"].__setitem__(0, [2.5]), "outside the action bounds"),
    (lambda f: f["chosen"]["observations"].__setitem__(0, ["a", 1, 2]), "rectangular list of numbers"),
])
def test_bad_segments_name_the_record(edit, message):
    record = pair_record(where="pairs.jsonl:7")
    edit(record.fields)
    with pytest.raises(DataError, match=f"pairs.jsonl:7.*{message}"):
        plugin().prepare(record, paired=True)


def test_bad_labels_and_unknown_layouts_say_what_a_record_needs():
    reward = plugin()
    with pytest.raises(DataError, match="label"):
        reward.prepare(Record({"segment_0": segment(2), "segment_1": segment(2), "label": 2}, "f:3", None), paired=True)
    with pytest.raises(DataError, match="f:4: a control record needs \"chosen\" and \"rejected\""):
        reward.prepare(Record({"prompt": "x"}, "f:4", None), paired=True)


def test_discrete_actions_must_be_integers_in_range():
    reward = plugin({"obs_dim": 3, "action_dim": 2, "discrete": True})
    record = Record({"segment": segment(3, discrete=True, action_dim=2)}, "f:2", None)
    record.fields["segment"]["actions"][1] = 5
    with pytest.raises(DataError, match=r"f:2: segment.actions: must be 3 integers in \[0, 2\)"):
        reward.prepare(record, paired=False)


def test_npz_pairs_and_single_segments(tmp_path):
    rng = np.random.default_rng(0)
    obs, act = rng.normal(size=(4, 5, 3)).astype(np.float32), rng.uniform(-2, 2, size=(4, 5, 1)).astype(np.float32)
    np.savez(tmp_path / "pairs.npz", observations_0=obs, actions_0=act, observations_1=obs[::-1], actions_1=act[::-1],
             label=np.array([0, 1, 0.5, 1]), rewards_0=rng.normal(size=(4, 5)), rewards_1=rng.normal(size=(4, 5)))
    records = read_records(str(tmp_path / "pairs.npz"), "auto", "data.train")
    assert [r.where for r in records][:2] == [f"{tmp_path / 'pairs.npz'}:row 0", f"{tmp_path / 'pairs.npz'}:row 1"]
    reward = plugin()
    chosen, _ = reward.prepare(records[1], paired=True)
    assert np.allclose(chosen.observations.numpy(), obs[::-1][1])  # label 1: segment_1 preferred
    with pytest.raises(SkipRecord):
        reward.prepare(records[2], paired=True)
    np.savez(tmp_path / "segments.npz", observations=obs, actions=act)
    singles = read_records(str(tmp_path / "segments.npz"), "auto", "data.train")
    assert len(singles) == 4 and reward.prepare(singles[3], paired=False)[0].actions.shape == (5, 1)


def test_npz_without_the_arrays_names_them(tmp_path):
    np.savez(tmp_path / "bad.npz", observations=np.zeros((2, 3, 3)))
    with pytest.raises(DataError, match="bad.npz: a control .npz holds observations_0"):
        read_records(str(tmp_path / "bad.npz"), "auto", "data.train")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz: not a readable .npz"):
        read_records(str(tmp_path / "broken.npz"), "auto", "data.train")


def test_bad_data_is_exit_code_2_from_the_cli(tmp_path, capsys):
    good = pair_record().fields
    bad = dict(good, rejected={"observations": [[0.0, 0.0]], "actions": [[0.0]]})
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "run"),
                                  "model": {"reward": "control", "tiny": {"obs_dim": 3, "action_dim": 1}},
                                  "data": {"train": str(data), "strict": True}, "loss": {"name": "cpl"},
                                  "train": {"max_steps": 1, "progress": False, "callbacks": []}}))
    assert main(["train", str(config)]) == 2
    assert f"{data}:2" in capsys.readouterr().err
