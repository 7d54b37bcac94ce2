"""Numbers for "does the image follow the text?" and "does it look real?", on Shapes.

Imagen reports CLIP score (alignment) and FID (fidelity). On Shapes we can do better than a proxy for
alignment: every caption is exact, so a small *probe* network trained on real renders reads each
object's attributes back from an image, and alignment is the fraction of the caption's attributes it
finds. Fidelity is a Fréchet distance between the probe's features of generated and of real images
(FID with the probe in place of Inception). ``saturation`` counts pixels pinned at ±1, the symptom
thresholding is about (Imagen §2.3). For the super-resolution stages, ``sharpness`` (high-frequency
energy, to compare with bicubic upsampling) and ``downsample_error`` (does the output keep the low-res
content?) are the two numbers SR3 needs: detail added, content kept.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from minimagen.checkpoint import load_reader, model_card, save_weights
from minimagen.data import BACKGROUND, COLOURS, HELD_OUT_SEED, POSITIONS, Scene, Shapes, SHAPES, SIZES, parse_caption

# What the probe reads at each position: is there an object, and if so its colour, shape and size.
# (Texture is invisible at 64 px by design, so the 64 px probe does not read it.)
HEADS = {"present": 2, "colour": len(COLOURS), "shape": len(SHAPES), "size": len(SIZES)}
IGNORE = -100  # target of an attribute at an empty position (cross_entropy skips it)


def saturation(images: Tensor, tol: float = 1e-3) -> Tensor:
    """Fraction of pixel values at ±1 (within ``tol``), per image: [B]. Real Shapes renders score 0."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {list(images.shape)}")
    return (images.abs() >= 1 - tol).flatten(1).float().mean(1)


