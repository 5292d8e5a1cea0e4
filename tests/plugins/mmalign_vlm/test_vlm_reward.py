"""The VLM plugin: scores equal a direct computation, the image is encoded once per pair, saved
models load with plain transformers / peft and caption, bad input names the record."""

import json
import math

import pytest
import torch

from mmalign.config import load_config
from mmalign_formats import read_jsonl
from mmalign.errors import ConfigError, DataError
from mmalign_vlm.reward import VLMReward, generate, load_image
from vlm_helpers import make_vlm_config as vlm_config
from vlm_helpers import vlm_world  # noqa: F401  (a fixture)


def make(root, tmp_path, **options):
    cfg = load_config(data=vlm_config(root, tmp_path, model={"options": options}))
    torch.manual_seed(0)
    reward = VLMReward(cfg.model, cfg.data)
    return reward, reward.load_policy().eval()


def examples(reward, root, n=3):
    return [reward.prepare(r, paired=True) for r in read_jsonl(root / "pairs.jsonl")[:n]]


@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_encode_once_equals_the_naive_path_and_encodes_each_image_once(vlm_world, tmp_path, prefix_sharing):
    reward, model = make(vlm_world, tmp_path, prefix_sharing=prefix_sharing)
    exs = examples(reward, vlm_world)
    encoded = []
    model.model.vision_tower.register_forward_hook(lambda m, a, out: encoded.append(a[0].shape[0]))
    fast = reward.score(model, reward.collate(exs))
    fast_grads = _grads(model, fast)
    reward.options.update(encode_once=False, prefix_sharing=False)
    naive = reward.score(model, reward.collate(exs))
    naive_grads = _grads(model, naive)
    assert encoded == [3, 6]  # once per pair, against once per row
    assert torch.allclose(fast.chosen, naive.chosen, atol=1e-5)
    assert torch.allclose(fast.rejected, naive.rejected, atol=1e-5)
    for name, grad in fast_grads.items():
        assert torch.allclose(grad, naive_grads[name], atol=1e-5), name


def test_packed_pairs_equal_the_naive_path(vlm_world, tmp_path, monkeypatch):
    """Several pairs (and their images) in one row: the mask keeps them apart and each row's image
    features land in its own placeholders."""
    import mmalign_text.prefix_sharing as ps

    reward, model = make(vlm_world, tmp_path)
    exs = examples(reward, vlm_world, n=4)
    monkeypatch.setattr(ps, "assign_rows", lambda lengths, pack: [[0, 2], [1, 3]])
    batch = reward.collate(exs)
    assert batch.text.input_ids.shape[0] == 2 and batch.row_groups == [[0, 2], [1, 3]]
    packed = reward.score(model, batch)
    packed_grads = _grads(model, packed)
    reward.options.update(encode_once=False, prefix_sharing=False)
    naive = reward.score(model, reward.collate(exs))
    naive_grads = _grads(model, naive)
    assert torch.allclose(packed.chosen, naive.chosen, atol=1e-5)
    assert torch.allclose(packed.rejected, naive.rejected, atol=1e-5)
    for name, grad in packed_grads.items():
        assert torch.allclose(grad, naive_grads[name], atol=1e-5), name
    prompts = sum(len(e.prompt_ids) for e in exs)  # image tokens included
    completions = sum(len(e.chosen_ids) + len(e.rejected_ids) for e in exs)
    assert int(reward.batch_counts(batch)["tokens"]) == prompts + completions  # a pair's prompt once
    assert int(reward.batch_counts(reward.collate(exs))["tokens"]) == 2 * prompts + completions  # a row each


