"""Reading texture back: the number the super-resolution stages are for (lesson 10).

A Shapes texture repeats every ``TEXTURE_PERIOD`` of the image width: 1 px at 64 px, where it averages to
the plain colour and no model can draw it, 4 px at 256 px and 16 px at 1024 px. So the word "striped" in
a caption can only reach the image through the SR stages, which is why Imagen conditions them on the
text too (Imagen §2.4 and appendix: text cross-attention in the SR models). The attribute probe of
``minimagen.metrics`` reads 64 px images and cannot see texture; the ``TextureProbe`` here reads each
object's texture from a 256 px image. A 1024 px image is area-averaged to 256 px first, which keeps its
texture (4 px periods) but not finer detail: the 1024 px stage is asked whether it keeps the texture the
256 px stage drew, at the scale it was drawn.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from minimagen import checks
from minimagen.checkpoint import load_reader, model_card, save_weights
from minimagen.data import HELD_OUT_SEED, POSITIONS, TEXTURES, Scene, Shapes
from minimagen.metrics import IGNORE, corrupt, fit_attribute_reader

TEXTURE_SIZE = 256  # the probe's input side; larger images are area-averaged down to it


def texture_targets(scene: Scene) -> dict[str, Tensor]:
    """Per-position texture index [len(POSITIONS)] under the key "texture"; IGNORE where no object is."""
    target = torch.full((len(POSITIONS),), IGNORE, dtype=torch.long)
    for obj in scene.objects:
        target[POSITIONS.index(obj.position)] = TEXTURES.index(obj.texture)
    return {"texture": target}


def to_probe_size(images: Tensor) -> Tensor:
    """Images [B, 3, S, S] with S a multiple of 256, area-averaged to [B, 3, 256, 256]."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2] \
            or images.shape[-1] % TEXTURE_SIZE:
        raise ValueError(f"the texture probe reads [B, 3, S, S] images with S a multiple of {TEXTURE_SIZE}, "
                         f"got shape {list(images.shape)}")
    factor = images.shape[-1] // TEXTURE_SIZE
    return F.avg_pool2d(images, factor) if factor > 1 else images


