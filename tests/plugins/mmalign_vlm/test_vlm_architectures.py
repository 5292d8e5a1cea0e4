"""Every supported VLM family (tiny random models built from configs, tiny offline processors):
scores on every path the plugin uses equal the model's own forward on the processor's outputs,
DPO starts at ln 2, two training steps run through the engine, and the saved model reloads with
plain transformers.

Qwen2-VL, Qwen2.5-VL and LLaVA-OneVision processors hold a video processor, which transformers 5
builds only with torchvision; PyPI has no CPU torchvision for torch 2.13 (only CUDA builds, which
do not load against CPU torch). Without torchvision those processors are built here with the
video processor left out (images only, the processor's own __call__), and the AutoProcessor
round trip is skipped for them.
"""

import contextlib
import importlib.util
import json
import math
import random

import pytest
import torch

from mmalign.config import load_config
from mmalign_formats import read_jsonl
from mmalign_vlm import reward as reward_module
from mmalign_vlm import shapes, tiny
from mmalign_vlm.reward import VLMReward, load_image

FAMILIES = ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3"]
VIDEO_FAMILIES = {"llava_onevision", "qwen2_vl", "qwen2_5_vl"}
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
MAX_DIFF: dict = {}  # family -> path -> max |score - direct| (printed with -s)


@contextlib.contextmanager
def _video_processor_optional():
    """Let a processor be built with video_processor=None (transformers checks its class, which
    needs torchvision)."""
    from transformers.processing_utils import ProcessorMixin

    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, name, arg):
        return None if name == "video_processor" and arg is None else original(self, name, arg)

    ProcessorMixin.check_argument_for_proper_class = check
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = original


def _save_without_video(processor):
    def save_pretrained(directory, **kwargs):
        processor.tokenizer.save_pretrained(directory)
        processor.image_processor.save_pretrained(directory)
    return save_pretrained


