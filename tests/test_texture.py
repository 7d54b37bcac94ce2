"""The texture probe: targets, the 256 px view of larger images, training, save and load."""

import pytest
import torch

from minimagen import texture as T
from minimagen.cascade import upsample
from minimagen.checkpoint import SHIPPED_DIR
from minimagen.data import HELD_OUT_SEED, POSITIONS, TEXTURES, Scene, ShapeObject, Shapes, render
from minimagen.metrics import IGNORE


def test_texture_targets_name_each_object_s_texture_at_its_position():
    scene = Scene((ShapeObject("red", "circle", "small", "striped", "left"),
                   ShapeObject("blue", "square", "large", "dotted", "right")))
    target = T.texture_targets(scene)["texture"]
    assert target[POSITIONS.index("left")] == TEXTURES.index("striped")
    assert target[POSITIONS.index("right")] == TEXTURES.index("dotted")
    assert (target == IGNORE).sum() == len(POSITIONS) - 2


def test_a_1024_render_area_averaged_is_the_256_render():
    # Textures repeat every 1/64 of the width, so averaging 4x4 blocks of the 1024 px view keeps them:
    # the probe reads a 1024 px image at the scale the 256 px stage drew it.
    scene = Shapes(size=256, length=4, seed=3).scene(2)
    x256, x1024 = render(scene, 256)[None], render(scene, 1024)[None]
    assert (T.to_probe_size(x1024) - x256).abs().mean() < 0.01
    assert T.to_probe_size(x256) is x256
    with pytest.raises(ValueError, match="multiple of 256"):
        T.to_probe_size(torch.zeros(1, 3, 64, 64))


def test_training_saving_and_loading(tmp_path):
    probe, losses = T.train_texture_probe(steps=2, batch_size=2, width=4, progress=False)
    assert len(losses) == 2 and probe(torch.zeros(2, 3, 512, 512))["texture"].shape == (2, len(POSITIONS), len(TEXTURES))
    path = tmp_path / "texture.safetensors"
    T.save_texture_probe(probe, path, losses=losses, training={"seed": 0}, accuracy={"256 clean": 0.5}, eval_n=2)
    back = T.load_texture_probe(path)
    x = Shapes(size=256, length=2, seed=1)[0][0][None]
    torch.testing.assert_close(back(x)["texture"], probe(x)["texture"], atol=2e-2, rtol=0)  # fp16 on disk
    with pytest.raises(ValueError, match="not a TextureProbe"):
        T.load_texture_probe(SHIPPED_DIR / "probe.safetensors")



def test_the_shipped_probe_reads_texture_only_where_it_is_drawn():
    # The shipped probe (minimagen texture-probe, held-out accuracy on its card) reads every object's
    # texture from real renders at 256 and 1024 px; from a 64 px render upsampled by bicubic it cannot
    # (the texture averages away at 64 px), so it answers "plain" and scores about the plain share.
    probe = T.load_texture_probe(SHIPPED_DIR / "texture_probe.safetensors")
    accuracy = T.texture_probe_accuracy(probe, n=40)
    assert min(accuracy.values()) >= 0.98, accuracy
    low, high = Shapes(size=64, length=40, seed=HELD_OUT_SEED), Shapes(size=256, length=40, seed=HELD_OUT_SEED)
    scenes = [high.scene(i) for i in range(40)]
    bicubic = upsample(torch.stack([low[i][0] for i in range(40)]), 256)
    textures = [o.texture for s in scenes for o in s.objects]
    assert T.texture_accuracy(probe, bicubic, scenes) < textures.count("plain") / len(textures) + 0.1


def test_texture_readings_tell_a_texture_on_the_wrong_object_from_a_missing_one():
    from minimagen.data import POSITIONS, TEXTURES, Scene, ShapeObject
    from minimagen.texture import texture_readings

    class Reads:
        """A stand-in probe that reads the given texture at each position."""
        def __init__(self, rows):
            self.rows = rows

        def __call__(self, images):
            logits = torch.zeros(len(self.rows), len(POSITIONS), len(TEXTURES))
            for b, row in enumerate(self.rows):
                for position, texture in row.items():
                    logits[b, POSITIONS.index(position), TEXTURES.index(texture)] = 1.0
            return {"texture": logits}

    a, b = "left", "right"
    scene = Scene(objects=(ShapeObject(colour="red", shape="circle", size="small", texture="striped", position=a),
                           ShapeObject(colour="blue", shape="square", size="small", texture="plain", position=b)))
    probe = Reads([{a: "striped", b: "striped"}, {a: "plain", b: "dotted"}])
    counts = texture_readings(probe, torch.zeros(2, 3, 256, 256), [scene, scene])
    # image 1: circle right, square striped like the circle; image 2: circle plain, square dotted
    assert counts == {"right": 1, "other_object": 1, "plain": 1, "elsewhere": 1, "objects": 4}