class TextureProbe(nn.Module):
    """A small CNN: image [B, 3, 256k, 256k] -> texture logits [B, positions, len(TEXTURES)].

    The first convolution reads 8x8 patches every 4 px, so each of its outputs sees a whole texture period
    (4 px at 256 px) in any phase; three more convolutions and halvings take its 64x64 map to 8x8, from
    which one linear layer reads every position.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        layers, ch = [nn.Conv2d(3, 2 * width, 8, stride=4, padding=2), nn.SiLU()], 2 * width  # 256 -> 64 px
        for out in (2 * width, 4 * width, 4 * width):  # 64 -> 32 -> 16 -> 8
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.GroupNorm(4, out), nn.SiLU(), nn.AvgPool2d(2)]
            ch = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(ch * 64, len(POSITIONS) * len(TEXTURES))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        h = self.body(to_probe_size(images)).flatten(1)  # (B, 4 * width * 8 * 8)
        return {"texture": self.head(h).view(len(h), len(POSITIONS), len(TEXTURES))}


def texture_loss(logits: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    return F.cross_entropy(logits["texture"].flatten(0, 1), targets["texture"].flatten(), ignore_index=IGNORE)


def train_texture_probe(steps: int = 1500, batch_size: int = 32, lr: float = 2e-3, seed: int = 0, width: int = 16,
                        progress: bool = True) -> tuple[TextureProbe, list[float]]:
    """Train a TextureProbe on 256 px Shapes renders; half of every batch is ``corrupt``-ed (blotches, grain,
    shifts of up to 12 px), as the attribute probe is, so that it reads generated images' objects through
    their flaws. Returns the probe (eval mode) and its per-step loss."""
    def batch_loss(probe, images, targets, generator):
        half = len(images) // 2
        images = torch.cat([images[:half], corrupt(images[half:], generator, shift=12)])
        return texture_loss(probe(images), targets)

    with torch.random.fork_rng(devices=[]):  # the initial weights, without touching the caller's global RNG
        torch.manual_seed(seed)
        probe = TextureProbe(width)
    losses = fit_attribute_reader(probe, batch_loss, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                  desc="texture probe", progress=progress, size=TEXTURE_SIZE, targets=texture_targets)
    return probe.eval(), losses


@torch.no_grad()
def texture_hits(probe: TextureProbe, images: Tensor, scenes: list[Scene]) -> tuple[Tensor, Tensor]:
    """Per image, (objects whose caption texture the probe reads from ``images``, objects): two [B] tensors."""
    if len(images) != len(scenes):
        raise ValueError(f"images and scenes must be as many, got {len(images)} and {len(scenes)}")
    predicted = probe(images)["texture"].argmax(-1)  # (B, positions)
    target = torch.stack([texture_targets(s)["texture"] for s in scenes])  # (B, positions)
    known = target != IGNORE
    return ((predicted == target) & known).sum(1), known.sum(1)


@torch.no_grad()
def texture_readings(probe: TextureProbe, images: Tensor, scenes: list[Scene]) -> dict[str, int]:
    """What the probe reads on each captioned object, counted over ``images``: ``right`` (its captioned
    texture), ``plain`` (no pattern where the caption asks for one), ``other_object`` (a pattern the caption
    gives another object of the same scene, not this one: texture put on the wrong object), ``elsewhere``
    (any other wrong texture), and ``objects``."""
    if len(images) != len(scenes):
        raise ValueError(f"images and scenes must be as many, got {len(images)} and {len(scenes)}")
    predicted = probe(images)["texture"].argmax(-1)  # (B, positions)
    counts = dict.fromkeys(("right", "other_object", "plain", "elsewhere", "objects"), 0)
    for read, scene in zip(predicted.tolist(), scenes):
        for obj in scene.objects:
            got = TEXTURES[read[POSITIONS.index(obj.position)]]
            others = {o.texture for o in scene.objects if o is not obj} - {obj.texture}
            kind = ("right" if got == obj.texture else "plain" if got == "plain"
                    else "other_object" if got in others else "elsewhere")
            counts[kind] += 1
            counts["objects"] += 1
    return counts


def texture_accuracy(probe: TextureProbe, images: Tensor, scenes: list[Scene]) -> float:
    """The fraction of the objects in ``scenes`` whose texture the probe reads correctly from ``images``."""
    hits, objects = texture_hits(probe, images, scenes)
    return (hits.sum() / objects.sum()).item()


def texture_probe_accuracy(probe: TextureProbe, n: int = 500, seed: int = HELD_OUT_SEED,
                           chunk: int = 50) -> dict[str, float]:
    """Held-out accuracy on ``n`` scenes never trained on: 256 px renders clean and corrupted, and 1024 px
    renders (read through the area-average to 256 px), rounded to 4 digits."""
    checks.integer("n", n, note="number of held-out scenes")
    generator = torch.Generator().manual_seed(seed)
    totals = {"256 clean": 0.0, "256 corrupted": 0.0, "1024 clean": 0.0}
    views = {256: Shapes(size=256, length=n, seed=seed), 1024: Shapes(size=1024, length=n, seed=seed)}
    for first in range(0, n, chunk):
        idx = range(first, min(first + chunk, n))
        scenes = [views[256].scene(i) for i in idx]
        x256 = torch.stack([views[256][i][0] for i in idx])
        x1024 = torch.stack([views[1024][i][0] for i in idx])
        for name, x in (("256 clean", x256), ("256 corrupted", corrupt(x256, generator, shift=12)),
                        ("1024 clean", x1024)):
            totals[name] += texture_accuracy(probe, x, scenes) * len(idx) / n
    return {k: round(v, 4) for k, v in totals.items()}


def save_texture_probe(probe: TextureProbe, path, *, losses: list[float], training: dict, accuracy: dict,
                       eval_n: int) -> None:
    """Ship a texture probe (``minimagen texture-probe``): fp16 safetensors and its card."""
    config = {"kind": "TextureProbe", "width": probe.width, "size": TEXTURE_SIZE}
    card = model_card(
        "texture_probe", config, sum(p.numel() for p in probe.parameters()), losses=losses, training=training,
        data={"dataset": "Shapes", "size": TEXTURE_SIZE, "seed": training.get("seed"), "held_out_seed": HELD_OUT_SEED},
        held_out_accuracy=accuracy, held_out_scenes=eval_n,
    )
    save_weights(probe, path, config, card=card, extra={"stage": "texture_probe"})


def load_texture_probe(path) -> TextureProbe:
    """Load a probe written by ``minimagen texture-probe`` (fp16 on disk, float32 in memory), in eval mode."""
    return load_reader(path, "TextureProbe", lambda c: TextureProbe(width=c["width"]))[0]
