"""The diffusion world's checkers: caption fidelity (the caption's colour, a shape present) and the
gold score as a reward function."""

import random

from PIL import Image

from mmalign_diffusion import world


def test_every_rendered_caption_passes_and_another_colour_fails():
    rng = random.Random(3)
    for _ in range(60):
        text = world.caption(rng)
        image = world.render(rng, text, rng.uniform(0.1, 0.9))
        assert world.caption_fidelity(image, text)
        other = next(c for c in world.COLOURS if c != text.split()[1])
        assert not world.caption_fidelity(image, f"a {other} {text.split()[2]}")


def test_no_shape_or_washed_out_colour_fails():
    assert not world.caption_fidelity(Image.new("RGB", (32, 32), (200, 200, 200)), "a red circle")
    rng = random.Random(0)
    red = world.render(rng, "a red circle", 0.3)
    yellowed = Image.blend(red, Image.new("RGB", red.size, (230, 210, 40)), 0.6)  # drifted to yellow
    assert world.caption_fidelity(red, "a red circle") and not world.caption_fidelity(yellowed, "a red circle")


def test_brightness_scorer_is_the_gold_score():
    images = [Image.new("RGB", (4, 4), (51, 51, 51)), Image.new("RGB", (4, 4), (255, 255, 255))]
    assert world.brightness_scorer()(["a", "b"], images) == [0.2, 1.0]