def _grads(model, scores):
    model.zero_grad()
    (scores.chosen.sum() - 0.5 * scores.rejected.sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_score_equals_direct_computation(vlm_world, tmp_path):
    reward, model = make(vlm_world, tmp_path)
    exs = examples(reward, vlm_world)
    with torch.no_grad():
        scores = reward.score(model, reward.collate(exs))
        for i, e in enumerate(exs):
            for completion, got in ((e.chosen_ids, scores.chosen[i]), (e.rejected_ids, scores.rejected[i])):
                ids = torch.tensor([e.prompt_ids + completion])
                pixels = reward.pixel_values([load_image(e.images[0], e.where)])
                logps = model(input_ids=ids, pixel_values=pixels).logits.log_softmax(-1)[0]
                p = len(e.prompt_ids)
                direct = sum(logps[p - 1 + j, t].item() for j, t in enumerate(completion))
                assert got.item() == pytest.approx(direct, abs=1e-5)


def test_vision_tower_frozen_and_lora_targets_the_language_model(vlm_world, tmp_path):
    reward, model = make(vlm_world, tmp_path)
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.model.multi_modal_projector.parameters())
    cfg = load_config(data=vlm_config(vlm_world, tmp_path, model={"lora": {"r": 4, "alpha": 8}}))
    lora_model = VLMReward(cfg.model, cfg.data).load_policy()
    trainable = [n for n, p in lora_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "multi_modal_projector" in n for n in trainable)
    assert any("language_model" in n and "lora_" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)