def laplacian(images: Tensor) -> Tensor:
    """The discrete Laplacian of each channel, [B, C, H-2, W-2] (no padding, so no border artefacts)."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {list(images.shape)}")
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=images.dtype,
                          device=images.device)
    c = images.shape[1]
    return F.conv2d(images, kernel.expand(c, 1, 3, 3), groups=c)


def sharpness(images: Tensor) -> Tensor:
    """Mean absolute discrete Laplacian per image ([B]): the energy at the highest spatial frequencies.

    A bicubic upsampling scores far below a real render of the same size (its edges are ramps); an
    SR stage should close that gap. Compare images of the same size only: the value falls with size.
    """
    return laplacian(images).abs().flatten(1).mean(1)


def downsample_error(highres: Tensor, lowres: Tensor) -> Tensor:
    """Root-mean-square difference between ``highres`` area-downsampled to ``lowres``'s size and
    ``lowres`` ([B]): how well an upsampled image keeps the content it was conditioned on (0 = exactly)."""
    if highres.ndim != 4 or lowres.ndim != 4 or highres.shape[:2] != lowres.shape[:2]:
        raise ValueError(f"highres and lowres must be [B, C, H, W] with the same B and C, got "
                         f"{list(highres.shape)} and {list(lowres.shape)}")
    if highres.shape[-1] % lowres.shape[-1] or highres.shape[-1] < lowres.shape[-1]:
        raise ValueError(f"highres size {highres.shape[-1]} must be a multiple of lowres size {lowres.shape[-1]}")
    down = F.interpolate(highres, size=lowres.shape[-2:], mode="area")
    return (down - lowres).square().flatten(1).mean(1).sqrt()


def scene_targets(scene: Scene) -> dict[str, Tensor]:
    """Per-position class indices [len(POSITIONS)] for each head; IGNORE where no object is."""
    targets = {name: torch.full((len(POSITIONS),), IGNORE, dtype=torch.long) for name in HEADS}
    targets["present"].zero_()
    for obj in scene.objects:
        p = POSITIONS.index(obj.position)
        targets["present"][p] = 1
        targets["colour"][p] = COLOURS.index(obj.colour)
        targets["shape"][p] = SHAPES.index(obj.shape)
        targets["size"][p] = SIZES.index(obj.size)
    return targets


class AttributeProbe(nn.Module):
    """A small CNN: image [B, 3, 64, 64] -> logits [B, positions, classes] per head, and a feature vector."""

    def __init__(self, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.width, self.feature_dim = width, feature_dim
        layers, ch = [], 3
        for out in (width, 2 * width, 4 * width, 4 * width):  # 64 -> 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU(), nn.AvgPool2d(2)]
            ch = out
        self.body = nn.Sequential(*layers)
        self.features_head = nn.Sequential(nn.Flatten(), nn.Linear(ch * 16, feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(POSITIONS) * k) for name, k in HEADS.items()})

    def features(self, images: Tensor) -> Tensor:
        """The penultimate activations [B, feature_dim], used for the Fréchet distance."""
        if images.ndim != 4 or images.shape[1:] != (3, 64, 64):
            raise ValueError(f"the probe reads [B, 3, 64, 64] images, got shape {list(images.shape)}")
        return self.features_head(self.body(images))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        h = self.features(images)
        return {name: head(h).view(len(h), len(POSITIONS), -1) for name, head in self.heads.items()}


def probe_loss(logits: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    """Sum over heads of the cross-entropy, attributes of empty positions ignored."""
    return sum(F.cross_entropy(logits[n].flatten(0, 1), targets[n].flatten(), ignore_index=IGNORE) for n in HEADS)


@torch.no_grad()
def attribute_accuracy(reader, images: Tensor, scenes: list[Scene]) -> dict[str, float]:
    """Per head, the fraction of (position, attribute) targets read correctly from ``images`` by ``reader``
    (the probe, or any ``images -> {head: logits}`` callable, e.g. a noisy classifier at a fixed t)."""
    logits = reader(images)
    targets = [scene_targets(s) for s in scenes]
    result = {}
    for name in HEADS:
        target = torch.stack([t[name] for t in targets])  # (B, positions)
        known = target != IGNORE
        result[name] = (logits[name].argmax(-1)[known] == target[known]).float().mean().item()
    return result


@torch.no_grad()
def alignment(probe: AttributeProbe, images: Tensor, captions: list[str]) -> Tensor:
    """Per image, the fraction of the caption's attributes the probe reads back ([B], in [0, 1]).

    For every object of the caption: is something at its position, with its colour, shape and size
    (4 checks per object). The analogue of Imagen's CLIP score, but exact.
    """
    scenes = [parse_caption(c) for c in captions]
    logits = probe(images)
    scores = []
    for b, scene in enumerate(scenes):
        target = scene_targets(scene)
        hits = total = 0
        for p in (POSITIONS.index(o.position) for o in scene.objects):
            for name in HEADS:
                hits += int(logits[name][b, p].argmax() == target[name][p])
                total += 1
        scores.append(hits / total)
    return torch.tensor(scores)


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean [D] and covariance [D, D] of features [N, D], in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {list(features.shape)}")
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) (Heusel et al. 2017, the FID formula).

    The matrix square root is taken of the symmetric form S1^1/2 S2 S1^1/2 (same trace as (S1 S2)^1/2)
    through eigendecompositions, which stays real and stable.
    """
    def sqrt_psd(m: Tensor) -> Tensor:
        values, vectors = torch.linalg.eigh(m)
        return (vectors * values.clamp(min=0).sqrt()) @ vectors.T

    root1 = sqrt_psd(sigma1.double())
    middle = sqrt_psd(root1 @ sigma2.double() @ root1)
    d = (mu1.double() - mu2.double()).square().sum() + torch.trace(sigma1.double() + sigma2.double() - 2 * middle)
    return float(d)


def corrupt(images: Tensor, generator: torch.Generator, blotches: float = 0.3, grain: float = 0.08,
            shift: int = 3) -> Tensor:
    """Real renders with the artefacts of a young model's samples: smooth coloured blotches on the
    background, per-pixel grain, and objects a few pixels off their slot. Each image gets a random
    strength in [0, blotches] and [0, grain] and a random shift in [-shift, shift] pixels per axis.

    The probe trains on these as well as on clean renders, so that it reads a sample's objects through
    a noisy background instead of confusing "drawn badly" with "drawn wrong"; fidelity is the Fréchet
    distance's business, alignment the probe's.
    """
    b, _, h, w = images.shape
    background_value = 2 * BACKGROUND - 1  # in [-1, 1]
    if shift:
        padded = F.pad(images, (shift,) * 4, value=background_value)  # (B, 3, H + 2s, W + 2s)
        dy, dx = torch.randint(0, 2 * shift + 1, (2, b), generator=generator).tolist()
        images = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    background = ((images - background_value).abs() < 0.02).all(1, keepdim=True)  # (B, 1, H, W)
    coarse = torch.randn(b, 3, 8, 8, generator=generator)
    smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)  # (B, 3, H, W)
    amount = torch.rand(b, 2, 1, 1, generator=generator) * torch.tensor([blotches, grain]).view(1, 2, 1, 1)
    noisy = images + background * smooth * amount[:, :1] + torch.randn(images.shape, generator=generator) * amount[:, 1:]
    return noisy.clamp(-1, 1)


