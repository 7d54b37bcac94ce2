"""Imagen's text-encoder finding at toy scale (Imagen §4.4; lesson 12): does a frozen pretrained language
model make a better text encoder than one trained from scratch, and where?

Shapes captions are exact, so the probe can score an image against what its caption *means*. Four
prompt sets ask different things of the encoder:

* ``held-out``: captions of held-out scenes in the training grammar, what every encoder saw the like of;
* ``compositions``: scenes whose objects all have a colour-shape pair held out of training
  (``data.HELD_OUT_COLOUR_SHAPES``; for models trained with ``--hold-out-colour-shapes``);
* ``synonyms``: held-out scenes said in words the captions never use (``data.paraphrase``);
* ``reordered``: the caption's own words in another order.

Each model is sampled on each set and scored against the scenes; several training seeds per encoder
give a confidence interval over seeds (``summarize``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import pathlib
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from minimagen import checks
from minimagen.cascade import upsample
from minimagen.checkpoint import atomic_write_bytes
from minimagen.data import HELD_OUT_COLOUR_SHAPES, HELD_OUT_SEED, Shapes, caption, paraphrase, render
from minimagen.evaluate import base_imagen, measure, sample_in_batches
from minimagen.metrics import AttributeProbe, alignment

PROMPT_SETS = ("held-out", "compositions", "synonyms", "reordered")
PROBE_SIZE = 64  # the probe reads 64 px images; a smaller model's samples are upsampled to it


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """What a model is asked (``prompts``) and what its images are scored against (``captions``, in the
    training grammar, with the ``real`` 64 px renders of the same scenes)."""

    name: str
    prompts: list[str]
    captions: list[str]
    real: Tensor  # [n, 3, 64, 64]


def prompt_set(name: str, n: int, seed: int = HELD_OUT_SEED) -> PromptSet:
    """``n`` held-out scenes for one of ``PROMPT_SETS`` (the same scenes for held-out, synonyms and reordered)."""
    checks.choice("name", name, PROMPT_SETS)
    checks.integer("n", n, note="number of prompts")
    pairs = HELD_OUT_COLOUR_SHAPES if name == "compositions" else None
    scenes = Shapes(PROBE_SIZE, length=n, seed=seed, colour_shapes=pairs)
    scene_list = [scenes.scene(i) for i in range(n)]
    captions = [caption(s) for s in scene_list]
    if name in ("synonyms", "reordered"):
        rng = np.random.default_rng([seed, PROMPT_SETS.index(name)])  # which synonym: fixed per set
        prompts = [paraphrase(s, name, rng) for s in scene_list]
    else:
        prompts = list(captions)
    real = torch.stack([render(s, PROBE_SIZE) for s in scene_list])
    return PromptSet(name, prompts, captions, real)


@dataclasses.dataclass
class EncoderRow:
    """One model (an encoder and a training seed) on one prompt set."""

    encoder: str
    model: str  # the weights file
    prompt_set: str
    n: int
    alignment: float
    alignment_se: float
    colour_and_shape: float
    colour_and_shape_se: float
    frechet: float
    guidance: float = 3.0  # the classifier-free guidance weight it was sampled at


def measure_model(path: str | pathlib.Path, encoder: str, probe: AttributeProbe, sets: Sequence[PromptSet], *,
                  guidance: float = 3.0, steps: int = 25, eta: float = 1.0, threshold: str = "static", seed: int = 0,
                  batch_size: int = 64, precision: str = "fp32", device: str = "cpu") -> list[EncoderRow]:
    """One row per prompt set for the base model in ``path`` (its card names its text encoder) at guidance
    weight ``guidance``; every model starts from the same noise for the same set, whatever the weight."""
    imagen = base_imagen(path, device=device)
    rows = []
    for ps in sets:
        images = sample_in_batches(imagen, ps.prompts, guidance=guidance, threshold=threshold, steps=steps, seed=seed,
                                   batch_size=batch_size, device=device, eta=eta, precision=precision)
        if images.shape[-1] != PROBE_SIZE:
            images = upsample(images, PROBE_SIZE)
        m = measure(probe, images, ps.captions, ps.real, guidance=guidance, threshold=threshold, steps=steps)
        rows.append(EncoderRow(encoder, str(path), ps.name, len(ps.prompts), m.alignment, m.alignment_se,
                               m.colour_and_shape, m.colour_and_shape_se, m.frechet, float(guidance)))
    return rows


def mismatched_alignment(probe: AttributeProbe, ps: PromptSet) -> float:
    """What an image that ignores its prompt scores: the set's real renders against the caption of the next
    scene in the set (the floor of the alignment scale for these scenes)."""
    shifted = list(ps.captions[1:]) + list(ps.captions[:1])
    return alignment(probe, ps.real, shifted).mean().item()


# Two-sided 95% quantiles of Student's t for 1 to 10 degrees of freedom (an interval over a few seeds).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _seed_values(rows: Sequence[EncoderRow], value: str) -> dict[tuple[str, str, float], list[float]]:
    """``value`` of each model, grouped by (encoder, prompt set, guidance weight) in order of appearance: one
    entry per seed."""
    groups: dict[tuple[str, str, float], list[float]] = {}
    for r in rows:
        groups.setdefault((r.encoder, r.prompt_set, r.guidance), []).append(getattr(r, value))
    return groups


def _mean_and_sq_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean of a few seeds' values and its squared standard error (NaN with one value)."""
    k = len(values)
    mean = sum(values) / k
    return mean, (sum((v - mean) ** 2 for v in values) / (k - 1) / k if k > 1 else float("nan"))