def test_full_and_lora_saves_load_with_plain_transformers_and_caption(vlm_world, tmp_path):
    from mmalign import train
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    full = train(vlm_config(vlm_world, tmp_path / "full"), log=lambda *a: None)
    model = AutoModelForImageTextToText.from_pretrained(full.final_dir)
    processor = AutoProcessor.from_pretrained(full.final_dir)
    image = load_image(str(vlm_world / "images" / "img-00000.png"), "t")
    enc = processor(text="<image>\ndescribe", images=[image], add_special_tokens=False, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]

    lora = train(vlm_config(vlm_world, tmp_path / "lora", model={"lora": {"r": 4, "alpha": 8}}),
                 log=lambda *a: None)
    base = AutoModelForImageTextToText.from_pretrained(lora.final_dir / "base_model")
    peft_model = PeftModel.from_pretrained(base, lora.final_dir)
    assert peft_model.generate(**enc, max_new_tokens=5, do_sample=False).shape[1] > enc["input_ids"].shape[1]
    rows = [json.loads(x) for x in (lora.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_mdpo_through_the_engine_starts_at_three_ln2(vlm_world, tmp_path):
    from mmalign import train

    cfg = vlm_config(vlm_world, tmp_path, model={"options": {"corrupted_image": "random_crop"}},
                     loss={"name": "mdpo"})
    result = train(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(3 * math.log(2), abs=1e-5)


def test_mdpo_without_corruption_is_a_clear_error(vlm_world, tmp_path):
    from mmalign import train
    from mmalign.errors import ConfigError

    with pytest.raises(ConfigError, match="corrupted_image"):
        train(vlm_config(vlm_world, tmp_path, loss={"name": "mdpo"}), log=lambda *a: None)


@pytest.mark.parametrize("mutate,message", [
    (lambda r, root: r.update(image="images/missing.png"), "not found"),
    (lambda r, root: r.update(image="images/broken.png"), "not a readable image"),
    (lambda r, root: r.update(prompt="<image> <image> describe"), "2 image placeholder(s)"),
    (lambda r, root: r.pop("image"), 'missing key "image"'),
    (lambda r, root: r.update(image=7), '"image" must be a file path'),
    (lambda r, root: r.update(image=[]), '"image" is an empty list'),
])
def test_bad_input_names_the_record(vlm_world, tmp_path, mutate, message):
    (vlm_world / "images" / "broken.png").write_bytes(b"not a png at all")
    rows = [json.loads(x) for x in (vlm_world / "pairs.jsonl").read_text().splitlines()][:6]
    mutate(rows[4], vlm_world)
    bad = vlm_world / f"bad-{abs(hash(message))}.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import yaml

    from mmalign.cli import main

    cfg = vlm_config(vlm_world, tmp_path, data={"train": str(bad)})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    reward, _ = make(vlm_world, tmp_path)
    with pytest.raises(DataError) as e:
        [reward.prepare(r, paired=True) for r in read_jsonl(bad)]
    assert f"{bad.name}:5" in str(e.value) and message in str(e.value)
    assert main(["train", str(path)]) == 2


def test_generate_captions(vlm_world, tmp_path):
    reward, model = make(vlm_world, tmp_path)
    caps = generate(reward, model, examples(reward, vlm_world, n=2), max_new_tokens=4)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)


def test_best_of_n_keeps_the_scorers_favourite(vlm_world, tmp_path):
    from mmalign_vlm.best_of_n import best_of_n

    reward, model = make(vlm_world, tmp_path)
    seen = []

    def longest(prompts, responses, images):
        seen.append(len(images))
        return [len(r.split()) for r in responses]

    picked = best_of_n(reward, model, examples(reward, vlm_world, n=2), n=3, scorer=longest, max_new_tokens=6)
    assert seen == [6] and len(picked) == 2
    for p in picked:
        assert len(p["responses"]) == 3 and p["best_score"] == max(p["scores"])


def test_content_fingerprint_follows_the_image_bytes(vlm_world, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(vlm_world, root)
    reward, _ = make(root, tmp_path)
    before = reward.content_fingerprint(examples(reward, root))
    assert before == reward.content_fingerprint(examples(reward, root))
    first = json.loads((root / "pairs.jsonl").read_text().splitlines()[0])["image"]
    shutil.copy(root / json.loads((root / "pairs.jsonl").read_text().splitlines()[1])["image"], root / first)
    assert reward.content_fingerprint(examples(reward, root)) != before


def _record(root, **fields):
    row = {"image": "images/img-00000.png", "prompt": "describe", "chosen": "a red circle", "rejected": "a blue cross"}
    row.update(fields)
    return read_jsonl(_write(root, row))[0]


def _write(root, row):
    path = root / f"one-{abs(hash(json.dumps(row, sort_keys=True)))}.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


def test_a_long_prompt_loses_text_only_never_image_tokens(vlm_world, tmp_path):
    """data.tokenization legacy: a prompt over max_prompt_length keeps its end; the text before the
    image can go, image tokens cannot (a DataError naming the record)."""
    cfg = load_config(data=vlm_config(vlm_world, tmp_path, data={"tokenization": "legacy", "max_prompt_length": 20}))
    reward = VLMReward(cfg.model, cfg.data)
    image_id = reward.tokenizer.convert_tokens_to_ids("<image>")
    full = reward.prepare(_record(vlm_world, prompt="a a a a a <image> describe"), paired=True)
    assert len(full.prompt_ids) == 20 and full.prompt_ids.count(image_id) == 16  # 2 of the 5 "a" cut
    cfg = load_config(data=vlm_config(vlm_world, tmp_path, data={"tokenization": "legacy", "max_prompt_length": 10}))
    reward = VLMReward(cfg.model, cfg.data)
    with pytest.raises(DataError, match="one-.*would cut image tokens"):
        reward.prepare(_record(vlm_world, prompt="a a <image> describe"), paired=True)


def test_trl_max_length_keeps_the_prompt_and_cuts_the_completion(vlm_world, tmp_path):
    from mmalign.errors import SkipRecord

    cfg = load_config(data=vlm_config(vlm_world, tmp_path, data={"max_length": 19}))
    reward = VLMReward(cfg.model, cfg.data)
    e = reward.prepare(_record(vlm_world), paired=True)
    assert len(e.prompt_ids) == 17 and len(e.chosen_ids) == 2 and len(e.rejected_ids) == 2
    cfg = load_config(data=vlm_config(vlm_world, tmp_path, data={"max_length": 10}))
    with pytest.raises(SkipRecord, match="prompt fills data.max_length"):
        VLMReward(cfg.model, cfg.data).prepare(_record(vlm_world), paired=True)


def test_under_fsdp_images_go_through_the_models_own_forward(vlm_world, tmp_path):
    # image features merged into the embeddings outside forward would lose their gradients under
    # FSDP2 (mmalign.sharding.run_as_forward): the plain path is the default there, the other refused
    # (the engine calls use_sharded_policy right after construction when accelerate shards the policy)
    cfg = load_config(data=vlm_config(vlm_world, tmp_path))
    plugin = VLMReward(cfg.model, cfg.data)
    assert plugin.options["encode_once"] is True
    plugin.use_sharded_policy()
    assert plugin.options["encode_once"] is False
    cfg = load_config(data=vlm_config(vlm_world, tmp_path, model={"options": {"encode_once": True}}))
    with pytest.raises(ConfigError, match="encode_once: true cannot train under FSDP"):
        VLMReward(cfg.model, cfg.data).use_sharded_policy()
