"""Noise-conditioning augmentation measured: an SR stage fed flawed inputs at several levels (lesson 09).

Imagen conditions its SR stages on a noised low-resolution input and tells them the level (§2.4, after
Cascaded Diffusion Models, which says cascade quality "relies crucially" on it). To see what that buys,
``augmentation_sweep`` runs one SR stage on four kinds of input for each held-out scene, at each of a list
of sampling levels s:

- ``clean``: the real low-resolution render (what the stage trained on, before augmentation);
- ``grain``: that render plus white noise of standard deviation 0.15 per pixel (fine-scale defects);
- ``blotches``: smooth coloured blotches on its background (``metrics.corrupt`` without grain or shift):
  large-scale defects;
- ``generated``: what the cascade's earlier stages draw for the scene's caption, the case that matters.

Per image it records the output's RMSE to the real high-resolution render (not for generated inputs: they
show another scene), how much of a defect survives (``kept``: the output's downsample error against the
clean input over the defect's own RMS; 1 = the output is as far from the clean input as the flawed input
is, and the floor is not 0 but the stage's own downsample error on clean inputs over the defect, since no
SR output downsamples exactly to its input), the downsample error against the input it was given,
sharpness, and, with a texture probe, texture accuracy (per image, the fraction of its objects read right).
Rows carry means over the scenes and their standard errors. Running it for a stage trained with ``--max-aug-level 1`` (no augmentation) beside the
same recipe with augmentation shows what the augmentation does.
"""

from __future__ import annotations

import csv
import io
import pathlib
from typing import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from minimagen import checks
from minimagen.cascade import SuperResolutionPairs
from minimagen.checkpoint import atomic_write_bytes
from minimagen.data import HELD_OUT_SEED
from minimagen.metrics import corrupt, downsample_error, sharpness
from minimagen.texture import TEXTURE_SIZE, TextureProbe, texture_hits

KINDS = ("clean", "grain", "blotches", "generated")
LEVELS = (0, 50, 150, 250, 400)
METRICS = ("rmse_to_real", "kept", "downsample_error", "sharpness", "texture")
COLOURS = {"clean": "C0", "grain": "C1", "blotches": "C2", "generated": "C3"}  # one per kind, in every panel


def flawed_inputs(clean: Tensor, kinds: Sequence[str], seed: int) -> dict[str, Tensor]:
    """The non-generated kinds of input made from real low-resolution renders ``clean`` [B, 3, h, w]."""
    made = {"clean": clean,
            "grain": (clean + 0.15 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 5))
                      ).clamp(-1, 1),
            "blotches": corrupt(clean, torch.Generator().manual_seed(seed + 6), blotches=0.4, grain=0.0, shift=0)}
    return {kind: made[kind] for kind in kinds if kind in made}


