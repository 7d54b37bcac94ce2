"""Tests for minimagen.data: the Shapes renderer, its captions, and ImageCaptionFolder."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from minimagen.data import (
    CENTRES, COLOUR_RGB, COLOURS, HALF_EXTENT, POSITIONS, SHAPES, SIZES, TEXTURES, ImageCaptionFolder, Scene,
    ShapeObject, Shapes, WHERE, caption, parse_caption, random_scene, render,
)

BACKGROUND_PIXEL = 2 * 0.18 - 1


def scenes(n: int, seed: int = 0, **kwargs) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [random_scene(rng, **kwargs) for _ in range(n)]


def one(colour="red", shape="square", size="large", texture="plain", position="center") -> Scene:
    return Scene((ShapeObject(colour, shape, size, texture, position),))


def object_mask(image: torch.Tensor) -> torch.Tensor:
    """Pixels that are not background, [H, W] bool."""
    return (image - BACKGROUND_PIXEL).abs().amax(dim=0) > 1e-4


# --- Rendering ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [8, 64, 100, 256])
def test_render_shape_dtype_range(size):
    for scene in scenes(5, seed=size):
        image = render(scene, size)
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert image.min() >= -1 and image.max() <= 1


def test_real_renders_never_touch_plus_minus_one():
    # The saturation metric counts pixels pinned at +-1; real data must score 0, textures included.
    for size in (64, 256):
        images = torch.stack([render(s, size) for s in scenes(30, seed=1)])
        assert images.abs().max() < 0.9


def test_downsampled_1024_matches_64():
    # Anti-aliasing: averaging the 1024 px render down to 64 px gives the 64 px render. Measured: mean
    # abs error <= 0.002 per image and max abs error <= 0.022 (at shape corners), on the [-1, 1] scale.
    # Tolerances: mean 0.005, max 0.05 (2.5x margin).
    every_combination = [one(shape=s, texture=t, position="left") for s, t in itertools.product(SHAPES, TEXTURES)]
    for scene in every_combination + scenes(24, seed=2):
        error = (F.interpolate(render(scene, 1024)[None], size=64, mode="area")[0] - render(scene, 64)).abs()
        assert error.mean() < 0.005, caption(scene)
        assert error.max() < 0.05, caption(scene)


def test_textures_visible_at_256_but_averaged_away_at_64():
    # Measured mean abs difference from the plain object: ~0.02-0.05 at 256 px, <= 0.002 at 64 px.
    for texture in TEXTURES[1:]:
        textured, plain = one(texture=texture), one(texture="plain")
        assert (render(textured, 256) - render(plain, 256)).abs().mean() > 0.015, texture
        assert (render(textured, 64) - render(plain, 64)).abs().mean() < 0.004, texture


def test_textures_differ_in_kind_at_256():
    # Fourier energy at one texture period (4 px at 256 px): stripes vary along x only, a checkerboard only
    # along the diagonals, dots along both axes. So the three patterns are different, not shifted copies.
    def energies(texture: str) -> tuple[float, float, float]:
        patch = render(one(texture=texture), 256)[:, 96:160, 96:160].mean(dim=0)  # inside the square
        spectrum = torch.fft.fft2(patch - patch.mean()).abs()
        return spectrum[0, 16].item(), spectrum[16, 0].item(), spectrum[16, 16].item()  # along x, y, diagonal

    x, y, diagonal = energies("striped")
    assert x > 100 * max(y, diagonal, 1e-3)
    x, y, diagonal = energies("checkered")
    assert diagonal > 100 * max(x, y, 1e-3)
    x, y, diagonal = energies("dotted")
    assert x > 10 and y > 10 and abs(x - y) < 0.05 * x


def test_objects_are_where_and_what_the_caption_says():
    size = 64
    for scene in scenes(40, seed=3):
        for obj in scene.objects:
            mask = object_mask(render(Scene((obj,)), size))
            rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
            # Every shape fills a square of half-extent h around its centre: the bounding box says both.
            centre_x, centre_y = (cols.min() + cols.max() + 1) / 2 / size, (rows.min() + rows.max() + 1) / 2 / size
            assert (centre_x.item(), centre_y.item()) == pytest.approx(CENTRES[obj.position], abs=1.5 / size)
            width = (cols.max() - cols.min() + 1).item() / size
            assert width == pytest.approx(2 * HALF_EXTENT[obj.size], abs=2.5 / size)
        # In the full scene each object's centre shows its caption colour (textures average out at 64 px).
        image = render(scene, size)
        for obj in scene.objects:
            x, y = (int(c * size) for c in CENTRES[obj.position])
            centre = image[:, y - 1:y + 1, x - 1:x + 1].mean(dim=(1, 2))
            assert torch.allclose(centre, torch.tensor(COLOUR_RGB[obj.colour]) * 2 - 1, atol=0.02)


def test_two_objects_never_overlap_or_leave_the_image():
    for position_pair in (("left", "right"), ("top", "bottom")):
        for shapes in itertools.product(SHAPES, repeat=2):
            pair = tuple(ShapeObject("red", s, "large", "plain", p) for s, p in zip(shapes, position_pair))
            masks = [object_mask(render(Scene((obj,)), 64)) for obj in pair]
            assert not (masks[0] & masks[1]).any()
            for mask in masks:  # a background border remains on every side
                assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_every_attribute_value_occurs():
    drawn = scenes(500, seed=4)
    objects = [o for s in drawn for o in s.objects]
    for field, values in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES), ("texture", TEXTURES),
                          ("position", POSITIONS)):
        assert {getattr(o, field) for o in objects} == set(values), field
    assert {len(s.objects) for s in drawn} == {1, 2}
    assert all(len(s.objects) == 1 for s in scenes(50, max_objects=1))
    assert {o.texture for s in scenes(50, textures=("plain",)) for o in s.objects} == {"plain"}


# --- Captions ----------------------------------------------------------------------------------------

def test_caption_example():
    scene = Scene((ShapeObject("red", "circle", "small", "striped", "left"),
                   ShapeObject("blue", "square", "large", "plain", "right")))
    text = "a small red striped circle on the left and a large blue plain square on the right"
    assert caption(scene) == text
    assert parse_caption(text) == scene


def test_caption_round_trip():
    for scene in scenes(300, seed=5):
        text = caption(scene)
        assert parse_caption(text) == scene
        assert caption(parse_caption(text)) == text


@pytest.mark.parametrize("text, offending", [
    ("a huge red plain circle in the center", "'huge'"),
    ("a small pink plain circle in the center", "'pink'"),
    ("a small red wavy circle in the center", "'wavy'"),
    ("a small red circle in the center", "texture"),  # texture word left out
    ("a small red plain blob in the center", "'blob'"),
    ("a small red plain circle in the corner", "'in the corner'"),
    ("the small red plain circle in the center", "'the'"),
    ("a small red plain circle", "too short"),
    ("", "too short"),
    ("a small red plain circle on the right and a small red plain circle on the left", "('right', 'left')"),
    ("a small red plain circle on the left and a small red plain circle at the bottom", "('left', 'bottom')"),
    ("a small red plain circle on the left and a small red plain circle on the right and a small red plain "
     "circle in the center", "at most 2"),
])
def test_parse_errors_name_the_problem(text, offending):
    with pytest.raises(ValueError) as error:
        parse_caption(text)
    assert offending in str(error.value)


def test_scene_validation():
    with pytest.raises(ValueError, match="colour"):
        ShapeObject("pink", "circle", "small", "plain", "left")
    with pytest.raises(ValueError, match="position"):
        ShapeObject("red", "circle", "small", "plain", "corner")
    with pytest.raises(TypeError, match="tuple of ShapeObject"):
        Scene([ShapeObject("red", "circle", "small", "plain", "left")])
    with pytest.raises(ValueError, match="1 or 2"):
        Scene(())


# --- The Shapes dataset ------------------------------------------------------------------------------

def test_shapes_items_are_deterministic_and_agree_across_sizes():
    small, large = Shapes(size=64, length=20, seed=7), Shapes(size=256, length=20, seed=7)
    assert len(small) == 20
    for i in (0, 5, 19):
        image, text = small[i]
        again, text_again = Shapes(size=64, length=20, seed=7)[i]
        assert torch.equal(image, again) and text == text_again == caption(small.scene(i))
        assert large[i][1] == text
        assert (F.interpolate(large[i][0][None], size=64, mode="area")[0] - image).abs().mean() < 0.005
    assert small[-1][1] == small[19][1]


def test_shapes_different_seeds_and_indices_differ():
    a, b = Shapes(length=50, seed=0), Shapes(length=50, seed=1)
    assert [a.scene(i) for i in range(50)] != [b.scene(i) for i in range(50)]
    assert len({caption(a.scene(i)) for i in range(50)}) > 40


def test_shapes_easy_variant():
    ds = Shapes(length=40, max_objects=1, textures=("plain",))
    assert all(ds.scene(i).objects[0].texture == "plain" and len(ds.scene(i).objects) == 1 for i in range(40))


def test_held_out_colour_shapes_never_occur_in_training_and_only_they_in_the_test():
    from minimagen.data import ALL_COLOUR_SHAPES, HELD_OUT_COLOUR_SHAPES, parse_caption

    train = Shapes(64, length=2000, seed=0, colour_shapes=ALL_COLOUR_SHAPES - HELD_OUT_COLOUR_SHAPES)
    seen = {(o.colour, o.shape) for i in range(len(train)) for o in train.scene(i).objects}
    assert not seen & HELD_OUT_COLOUR_SHAPES  # really absent from training
    assert seen == ALL_COLOUR_SHAPES - HELD_OUT_COLOUR_SHAPES  # and every other pair is there
    # each held-out pair's colour and shape occur in training, just never together
    assert {c for c, _ in HELD_OUT_COLOUR_SHAPES} <= {c for c, _ in seen}
    assert {s for _, s in HELD_OUT_COLOUR_SHAPES} <= {s for _, s in seen}
    test = Shapes(64, length=300, seed=10_000, colour_shapes=HELD_OUT_COLOUR_SHAPES)
    drawn = {(o.colour, o.shape) for i in range(len(test)) for o in parse_caption(test[i][1]).objects}
    assert drawn == HELD_OUT_COLOUR_SHAPES
    # unrestricted scenes are unchanged by the option's existence: None draws as before
    assert Shapes(64, length=5, seed=3, colour_shapes=None).scene(4) == Shapes(64, length=5, seed=3).scene(4)
    with pytest.raises(ValueError, match="colour_shapes must be a non-empty set"):
        Shapes(64, colour_shapes={("red", "hexagon")})
    with pytest.raises(ValueError, match="colour_shapes must be a non-empty set"):
        Shapes(64, colour_shapes=set())
    with pytest.raises(TypeError, match="set of \\(colour, shape\\) pairs"):
        Shapes(64, colour_shapes=("red", "circle"))


def test_paraphrases_use_words_the_captions_never_use_and_keep_the_meaning():
    from minimagen.data import COLOURS, PARAPHRASE_KINDS, SHAPES, SIZES, TEXTURES, paraphrase, paraphrase_words

    shapes = Shapes(64, length=200, seed=0)
    training_words = {w for i in range(200) for w in shapes[i][1].replace(",", "").split()}
    words = paraphrase_words()
    for attribute in ("size", "colour", "texture", "shape"):
        for synonyms in words[attribute].values():
            for phrase in synonyms:  # e.g. "circular shape": no word of it is a caption word
                assert not set(phrase.replace("-", " ").split()) & training_words, phrase
    rng = np.random.default_rng(0)
    for i in range(50):
        scene = shapes.scene(i)
        said = paraphrase(scene, "synonyms", rng)
        for o in scene.objects:  # each object's attribute words are gone ...
            assert not {o.size, o.colour, o.texture, o.shape} & set(said.replace(",", "").split())
        assert said.count(" and ") == len(scene.objects) - 1  # ... and each object is still there
        reordered = paraphrase(scene, "reordered", rng)
        assert sorted(reordered.replace(",", "").split()) == sorted(shapes[i][1].split())  # the same words
        assert reordered.startswith(WHERE[scene.objects[-1].position])
    assert paraphrase(shapes.scene(0), "synonyms", np.random.default_rng(5)) == paraphrase(
        shapes.scene(0), "synonyms", np.random.default_rng(5))  # seeded
    with pytest.raises(ValueError, match="kind must be"):
        paraphrase(shapes.scene(0), "shuffled", rng)
    assert set(PARAPHRASE_KINDS) == {"synonyms", "reordered"}
    assert set(words["colour"]) == set(COLOURS) and set(words["shape"]) == set(SHAPES)
    assert set(words["size"]) == set(SIZES) and set(words["texture"]) == set(TEXTURES)


def test_shapes_errors():
    ds = Shapes(length=3)
    for index in (3, -4):
        with pytest.raises(IndexError):
            ds[index]
    for kwargs, word in (({"size": 4}, "size"), ({"length": 0}, "length"), ({"max_objects": 3}, "max_objects"),
                         ({"textures": ("plain", "wavy")}, "wavy"), ({"textures": ()}, "textures"),
                         ({"seed": -1}, "seed")):
        with pytest.raises(ValueError, match=word):
            Shapes(**kwargs)
    with pytest.raises(TypeError, match="textures"):
        Shapes(textures="plain")
    with pytest.raises(ValueError, match="size"):
        render(one(), 4)
    with pytest.raises(TypeError, match="rng"):
        random_scene(0)


# --- ImageCaptionFolder ------------------------------------------------------------------------------

def write_image(path, centre=(0, 255, 0), outside=(255, 0, 0), tall=False) -> None:
    """A 30 x 10 image (10 x 30 if tall): `centre` on the middle third, what a centre crop keeps."""
    pixels = np.zeros((10, 30, 3), dtype=np.uint8)  # [H, W, 3]
    pixels[:, :] = outside
    pixels[:, 10:20] = centre
    Image.fromarray(pixels.transpose(1, 0, 2) if tall else pixels).save(path)


def test_folder_happy_path(tmp_path):
    write_image(tmp_path / "b.PNG")
    (tmp_path / "b.txt").write_text("  a green square\n")
    write_image(tmp_path / "a.png", centre=(255, 0, 0), outside=(0, 0, 255), tall=True)
    (tmp_path / "a.txt").write_text("a red square")
    (tmp_path / "notes.csv").write_text("ignored")
    ds = ImageCaptionFolder(tmp_path, size=8)
    assert len(ds) == 2
    image, text = ds[0]
    assert text == "a red square" and image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert torch.allclose(image.mean(dim=(1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=0.02)
    image, text = ds[1]
    assert text == "a green square"
    assert torch.allclose(image.mean(dim=(1, 2)), torch.tensor([-1.0, 1.0, -1.0]), atol=0.02)


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="missing.*does not exist"):
        ImageCaptionFolder(tmp_path / "missing", size=8)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        ImageCaptionFolder(tmp_path / "file.txt", size=8)
    with pytest.raises(ValueError, match="no images"):
        ImageCaptionFolder(tmp_path, size=8)
    write_image(tmp_path / "one.png")
    write_image(tmp_path / "two.jpg")
    with pytest.raises(ValueError, match="one.png.*two.jpg"):
        ImageCaptionFolder(tmp_path, size=8)
    (tmp_path / "one.txt").write_text("fine")
    (tmp_path / "two.txt").write_text(" \n")
    with pytest.raises(ValueError, match="two.txt"):
        ImageCaptionFolder(tmp_path, size=8)
    (tmp_path / "two.txt").write_text("also fine")
    (tmp_path / "two.jpg").write_bytes(b"not an image")
    ds = ImageCaptionFolder(tmp_path, size=8)
    assert ds[0][1] == "fine"
    with pytest.raises(ValueError, match="two.jpg"):
        ds[1]
    with pytest.raises(ValueError, match="size"):
        ImageCaptionFolder(tmp_path, size=2)
