"""Measuring a model of real drawings (lesson 14): does a sample of a held-out name look like that drawing?

Shapes has an exact probe because its captions are exact; OpenMoji's are names ("soft ice cream"), and a
sample is right when it looks like the drawing of that name. So the measure is retrieval: a feature
extractor maps images to unit vectors, and a sample of held-out name k scores a hit when, among all the
held-out real drawings, drawing k is its nearest (top-1) or among its five nearest (top-5). Chance is
1/n and 5/n for n drawings. The same features give a Fréchet distance between samples and real drawings.

The extractor, ``DrawingEncoder``, never sees a held-out drawing: it is trained on OpenMoji's training
split by instance discrimination (SimCLR, Chen et al. 2020): two differently spoiled views of each drawing
in a batch (shifted, blurred, grainy, dimmed, as a young model's samples are) must be each other's nearest
among all the views. What it learns is which drawing an image shows, through the flaws, and that carries
over to drawings it never saw.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib
import time
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from minimagen import checks
from minimagen.checkpoint import SHIPPED_DIR, StopWatch, atomic_write_bytes, load_reader, model_card, save_weights
from minimagen.data import OPENMOJI_ATTRIBUTION, OpenMoji
from minimagen.evaluate import check_modes, sample_in_batches
from minimagen.metrics import feature_statistics, frechet_distance

DRAWING_SIZE = 64  # the encoder's input side; larger images are area-averaged down to it


class DrawingEncoder(nn.Module):
    """A small CNN: images [B, 3, 64k, 64k] -> unit feature vectors [B, dim]. Four 3x3 convolutions, each
    followed by GroupNorm, SiLU and a halving (64 -> 4 px), then one linear layer."""

    def __init__(self, width: int = 32, dim: int = 128) -> None:
        super().__init__()
        self.width, self.dim = width, dim
        layers, ch = [], 3
        for out in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.GroupNorm(4, out), nn.SiLU(), nn.AvgPool2d(2)]
            ch = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(ch * 16, dim)

    def forward(self, images: Tensor) -> Tensor:
        side = images.shape[-1]
        if images.ndim != 4 or side % DRAWING_SIZE or images.shape[-2] != side:
            raise ValueError(f"images must be [B, 3, S, S] with S a multiple of {DRAWING_SIZE}, got {list(images.shape)}")
        if side > DRAWING_SIZE:
            images = F.avg_pool2d(images, side // DRAWING_SIZE)
        return F.normalize(self.head(self.body(images).flatten(1)), dim=1)  # (B, dim)


def spoil(images: Tensor, generator: torch.Generator, *, background: float = 1.0, shift: int = 4) -> Tensor:
    """Drawings [B, 3, H, W] with the flaws of generated ones, each at a random strength: a shift of up to
    ``shift`` px per axis (the uncovered border is ``background``), blur, per-pixel grain, and a change of
    contrast and brightness."""
    b, _, h, w = images.shape
    padded = F.pad(images, (shift,) * 4, value=background)  # (B, 3, H + 2s, W + 2s)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b), generator=generator).tolist()
    images = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    amount = torch.rand(b, 4, 1, 1, 1, generator=generator)  # blur, grain, contrast, brightness
    images = images + amount[:, 0] * (blurred - images)
    images = images + 0.1 * amount[:, 1] * torch.randn(images.shape, generator=generator)
    images = images * (1 - 0.3 * amount[:, 2]) + 0.2 * (amount[:, 3] - 0.5)
    return images.clamp(-1, 1)


def contrastive_loss(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent for unit features of two views [B, D] each: every view must pick its partner out of
    the other 2B - 1 views."""
    z = torch.cat([a, b])  # (2B, D)
    similarity = z @ z.T / temperature  # (2B, 2B)
    similarity.fill_diagonal_(float("-inf"))  # a view is not its own partner
    n = len(a)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(similarity, partner)