def augmentation_sweep(imagen, stage: str = "sr256", *, levels: Sequence[int] = LEVELS,
                       kinds: Sequence[str] = KINDS, n: int = 16, steps: int = 20, guidance: float = 1.0,
                       seed: int = 0, prompt_seed: int = HELD_OUT_SEED, batch_size: int = 8, device: str = "cpu",
                       precision: str = "fp32", texture_probe: TextureProbe | None = None,
                       base_guidance: float = 3.0, base_steps: int = 50, threshold: str = "static",
                       progress: bool = True) -> list[dict]:
    """One row per (kind, level): ``kind``, ``level``, ``n`` and each of ``METRICS`` (where it applies) with
    its standard error ``<metric>_se`` over the scenes. The inputs of a scene are the same at every level, and
    the SR stage's noise too (``seed``; it is drawn per batch of ``batch_size`` scenes, so keep the batch
    size to repeat a sweep exactly), so differences between levels are the level's."""
    sr = imagen.stage(stage)
    if not sr.is_super_resolution:
        raise ValueError(f"stage {stage!r} is the base model; augmentation_sweep needs a super-resolution stage")
    checks.integer("n", n, note="number of scenes")
    checks.integer("batch_size", batch_size)
    for kind in kinds:
        checks.choice("kinds", kind, KINDS)
    if not levels or not kinds:
        raise ValueError("levels and kinds must each name at least one value")
    if len(set(levels)) != len(levels) or len(set(kinds)) != len(kinds):
        raise ValueError(f"levels and kinds must not repeat a value, got levels {list(levels)} and kinds {list(kinds)}")
    for level in levels:
        checks.integer("levels", level, 0, note=f"augmentation levels in [0, {sr.schedule.T})")
        if level >= sr.schedule.T:
            raise ValueError(f"levels must be below the schedule's T = {sr.schedule.T}, got {level}")
    if texture_probe is not None and sr.size % TEXTURE_SIZE:
        raise ValueError(f"texture_probe reads images whose side is a multiple of {TEXTURE_SIZE} px; stage "
                         f"{stage!r} draws {sr.size} px (pass texture_probe=None)")
    index = imagen.stages.index(sr)
    pairs = SuperResolutionPairs(imagen.stages[index - 1].size, sr.size, length=n, seed=prompt_seed)
    values: dict[tuple[str, int], dict[str, list[Tensor]]] = {}
    firsts = range(0, n, batch_size)
    bar = tqdm(total=len(firsts) * len(kinds) * len(levels), desc=f"{stage} augmentation sweep", disable=not progress)
    for first in firsts:
        idx = range(first, min(first + batch_size, n))
        items = [pairs[i] for i in idx]
        real, clean = torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])
        captions = [it[2] for it in items]
        scenes = [pairs.high.scene(i) for i in idx]
        inputs = flawed_inputs(clean, kinds, seed + first)
        if "generated" in kinds:
            inputs["generated"] = imagen.sample(
                captions, stages=index, guidance=[base_guidance] + [1.0] * (index - 1),
                steps=[base_steps] + [25] * (index - 1), threshold=threshold, seed=seed + first, device=device,
                progress=False, precision=precision)[-1].cpu()
        for kind in kinds:
            z = inputs[kind]
            defect = (z - clean).square().flatten(1).mean(1).sqrt()  # per image
            for level in levels:
                out = imagen.super_resolve(z, captions, stage=stage, guidance=guidance, steps=steps, aug_level=level,
                                           threshold=threshold, seed=seed + first, device=device, progress=False,
                                           precision=precision).cpu()
                row = values.setdefault((kind, level), {})
                measured = {"downsample_error": downsample_error(out, z), "sharpness": sharpness(out)}
                if kind != "generated":
                    measured["rmse_to_real"] = (out - real).square().flatten(1).mean(1).sqrt()
                if kind in ("grain", "blotches"):
                    measured["kept"] = downsample_error(out, clean) / defect.clamp(min=1e-8)
                if texture_probe is not None:
                    hits, objects = texture_hits(texture_probe, out, scenes)
                    measured["texture"] = hits / objects
                for name, value in measured.items():
                    row.setdefault(name, []).append(value.float())
                bar.update(1)
    bar.close()
    rows = []
    for (kind, level), measured in values.items():
        row = {"kind": kind, "level": level, "n": n}
        for name in METRICS:
            if name in measured:
                value = torch.cat(measured[name])
                row[name] = value.mean().item()
                row[f"{name}_se"] = (value.std() / len(value) ** 0.5).item() if len(value) > 1 else float("nan")
        rows.append(row)
    return rows


COLUMNS = ["kind", "level", "n"] + [f"{m}{s}" for m in METRICS for s in ("", "_se")]


def write_sweep(rows: list[dict], path: str | pathlib.Path, comment: str | None = None) -> pathlib.Path:
    """Rows as CSV (blank where a metric does not apply), after ``# comment`` lines (e.g. the command)."""
    buffer = io.StringIO()
    for line in (comment or "").splitlines():
        buffer.write(f"# {line}\n")
    writer = csv.DictWriter(buffer, COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in row.items()})
    path = pathlib.Path(path)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def read_sweep(path: str | pathlib.Path) -> list[dict]:
    """Rows written by ``write_sweep``: numbers as numbers, metrics that do not apply left out."""
    lines = [line for line in pathlib.Path(path).read_text().splitlines() if not line.startswith("#")]
    rows = []
    for record in csv.DictReader(lines):
        row = {"kind": record["kind"], "level": int(record["level"]), "n": int(record["n"])}
        row.update({k: float(v) for k, v in record.items() if k not in row and v != ""})
        rows.append(row)
    return rows


def plot_sweep(rows: list[dict], metric: str, ax, label: str = "", **style) -> None:
    """``metric`` against the level for each kind of input in ``rows``, with ±1 standard error bars."""
    checks.choice("metric", metric, METRICS)
    for kind in dict.fromkeys(r["kind"] for r in rows):
        points = sorted((r["level"], r[metric], r.get(f"{metric}_se", 0.0)) for r in rows
                        if r["kind"] == kind and metric in r)
        if points:
            x, y, se = zip(*points)
            kind_style = {"color": COLOURS[kind], "marker": "o", **style}
            ax.errorbar(x, y, yerr=se, capsize=3, label=f"{label}{kind}", **kind_style)
    ax.set_xlabel("augmentation level s at sampling")
    ax.set_ylabel(metric.replace("_", " "))


def plot_augmentation(rows: list[dict], title: str | None = None, metrics: Sequence[str] | None = None):
    """A figure with one panel per metric (default: those of ``rows`` among RMSE to real, kept and texture)."""
    import matplotlib.pyplot as plt

    metrics = metrics or [m for m in ("rmse_to_real", "kept", "texture") if any(m in r for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.3 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        plot_sweep(rows, metric, ax)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