def summarize(rows: Sequence[EncoderRow], value: str = "alignment") -> list[dict]:
    """Per (encoder, prompt set, guidance weight): the mean of ``value`` over the encoder's models (training
    seeds) and a 95% confidence interval over them (Student's t; NaN with one seed), in order of appearance."""
    out = []
    for (encoder, name, guidance), values in _seed_values(rows, value).items():
        k = len(values)
        mean, sq_se = _mean_and_sq_se(values)
        half = _T95[min(k - 1, len(_T95)) - 1] * math.sqrt(sq_se) if k > 1 else float("nan")
        out.append({"encoder": encoder, "prompt_set": name, "guidance": guidance, "seeds": k, value: mean,
                    "ci95": half})
    return out


def at_guidance(rows: Sequence[EncoderRow], guidance: float | None = None) -> list[EncoderRow]:
    """The rows sampled at guidance weight ``guidance``; ``None``: the rows' only weight (a ``ValueError`` if
    they hold several)."""
    weights = sorted({r.guidance for r in rows})
    if guidance is None:
        if len(weights) > 1:
            raise ValueError(f"guidance: the rows hold several guidance weights {weights}; name one")
        return list(rows)
    if float(guidance) not in weights:
        raise ValueError(f"guidance must be one of the rows' weights {weights}, got {guidance!r}")
    return [r for r in rows if r.guidance == float(guidance)]


def compare(rows: Sequence[EncoderRow], first: str, second: str, prompt_set: str,
            value: str = "alignment", guidance: float | None = None) -> dict:
    """How much ``first``'s models beat ``second``'s on one prompt set (at one guidance weight, see
    ``at_guidance``): the difference of their means over training seeds and a 95% interval for it (Welch's t,
    its degrees of freedom rounded down, so the interval errs wide). Each encoder needs at least two seeds."""
    rows = at_guidance(rows, guidance)
    seeds = _seed_values(rows, value)
    weight = rows[0].guidance if rows else None
    groups = []
    for encoder in (first, second):
        values = seeds.get((encoder, prompt_set, weight), [])
        if len(values) < 2:
            raise ValueError(f"compare needs at least two seeds of {encoder!r} on {prompt_set!r}, got {len(values)}")
        groups.append((*_mean_and_sq_se(values), len(values)))
    (mean_a, var_a, k_a), (mean_b, var_b, k_b) = groups
    se = math.sqrt(var_a + var_b)
    if se == 0:
        return {"difference": mean_a - mean_b, "ci95": 0.0, "df": k_a + k_b - 2}
    df = se ** 4 / (var_a ** 2 / (k_a - 1) + var_b ** 2 / (k_b - 1))  # Welch-Satterthwaite
    df = max(1, min(int(df + 1e-9), len(_T95)))  # (the tolerance keeps an exact 2 from rounding to 1)
    return {"difference": mean_a - mean_b, "ci95": _T95[df - 1] * se, "df": df}


_FIELDS = [f.name for f in dataclasses.fields(EncoderRow)]


def write_rows(rows: Sequence[EncoderRow], path: str | pathlib.Path, comment: str | None = None) -> pathlib.Path:
    """Rows as CSV, after ``# comment`` lines (e.g. the command that made them)."""
    buffer = io.StringIO()
    for line in (comment or "").splitlines():
        buffer.write(f"# {line}\n")
    writer = csv.DictWriter(buffer, fieldnames=_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in dataclasses.asdict(r).items()})
    atomic_write_bytes(path, buffer.getvalue().encode())
    return pathlib.Path(path)