def train_drawing_encoder(drawings=None, *, steps: int = 2000, batch_size: int = 128, lr: float = 2e-3,
                          temperature: float = 0.1, seed: int = 0, width: int = 32, dim: int = 128,
                          progress: bool = True, state_path=None, time_limit: float | None = None,
                          save_every: int = 100) -> tuple[DrawingEncoder | None, list[float]]:
    """Train a DrawingEncoder on ``drawings`` (default: ``OpenMoji(64)``'s training split, rendered once) by
    instance discrimination between two ``spoil``-ed views; AdamW with a cosine-decayed rate. Returns the
    encoder (eval mode) and its per-step loss.

    ``state_path``: the training state (weights, optimizer, random generator, losses, seconds spent) is written
    there atomically every ``save_every`` steps, at the end, and when ``time_limit`` seconds have passed; the
    same call made again resumes from it (the same steps as an uninterrupted run) and returns at once if it is
    complete. A run stopped by ``time_limit`` returns ``(None, losses so far)``."""
    checks.integer("steps", steps)
    checks.integer("batch_size", batch_size, 2)
    checks.integer("save_every", save_every)
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "temperature": temperature, "seed": seed,
                "width": width, "dim": dim, "drawings": None if drawings is None else len(drawings)}
    state = _load_state(state_path, settings)
    drawings = OpenMoji(DRAWING_SIZE, split="train") if drawings is None else drawings
    images = torch.stack([drawings[i][0] for i in tqdm(range(len(drawings)), desc="rendering drawings",
                                                           disable=not progress)])  # (N, 3, 64, 64)
    background = float(images[:, :, 0, 0].median())  # the corners are background in almost every drawing
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the initial weights, without touching the caller's global RNG
        torch.manual_seed(seed)
        encoder = DrawingEncoder(width, dim)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=1e-4)
    start, losses, seconds = 0, [], 0.0
    if state is not None:
        encoder.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, losses, seconds = state["step"], list(state["losses"]), state["seconds"]
    watch = StopWatch()  # running time: a pause with kill -TSTP is not counted

    def save(step: int) -> None:
        if state_path is not None:
            _save_state(state_path, settings, step, encoder, optimizer, generator, losses, seconds + watch.elapsed())

    bar = tqdm(range(start, steps), desc="drawing encoder", disable=not progress, initial=start, total=steps)
    with watch:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            batch = images[torch.randperm(len(images), generator=generator)[:batch_size]]
            views = [spoil(batch, generator, background=background) for _ in range(2)]
            loss = contrastive_loss(encoder(views[0]), encoder(views[1]), temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            done = step + 1
            if done < steps and time_limit is not None and watch.elapsed() > time_limit:
                save(done)
                bar.close()
                return None, losses
            if done % save_every == 0 or done == steps:
                save(done)
    return encoder.eval(), losses


def _save_state(path, settings: dict, step: int, encoder: DrawingEncoder, optimizer, generator: torch.Generator,
                losses: list[float], seconds: float) -> None:
    buffer = io.BytesIO()
    torch.save({"settings": settings, "step": step, "model": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "losses": losses, "seconds": seconds}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_state(path, settings: dict) -> dict | None:
    """The state a run with ``settings`` left in ``path`` (``None``: no file, a fresh run)."""
    if path is None or not pathlib.Path(path).is_file():
        return None
    state = torch.load(path, weights_only=True)
    if state["settings"] != settings:
        raise ValueError(f"state_path {str(path)!r} holds a run with other settings ({state['settings']}, not "
                         f"{settings}); delete it to start over, or use its settings")
    return state


def training_seconds(state_path) -> float:
    """The training time (seconds, over every resumed part) a run recorded in its state file."""
    return float(torch.load(state_path, weights_only=True)["seconds"])


@torch.no_grad()
def ranks(encoder: DrawingEncoder, images: Tensor, real: Tensor, targets) -> tuple[Tensor, Tensor]:
    """For images [B, 3, S, S] meant to show the drawings ``real[targets[b]]`` ([N, 3, S', S'], the candidates):
    the rank of each image's own drawing among the candidates by feature similarity (1 = the nearest) and the
    index of its nearest candidate, both [B]. What ``retrieval`` summarizes; per image, to look at failures."""
    targets = torch.as_tensor(targets)
    if len(targets) != len(images) or targets.min() < 0 or targets.max() >= len(real):
        raise ValueError(f"targets must give each of the {len(images)} images an index into the {len(real)} "
                         f"candidates, got {targets.tolist()}")
    similarity = encoder(images) @ encoder(real).T  # (B, N)
    own = similarity.gather(1, targets[:, None])  # (B, 1)
    return 1 + (similarity > own).sum(1), similarity.argmax(1)


@torch.no_grad()
def retrieval(encoder: DrawingEncoder, images: Tensor, real: Tensor, targets) -> dict[str, float]:
    """Images [B, 3, S, S] meant to show the drawings ``real[targets[b]]`` ([N, 3, S', S'], the candidates):
    the fraction whose own drawing is the nearest candidate (``top1``) or among the five nearest (``top5``),
    each with its standard error, the mean rank of the right drawing (1 = nearest), and chance (1/N, 5/N)."""
    rank = ranks(encoder, images, real, targets)[0].float()  # (B,)
    out = {"n": len(images), "candidates": len(real), "mean_rank": rank.mean().item(),
           "chance_top1": 1 / len(real), "chance_top5": min(5, len(real)) / len(real)}
    for k in (1, 5):
        hits = (rank <= k).float()
        out[f"top{k}"] = hits.mean().item()
        out[f"top{k}_se"] = (hits.std() / math.sqrt(len(hits))).item() if len(hits) > 1 else float("nan")
    return out


@torch.no_grad()
def held_out_retrieval(encoder: DrawingEncoder, n: int | None = None, seed: int = 0) -> dict[str, float]:
    """How well ``encoder`` tells drawings it never saw apart: ``spoil``-ed views of the first ``n`` held-out
    drawings (one per emoji, no skin-tone variants; all of them by default) retrieved among the clean ones."""
    drawings = OpenMoji(DRAWING_SIZE, split="held_out", skin_tones=False)
    n = len(drawings) if n is None else min(checks.integer("n", n), len(drawings))
    real = torch.stack([drawings[i][0] for i in range(n)])
    background = float(real[:, :, 0, 0].median())
    views = spoil(real, torch.Generator().manual_seed(seed), background=background)
    return retrieval(encoder, views, real, list(range(n)))


@torch.no_grad()
def drawing_frechet(encoder: DrawingEncoder, images: Tensor, real: Tensor) -> float:
    """Fréchet distance between the encoder's features of ``images`` and of ``real`` drawings."""
    return frechet_distance(*feature_statistics(encoder(images)), *feature_statistics(encoder(real)))


def save_drawing_encoder(encoder: DrawingEncoder, path, *, losses: list[float], training: dict, accuracy: dict,
                         eval_n: int) -> None:
    """Ship a drawing encoder (``minimagen drawing-encoder``): fp16 safetensors and its card (which carries
    OpenMoji's attribution and licence: the encoder is trained on the drawings)."""
    config = {"kind": "DrawingEncoder", "width": encoder.width, "dim": encoder.dim, "size": DRAWING_SIZE}
    card = model_card(
        "drawing_encoder", config, sum(p.numel() for p in encoder.parameters()), losses=losses, training=training,
        data={"dataset": "OpenMoji", "split": "train", "size": DRAWING_SIZE, "licence": "CC BY-SA 4.0",
              "attribution": OPENMOJI_ATTRIBUTION},
        held_out_retrieval=accuracy, held_out_drawings=eval_n,
    )
    save_weights(encoder, path, config, card=card, extra={"stage": "drawing_encoder"})


def load_drawing_encoder(path) -> DrawingEncoder:
    """Load an encoder written by ``save_drawing_encoder`` (fp16 on disk, float32 in memory), in eval mode."""
    return load_reader(path, "DrawingEncoder", lambda c: DrawingEncoder(c["width"], c["dim"]))[0]


def held_out_names(n: int | None = None) -> tuple[list[str], Tensor]:
    """The captions and real drawings (at 64 px) of the held-out emojis, one per emoji (no skin-tone
    variants), in a fixed order: the prompts and the candidates of ``guidance_sweep``. ``n`` keeps the first n
    captions (all the drawings stay candidates)."""
    drawings = OpenMoji(DRAWING_SIZE, split="held_out", skin_tones=False)
    n = len(drawings) if n is None else min(checks.integer("n", n, 2, note="a Fréchet distance needs 2 samples"),
                                            len(drawings))
    images, captions = zip(*(drawings[i] for i in range(len(drawings))))
    return list(captions[:n]), torch.stack(images)


@torch.no_grad()
def frechet_reference(encoder: DrawingEncoder, n: int | None = None, seed: int = 0) -> float:
    """A reference for a model's Fréchet distance: ``n`` real drawings of *other* emojis (the training split,
    drawn at random with ``seed``; as many as there are held-out emojis by default) against the held-out
    drawings. A model whose samples of the held-out names looked like real emojis, but not like the named
    ones, would score about this; one that drew the named drawings exactly would score near 0 (at a small n,
    above it: a Fréchet distance between n samples is biased upwards). Compare a sweep's rows with the reference
    at the same n."""
    _, real = held_out_names()
    train = OpenMoji(DRAWING_SIZE, split="train", skin_tones=False)
    n = len(real) if n is None else min(checks.integer("n", n, 2, note="a Fréchet distance needs 2 samples"), len(train))
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return drawing_frechet(encoder, torch.stack([train[i][0] for i in pick]), real)


@torch.no_grad()
def measure_prompts(imagen, encoder: DrawingEncoder, prompts: Sequence[str], targets: Sequence[int], *,
                    guidance: float = 3.0, threshold: str | None = "static", steps: int = 25, eta: float = 1.0,
                    seed: int = 0, batch_size: int = 32, device: str = "cpu", precision: str = "fp32",
                    real: Tensor | None = None) -> tuple[dict, Tensor]:
    """Sample the base stage of ``imagen`` for ``prompts``, each meant to show held-out drawing ``targets[i]``
    (an index into ``held_out_names()``'s drawings, or into ``real``), and score the samples: ``retrieval``
    among all those drawings, ``drawing_frechet`` to them, and ``outside``, the fraction of pixel values the
    sampler left beyond [-1, 1] (the samples are clamped before they are scored). Returns the row (with the
    setting and ``seconds_per_image``) and the clamped samples."""
    if len(prompts) != len(targets) or len(prompts) < 2:
        raise ValueError(f"prompts and targets must be of one length, at least 2 (a Fréchet distance needs 2 samples), "
                         f"got {len(prompts)} and {len(targets)}")
    real = held_out_names()[1] if real is None else real
    index = torch.as_tensor(list(targets))
    if index.is_floating_point() or index.min() < 0 or index.max() >= len(real):
        raise ValueError(f"targets must be indices into the {len(real)} drawings, got {index.tolist()}")
    threshold = "none" if threshold is None else threshold
    start = time.perf_counter()
    images = sample_in_batches(imagen, list(prompts), guidance=guidance, threshold=threshold, steps=steps, seed=seed,
                               batch_size=batch_size, device=device, clamp=False, eta=eta, precision=precision)
    seconds = (time.perf_counter() - start) / len(prompts)
    outside = (images.abs() > 1).flatten(1).float().mean(1)
    images = images.clamp(-1, 1)
    found = retrieval(encoder, images, real, list(targets))
    row = {"guidance": float(guidance), "threshold": threshold, "steps": steps, "eta": eta, "n": len(prompts),
           "candidates": found["candidates"], **{k: found[k] for k in (
               "top1", "top1_se", "top5", "top5_se", "mean_rank", "chance_top1", "chance_top5")},
           "frechet": drawing_frechet(encoder, images, real), "outside": outside.mean().item(),
           "outside_se": (outside.std() / math.sqrt(len(outside))).item(), "seconds_per_image": seconds}
    return row, images


def paraphrased_names(path=None) -> tuple[list[str], list[str], list[int]]:
    """Held-out names said again in other words (``data/openmoji_paraphrases.json``, written by hand): the names,
    their paraphrases and each one's index among ``held_out_names()``'s drawings. A model that reaches the
    same drawing from the paraphrase got there through what the frozen encoder knows of English."""
    path = pathlib.Path(path) if path is not None else SHIPPED_DIR.parent / "openmoji_paraphrases.json"
    table = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    captions, _ = held_out_names()
    unknown = [name for name in table if name not in captions]
    if unknown:
        raise ValueError(f"{str(path)!r} paraphrases names that are not held-out OpenMoji names: {unknown}")
    names = list(table)
    return names, [table[n] for n in names], [captions.index(n) for n in names]


SWEEP_COLUMNS = ("guidance", "threshold", "steps", "eta", "n", "candidates", "top1", "top1_se", "top5", "top5_se",
                 "mean_rank", "chance_top1", "chance_top5", "frechet", "outside", "outside_se", "seconds_per_image")


@torch.no_grad()
def guidance_sweep(imagen, encoder: DrawingEncoder, *, weights: Iterable[float] = (1.0, 3.0, 5.0, 8.0),
                   modes: Iterable[str] = ("static", "dynamic"), n: int | None = None, steps: int = 25,
                   eta: float = 1.0, seed: int = 0, batch_size: int = 32, device: str = "cpu",
                   precision: str = "fp32", progress: bool = True, done: Sequence[dict] = (),
                   on_row=None) -> list[dict]:
    """Imagen's guidance × thresholding experiment (§2.3) on real drawings: the base stage of ``imagen`` draws the
    first ``n`` held-out names (``held_out_names``) at every guidance weight and thresholding mode, from the same
    noise, and each setting is scored by how well the samples find their own drawing among all the held-out
    ones (``retrieval``: top-1, top-5, mean rank, against chance), by the Fréchet distance of their features to
    the held-out drawings' (``drawing_frechet``) and by ``outside``, the fraction of pixel values the sampler
    left beyond [-1, 1] (what thresholding is there to prevent; the images are clamped before they are scored).

    Rows in ``done`` with the same setting and ``n`` are kept instead of sampled again, and ``on_row(rows)``
    is called after each new row, so an interrupted sweep resumes (``minimagen eval drawings`` does both).
    """
    weights = [checks.number("weights", w, 0.0) for w in weights]
    modes = check_modes(modes)
    if not weights or not modes:
        raise ValueError(f"weights and modes must each hold at least one value, got {weights} and {modes}")
    captions, real = held_out_names(n)
    finished = {(r["guidance"], r["threshold"]): r for r in done
                if r["n"] == len(captions) and r["steps"] == steps and r["eta"] == eta}
    rows = []
    for w in tqdm(weights, desc="drawings sweep", disable=not progress):
        for mode in modes:
            if (w, mode) in finished:
                rows.append(finished[(w, mode)])
                continue
            row, _ = measure_prompts(imagen, encoder, captions, list(range(len(captions))), guidance=w,
                                     threshold=mode, steps=steps, eta=eta, seed=seed, batch_size=batch_size,
                                     device=device, precision=precision, real=real)
            rows.append(row)
            if on_row is not None:
                on_row(rows)
    return rows


def write_sweep(rows: Sequence[dict], path, comment: str | None = None) -> pathlib.Path:
    """``guidance_sweep``'s rows as CSV, after ``# comment`` lines (e.g. the command), written atomically."""
    buffer = io.StringIO()
    for line in (comment or "").splitlines():
        buffer.write(f"# {line}\n")
    writer = csv.DictWriter(buffer, SWEEP_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.5f}" if isinstance(row[k], float) and k not in ("guidance", "eta") else row[k])
                         for k in SWEEP_COLUMNS})  # a setting is written exactly, so that a resumed sweep finds it
    path = pathlib.Path(path)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def read_sweep(path) -> list[dict]:
    """Rows written by ``write_sweep``: numbers as numbers."""
    lines = [line for line in pathlib.Path(path).read_text().splitlines() if not line.startswith("#")]
    integers = ("steps", "n", "candidates")
    return [{k: (v if k == "threshold" else int(v) if k in integers else float(v)) for k, v in record.items()}
            for record in csv.DictReader(lines)]


def plot_sweep(rows: Sequence[dict], title: str | None = None):
    """Three panels against the guidance weight, a line per thresholding mode: top-5 retrieval of the named
    drawing (±1 standard error, chance dashed), the Fréchet distance to the held-out drawings, and the
    fraction of pixel values left beyond [-1, 1]."""
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for mode in dict.fromkeys(r["threshold"] for r in rows):
        points = sorted((r for r in rows if r["threshold"] == mode), key=lambda r: r["guidance"])
        w = [r["guidance"] for r in points]
        axes[0].errorbar(w, [r["top5"] for r in points], yerr=[r["top5_se"] for r in points], marker="o",
                         capsize=3, label=mode)
        axes[1].plot(w, [r["frechet"] for r in points], marker="o", label=mode)
        axes[2].plot(w, [r["outside"] for r in points], marker="o", label=mode)
    axes[0].axhline(rows[0]["chance_top5"], color="grey", linestyle="--", label="chance")
    for ax, label in zip(axes, ("top-5 retrieval of the named drawing", "Fréchet distance (drawing features)",
                                "fraction of values beyond ±1")):
        ax.set_xlabel("guidance weight w")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