@pytest.fixture(scope="module", params=FAMILIES)
def world(request, tmp_path_factory):
    """(family, root, processor): a processor dir (when it can be saved) and four pairs on images
    of two sizes (anyres / dynamic-resolution families give them different token counts)."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    if family in VIDEO_FAMILIES and not HAS_TORCHVISION:
        with _video_processor_optional():
            processor = tiny.build_processor(None, family)
        processor.save_pretrained = _save_without_video(processor)
    else:
        processor = tiny.build_processor(root / "processor", family)
    rng = random.Random(0)
    scenes = [shapes.scene(rng) for _ in range(4)]
    (root / "images").mkdir()
    rows = []
    for i, q in enumerate(scenes):
        image = shapes.draw(q)
        image = image.resize((48, 32)) if i % 2 else image
        image.save(root / "images" / f"{i}.png")
        objects = shapes.objects_of(q)
        rows.append({"image": f"images/{i}.png", "prompt": "describe", "chosen": shapes.caption(objects),
                     "rejected": shapes.with_hallucination(objects, rng)})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return family, root, processor


@pytest.fixture
def patched(world, monkeypatch):
    """The processor the plugin loads: from its directory, or the in-memory one without video."""
    family, root, processor = world
    if family in VIDEO_FAMILIES and not HAS_TORCHVISION:
        monkeypatch.setattr(reward_module, "load_processor", lambda path, trust: processor)
    return world


def config(root, tmp_path, family, **extra):
    cfg = {"output_dir": str(tmp_path / "run"),
           "model": {"reward": "vlm", "tiny": tiny.TINY[family], "tokenizer": str(root / "processor")},
           "data": {"train": str(root / "pairs.jsonl")},
           "loss": {"name": "sigmoid", "beta": 0.1},
           "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1, "progress": False}}
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def direct_score(model, processor, family, image, completion_text, prompt_ids, completion_ids):
    """The model's own forward on the processor's outputs for prompt + completion, no custom mask:
    the log-softmax summed over the completion tokens."""
    text = tiny.SPECIALS[family][1] + "describe " + completion_text + " <eos>"
    enc = processor(text=text, images=[[image]] if family == "idefics3" else [image], add_special_tokens=False,
                    return_tensors="pt")
    assert enc["input_ids"][0].tolist() == prompt_ids + completion_ids  # same tokens as the plugin's
    logps = model(**enc).logits.float().log_softmax(-1)[0]
    p = len(prompt_ids)
    return sum(logps[p - 1 + j, t].item() for j, t in enumerate(completion_ids))


PATHS = {"plain": dict(encode_once=False, prefix_sharing=False), "once": dict(prefix_sharing=False),
         "shared": dict(packing=False), "packed": dict()}


def test_scores_equal_the_models_own_forward_on_every_path(patched, tmp_path, monkeypatch):
    import mmalign_text.prefix_sharing as ps

    family, root, processor = patched
    cfg = load_config(data=config(root, tmp_path, family))
    torch.manual_seed(0)
    reward = VLMReward(cfg.model, cfg.data)
    model = reward.load_policy().eval()
    with torch.no_grad():  # default init (std 0.02) leaves logits nearly uniform, blind to images
        for param in model.parameters():  # and positions; larger weights make any mix-up visible
            param.add_(torch.randn_like(param) * 0.1)
    records = read_jsonl(root / "pairs.jsonl")
    examples = [reward.prepare(r, paired=True) for r in records]
    with torch.no_grad():
        direct = [[direct_score(model, processor, family, load_image(e.images[0], e.where), r.fields[key], e.prompt_ids, ids)
                   for key, ids in (("chosen", e.chosen_ids), ("rejected", e.rejected_ids))]
                  for e, r in zip(examples, records)]
        expected = torch.tensor(direct)
        monkeypatch.setattr(ps, "assign_rows", lambda lengths, pack: [[0, 2], [1, 3]] if pack else [[i] for i in range(4)])
        for path, options in PATHS.items():
            reward.options.update({"encode_once": True, "prefix_sharing": True, "packing": True, **options})
            scores = reward.score(model, reward.collate(examples))
            got = torch.stack([scores.chosen, scores.rejected], -1)
            diff = (got - expected).abs().max().item()
            MAX_DIFF.setdefault(family, {})[path] = diff
            print(f"{family} {path}: max |score - direct| = {diff:.2e}")
            assert diff < 1e-5, (family, path, got, expected)
        # The comparison can fail: the once-per-pair path with the images of pairs 0 / 2 and 1 / 3
        # swapped (same sizes, so the same token counts) is far off.
        reward.options.update(prefix_sharing=False)
        batch = reward.collate(examples)
        batch.groups = batch.groups[2:] + batch.groups[:2]
        swapped = reward.score(model, batch)
        assert (torch.stack([swapped.chosen, swapped.rejected], -1) - expected).abs().max() > 1e-3


def test_the_vision_tower_runs_once_per_pair(patched, tmp_path):
    family, root, _ = patched
    cfg = load_config(data=config(root, tmp_path, family))
    reward = VLMReward(cfg.model, cfg.data)
    model = reward.load_policy().eval()
    examples = [reward.prepare(r, paired=True) for r in read_jsonl(root / "pairs.jsonl")]
    calls = []
    tower = getattr(model.model, reward.family.tower)
    tower.register_forward_hook(lambda m, a, out: calls.append(1))
    with torch.no_grad():
        reward.score(model, reward.collate(examples))
    assert len(calls) == 1  # one call for the batch's 4 pairs (8 rows)


def test_dpo_starts_at_ln2_trains_two_steps_and_reloads(patched, tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmalign import train

    family, root, _ = patched
    saved = {}
    original_save = VLMReward.save

    def save(self, model, directory):
        saved["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        original_save(self, model, directory)

    monkeypatch.setattr(VLMReward, "save", save)
    result = train(config(root, tmp_path, family), log=lambda *a: None)
    rows = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and losses[0] == pytest.approx(math.log(2), abs=1e-6)
    reloaded = AutoModelForImageTextToText.from_pretrained(result.final_dir)
    state = reloaded.state_dict()
    assert set(state) == set(saved["state"])
    for name, value in saved["state"].items():
        assert torch.equal(state[name], value), name
    if family in VIDEO_FAMILIES and not HAS_TORCHVISION:
        pytest.skip("AutoProcessor round trip needs torchvision for this family's video processor")
    assert type(AutoProcessor.from_pretrained(result.final_dir)).__name__.lower().startswith(family.split("_")[0][:4])


def test_an_unsupported_model_class_is_a_config_error(tmp_path):
    from mmalign.errors import ConfigError

    shapes.build_processor(tmp_path / "p")
    cfg = load_config(data={"output_dir": str(tmp_path / "run"), "data": {"train": str(tmp_path / "x.jsonl")},
                            "model": {"reward": "vlm", "tiny": {"model_type": "blip-2"},
                                      "tokenizer": str(tmp_path / "p")}})
    with pytest.raises(ConfigError, match="Blip2ForConditionalGeneration.*not a supported"):
        VLMReward(cfg.model, cfg.data)
