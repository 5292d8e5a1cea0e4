"""``eval.samples``: at each evaluation the policy answers the first prompts of the held-out data;
the answers land in output_dir/samples/ (text in JSONL, images as PNGs) and in TensorBoard (a text
table, images), read back here."""

import json

import pytest
from conftest import base_config, write_jsonl

from mmalign import train
from mmalign.errors import ConfigError

pytest.importorskip("tensorboard", reason="the test extra installs tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def events(folder):
    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    return acc


def test_text_samples_are_written_and_logged_at_each_evaluation(tmp_path, tokenizer_dir, pairs_file):
    held_out = write_jsonl(tmp_path / "eval.jsonl", [json.loads(line) for line in pairs_file.read_text().splitlines()[:4]])
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, data={"eval": str(held_out)},
                      train={"max_steps": 4, "eval_every": 2, "report_to": ["tensorboard"]},
                      eval={"samples": 3, "evaluators": []})
    out = train(cfg, log=lambda *a: None).output_dir
    steps = sorted(p.name for p in (out / "samples").iterdir())
    assert steps == ["step-0000002.jsonl", "step-0000004.jsonl"]
    lines = [json.loads(line) for line in (out / "samples" / "step-0000004.jsonl").read_text().splitlines()]
    prompts = [json.loads(line)["prompt"] for line in held_out.read_text().splitlines()[:3]]
    assert [s["prompt"] for s in lines] == prompts and all(isinstance(s["response"], str) for s in lines)
    assert lines[0]["where"] == f"{held_out}:1"
    acc = events(out / "trackers" / "mmalign")
    (tag,) = [t for t in acc.Tags()["tensors"] if t.startswith("samples")]
    logged = acc.Tensors(tag)
    assert [e.step for e in logged] == [2, 4]
    table = logged[-1].tensor_proto.string_val[0].decode()
    assert table.startswith("| prompt | response |") and prompts[2] in table


def test_diffusion_samples_are_images(tmp_path):
    from conftest import REPO

    from mmalign.config import load_config, to_dict

    cfg = to_dict(load_config(REPO / "configs" / "demo" / "diffusion.yaml"))  # its paths resolved
    cfg["output_dir"] = str(tmp_path / "run")
    cfg["data"].update(eval=None, eval_size=0)
    cfg["train"].update(max_steps=2, eval_every=2, report_to=["tensorboard"], progress=False, callbacks=[])
    cfg["eval"].update(samples=2, evaluators=[])
    out = train(cfg, log=lambda *a: None).output_dir
    line = json.loads((out / "samples" / "step-0000002.jsonl").read_text().splitlines()[0])
    assert (out / "samples" / line["response"]).stat().st_size > 100  # the PNG beside the line
    acc = events(out / "trackers" / "mmalign")
    assert sorted(acc.Tags()["images"]) == ["samples/0", "samples/1"]


def test_samples_need_a_non_negative_count(tmp_path, tokenizer_dir, pairs_file):
    cfg = base_config(tmp_path, tokenizer_dir, pairs_file, eval={"samples": -1})
    with pytest.raises(ConfigError, match="eval.samples"):
        train(cfg, log=lambda *a: None)
