"""The image scorers (mmalign_diffusion/image_scorers.py) on a tiny random CLIP built offline: each
equals its formula computed directly with the model, whatever the batch; through the registry they
are reward functions with weights; bad paths and heads are refused with exit 2."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from mmalign.errors import ConfigError
from mmalign.plugins import registry
from mmalign_diffusion.components import build_tiny_tokenizer
from mmalign_diffusion.image_scorers import aesthetic_scorer, clip_preference_scorer
from mmalign_rl.source import build_scorers, score_responses

PROMPTS = ["a red circle", "a blue square on a dark background", "a green ring"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    path = tmp_path_factory.mktemp("clip")
    tokenizer = build_tiny_tokenizer(16)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def images(n=3):
    g = torch.Generator().manual_seed(1)
    return [Image.fromarray((torch.rand(40, 40, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


def direct_features(path, prompts, ims):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    clip = CLIPModel.from_pretrained(path).eval()
    tokens = AutoTokenizer.from_pretrained(path)(prompts, padding=True, return_tensors="pt")
    pixels = AutoImageProcessor.from_pretrained(path)(images=ims, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        text = clip.text_projection(clip.text_model(**tokens).pooler_output)
        image = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
    return clip, F.normalize(text, dim=-1), F.normalize(image, dim=-1)


def test_clip_preference_is_the_scaled_cosine_of_text_and_image(tiny_clip):
    ims = images()
    clip, text, image = direct_features(tiny_clip, PROMPTS, ims)
    expected = (clip.logit_scale.exp() * (text * image).sum(-1)).tolist()
    assert clip_preference_scorer(str(tiny_clip))(PROMPTS, ims) == pytest.approx(expected, abs=1e-5)
    assert clip_preference_scorer(str(tiny_clip), batch_size=1)(PROMPTS, ims) == pytest.approx(expected, abs=1e-5)


def test_aesthetic_is_laions_linear_head_on_the_normalized_image_embedding(tiny_clip, tmp_path):
    torch.manual_seed(2)
    layers = {0: torch.nn.Linear(8, 12), 2: torch.nn.Linear(12, 4), 4: torch.nn.Linear(4, 1)}  # gaps: LAION's dropouts
    save_file({f"layers.{i}.{k}": v.detach().contiguous() for i, layer in layers.items()
               for k, v in layer.state_dict().items()}, str(tmp_path / "head.safetensors"))
    ims = images()
    _, _, image = direct_features(tiny_clip, PROMPTS, ims)
    with torch.no_grad():
        expected = layers[4](layers[2](layers[0](image)))[:, 0].tolist()
    scorer = aesthetic_scorer(str(tiny_clip), str(tmp_path / "head.safetensors"), batch_size=2)
    assert scorer(PROMPTS, ims) == pytest.approx(expected, abs=1e-5)

    save_file({"layers.0.weight": torch.zeros(1, 5), "layers.0.bias": torch.zeros(1)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ConfigError, match="takes 5 features and the CLIP model gives 8"):
        aesthetic_scorer(str(tiny_clip), str(tmp_path / "wide.safetensors"))
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        aesthetic_scorer(str(tiny_clip), str(tmp_path / "missing.safetensors"))


def test_image_scorers_are_registered_reward_functions_with_weights(tiny_clip, tmp_path):
    scorers = build_scorers({"clip_preference": {"weight": 2.0, "model": str(tiny_clip)}, "brightness": 1.0},
                            registry())
    records = [type("R", (), {"fields": {"prompt": p}})() for p in PROMPTS[:2]]
    ims = images(4)
    rewards, metrics = score_responses(scorers, records, [ims[:2], ims[2:]])
    pick = clip_preference_scorer(str(tiny_clip))([PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, ims)
    bright = registry().get("scorers", "brightness", "x")()(None, ims)
    assert rewards.flatten().tolist() == pytest.approx([2 * p + b for p, b in zip(pick, bright)], abs=1e-5)
    assert set(metrics) == {"rewards/clip_preference", "rewards/brightness"}
    with pytest.raises(ConfigError, match="cannot load a CLIP model"):
        build_scorers({"clip_preference": {"model": str(tmp_path / "nowhere")}}, registry())