def fit_attribute_reader(model: nn.Module, batch_loss, *, steps: int, batch_size: int, lr: float, seed: int,
                         desc: str, progress: bool = True, size: int = 64, targets=scene_targets) -> list[float]:
    """The training loop shared by the probes and lesson 06's noisy classifier: draw ``batch_size`` Shapes
    scenes (``size`` px renders and their per-position ``targets``, a dict of [positions] tensors per scene),
    take one AdamW step on ``batch_loss(model, images, targets, generator)``, decay the learning rate on a
    cosine.

    ``generator`` (seeded with ``seed``) draws the scenes and is handed on for any other randomness
    (corruption, noise levels), so a seed fixes the whole run. Returns the per-step loss.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    data = Shapes(size=size, length=10_000_000, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress):
        idx = torch.randint(len(data), (batch_size,), generator=generator).tolist()
        images = torch.stack([data[i][0] for i in idx])  # (B, 3, size, size)
        per_scene = [targets(data.scene(i)) for i in idx]
        batch_targets = {name: torch.stack([t[name] for t in per_scene]) for name in per_scene[0]}
        loss = batch_loss(model, images, batch_targets, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay.step()
        losses.append(loss.item())
    return losses


def train_probe(steps: int = 3000, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                progress: bool = True) -> tuple[AttributeProbe, list[float]]:
    """Train an AttributeProbe on 64 px Shapes renders (AdamW, cosine learning-rate decay); half of
    every batch is ``corrupt``-ed so that samples with noisy backgrounds are read as well as renders.

    Returns the probe (eval mode) and its per-step loss. Evaluate it on another seed's scenes.
    """
    def batch_loss(probe, images, targets, generator):
        half = len(images) // 2
        images = torch.cat([images[:half], corrupt(images[half:], generator)])
        return probe_loss(probe(images), targets)

    with torch.random.fork_rng(devices=[]):  # the initial weights, without touching the caller's global RNG
        torch.manual_seed(seed)
        probe = AttributeProbe()
    losses = fit_attribute_reader(probe, batch_loss, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                  desc="probe", progress=progress)
    return probe.eval(), losses


def probe_accuracy(probe: AttributeProbe, n: int = 1000, seed: int = HELD_OUT_SEED,
                   chunk: int = 250) -> dict[str, dict[str, float]]:
    """The probe's accuracy per head on ``n`` held-out scenes, clean and ``corrupt``-ed (rounded to 4 digits)."""
    held_out = Shapes(size=64, length=n, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    accuracy: dict[str, dict[str, float]] = {"clean": {}, "corrupted": {}}
    for first in range(0, n, chunk):
        idx = range(first, min(first + chunk, n))
        images = torch.stack([held_out[i][0] for i in idx])
        scenes = [held_out.scene(i) for i in idx]
        for kind, x in (("clean", images), ("corrupted", corrupt(images, generator))):
            for name, value in attribute_accuracy(probe, x, scenes).items():  # weight each chunk by its size
                accuracy[kind][name] = accuracy[kind].get(name, 0.0) + value * len(idx) / n
    return {kind: {k: round(v, 4) for k, v in table.items()} for kind, table in accuracy.items()}


def save_probe(probe: AttributeProbe, path, *, losses: list[float], training: dict, accuracy: dict,
               eval_n: int) -> None:
    """Ship a probe (``minimagen probe``): fp16 safetensors and a card with its training run (``training``:
    command, seed, steps, wall time, ...) and its held-out ``accuracy`` on ``eval_n`` scenes."""
    config = {"kind": "AttributeProbe", "width": probe.width, "feature_dim": probe.feature_dim}
    card = model_card(
        "probe", config, sum(p.numel() for p in probe.parameters()), losses=losses, training=training,
        data={"dataset": "Shapes", "size": 64, "seed": training.get("seed"), "held_out_seed": HELD_OUT_SEED},
        held_out_accuracy=accuracy, held_out_images=eval_n,
    )
    save_weights(probe, path, config, card=card, extra={"stage": "probe"})


def load_probe(path) -> AttributeProbe:
    """Load a probe written by ``minimagen probe`` (fp16 on disk, float32 in memory), in eval mode."""
    return load_reader(path, "AttributeProbe",
                       lambda c: AttributeProbe(width=c["width"], feature_dim=c["feature_dim"]))[0]