def read_comment(path: str | pathlib.Path) -> list[str]:
    """The ``# comment`` lines ``write_rows`` put before the rows, without their ``# ``."""
    lines = pathlib.Path(path).read_text().splitlines()
    return [line[2:] if line.startswith("# ") else line[1:] for line in lines if line.startswith("#")]


def read_rows(path: str | pathlib.Path) -> list[EncoderRow]:
    """Rows written by ``write_rows``."""
    lines = [line for line in pathlib.Path(path).read_text().splitlines() if not line.startswith("#")]
    types = {f.name: f.type for f in dataclasses.fields(EncoderRow)}
    return [EncoderRow(**{k: int(v) if types[k] == "int" else float(v) if types[k] == "float" else v
                          for k, v in record.items()}) for record in csv.DictReader(lines)]


def plot_encoders(rows: Sequence[EncoderRow], title: str | None = None, floor: float | None = None):
    """Alignment per prompt set, one bar per encoder (the mean over its seeds, with its 95% interval) and a
    dot per seed; ``floor``, if given, is drawn as a dashed line (e.g. real images scored against another
    scene's caption). Returns the figure."""
    import matplotlib.pyplot as plt

    table = summarize(at_guidance(rows))
    encoders = list(dict.fromkeys(r["encoder"] for r in table))
    sets = list(dict.fromkeys(r["prompt_set"] for r in table))
    fig, ax = plt.subplots(figsize=(2.6 + 1.6 * len(sets), 3.6))
    width = 0.8 / len(encoders)
    for i, encoder in enumerate(encoders):
        mine = {r["prompt_set"]: r for r in table if r["encoder"] == encoder}
        xs = [j + (i - (len(encoders) - 1) / 2) * width for j in range(len(sets))]
        bars = ax.bar(xs, [mine[s]["alignment"] for s in sets], width, label=encoder,
                      yerr=[0 if math.isnan(mine[s]["ci95"]) else mine[s]["ci95"] for s in sets], capsize=3,
                      error_kw={"elinewidth": 1})
        for x, name in zip(xs, sets):
            seeds = [r.alignment for r in rows if r.encoder == encoder and r.prompt_set == name]
            ax.plot([x] * len(seeds), seeds, "o", ms=3, color="black", alpha=0.6,
                    markerfacecolor=bars.patches[0].get_facecolor())
    if floor is not None:
        ax.axhline(floor, color="grey", ls="--", lw=1, label="caption of another scene")
    ax.set_xticks(range(len(sets)), sets)
    ax.set_xlabel("prompt set")
    ax.set_ylabel("alignment (probe)\nmean over seeds, 95% CI, dots: seeds")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_guidance(rows: Sequence[EncoderRow], title: str | None = None):
    """Imagen's Fig. 4 trade-off: per prompt set, alignment against Fréchet distance as the guidance weight
    grows, one colour per name (encoder or U-Net): a bold curve through the means over the name's seeds,
    each point labelled with its weight, and a thin curve per seed (the spread between seeds, where an
    interval over three seeds would cover the plot). Up and to the left is better. Returns the figure."""
    import matplotlib.pyplot as plt

    alignments, frechets = summarize(rows, "alignment"), summarize(rows, "frechet")
    sets = list(dict.fromkeys(r["prompt_set"] for r in alignments))
    names = list(dict.fromkeys(r["encoder"] for r in alignments))
    fig, axes = plt.subplots(1, len(sets), figsize=(1.2 + 3.6 * len(sets), 3.6), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for i, encoder in enumerate(names):
            mine = [r for r in rows if r.encoder == encoder and r.prompt_set == name]
            for model in dict.fromkeys(r.model for r in mine):  # one thin curve per seed
                curve = sorted((r.guidance, r.frechet, r.alignment) for r in mine if r.model == model)
                ax.plot([c[1] for c in curve], [c[2] for c in curve], lw=0.7, alpha=0.35, color=f"C{i}")
            points = sorted(((f["guidance"], f["frechet"], a["alignment"]) for f, a in zip(frechets, alignments)
                             if a["encoder"] == encoder and a["prompt_set"] == name))
            if not points:
                continue
            seeds = len({r.model for r in mine})
            ax.plot([p[1] for p in points], [p[2] for p in points], "o-", ms=4, lw=1.8, color=f"C{i}",
                    label=f"{encoder} ({seeds} seed{'s' if seeds > 1 else ''})")
            for w, x, y in points:
                ax.annotate(f"{w:g}", (x, y), textcoords="offset points", xytext=(4, -9 + 12 * i), fontsize=7,
                            color=f"C{i}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("Fréchet distance to real renders (probe features)\n(lower: closer to the data)")
        ax.set_ylabel("alignment (probe)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title="bold: mean; thin: seeds;\n"
                       "numbers: w", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
