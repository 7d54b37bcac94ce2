"""Measuring a text-to-image model: sample fixed prompts, read the images back with the probe.

Imagen compares guidance weights and thresholding modes by CLIP score against FID (Imagen §4.3,
Fig. A.9). Here every number comes from the attribute probe (``minimagen.metrics``):

* **match rates** -- of the caption's objects, how often the probe finds, at the object's position,
  its colour, its shape, both, and its size (and "anywhere": an object of the right colour and shape at
  any position, for a model that draws the right thing in the wrong place);
* **alignment** -- the mean fraction of caption attributes read back (the CLIP-score analogue);
* **Fréchet distance** -- between probe features of the samples and of real renders of the same
  captions (the FID analogue);
* **saturation** -- the fraction of pixels pinned at ±1, what thresholding is for (Imagen §2.3).

Prompts are captions of held-out Shapes scenes (``EVAL_SEED`` is never used for training), so the real
renders of the same scenes are the fidelity reference.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import pathlib
import time
from typing import Iterable, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from minimagen import checks
from minimagen.cascade import Imagen, Stage, SuperResolutionPairs, upsample
from minimagen.checkpoint import atomic_write_bytes, load_unet
from minimagen.data import COLOURS, HELD_OUT_SEED, POSITIONS, Shapes, SHAPES, SIZES, parse_caption
from minimagen.metrics import (
    AttributeProbe,
    alignment,
    downsample_error,
    feature_statistics,
    frechet_distance,
    saturation,
    sharpness,
)
from minimagen.text import TextEncoder
from minimagen.texture import TEXTURE_SIZE, TextureProbe, texture_hits, texture_readings
from minimagen.thresholding import resolve_threshold

EVAL_SEED = HELD_OUT_SEED  # scenes the evaluation prompts come from (data.HELD_OUT_SEED)
THRESHOLD_MODES = ("none", "static", "dynamic")
# The guidance weights of Imagen's thresholding Pareto curves (Fig. A.9).
PAPER_WEIGHTS = (1.0, 1.25, 1.5, 1.75, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def eval_prompts(n: int, seed: int = EVAL_SEED, max_objects: int = 2) -> tuple[list[str], Tensor]:
    """``n`` captions of held-out Shapes scenes and their real 64 px renders [n, 3, 64, 64]."""
    checks.integer("n", n, note="number of prompts")
    scenes = Shapes(size=64, length=n, seed=seed, max_objects=max_objects)
    images, captions = zip(*(scenes[i] for i in range(n)))
    return list(captions), torch.stack(images)


MATCHES = ("colour", "shape", "size", "colour_and_shape", "colour_and_shape_anywhere")


@torch.no_grad()
def object_hits(probe: AttributeProbe, images: Tensor, captions: Sequence[str]) -> dict[str, Tensor]:
    """Per image, how many of its caption's objects the probe reads back, for each of ``MATCHES`` (see
    ``match_rates``), and under "objects" how many objects its caption has: [B] integer tensors."""
    if len(images) != len(captions):
        raise ValueError(f"images and captions must be as many, got {len(images)} and {len(captions)}")
    logits = probe(images)
    read = {name: logits[name].argmax(-1) for name in ("present", "colour", "shape", "size")}  # (B, positions)
    hits = {name: torch.zeros(len(images), dtype=torch.long) for name in MATCHES + ("objects",)}
    for b, text in enumerate(captions):
        for obj in parse_caption(text).objects:
            p = POSITIONS.index(obj.position)
            colour = read["colour"][b] == COLOURS.index(obj.colour)  # (positions,)
            shape = read["shape"][b] == SHAPES.index(obj.shape)
            present = read["present"][b] == 1
            hits["colour"][b] += int(present[p] and colour[p])
            hits["shape"][b] += int(present[p] and shape[p])
            hits["size"][b] += int(present[p] and read["size"][b, p] == SIZES.index(obj.size))
            hits["colour_and_shape"][b] += int(present[p] and colour[p] and shape[p])
            hits["colour_and_shape_anywhere"][b] += int((present & colour & shape).any())
            hits["objects"][b] += 1
    return hits


BINDING_OUTCOMES = ("both right", "both in the first colour", "both in the second colour", "swapped", "other")


@torch.no_grad()
def colour_binding(probe: AttributeProbe, images: Tensor, captions: Sequence[str]) -> dict[str, int]:
    """Does each colour land on its own object? Over the two-object captions whose objects have different
    colours (the others cannot tell a swapped colour from a right one), the colour the probe reads at each
    object's position, counted per caption as one of ``BINDING_OUTCOMES``: both objects right, both painted
    in the first-mentioned object's colour, both in the second's, the two colours swapped, or anything else
    (a colour the caption does not name, a missing object). Also "objects right", "objects in the other
    object's colour" and "objects in neither", counted per object, and "captions": how many were counted.

    The failure it measures is attribute binding, which Imagen's DrawBench probes with its "Colors"
    category: a model that knows which colours a caption names but not which object each belongs to.
    """
    if len(images) != len(captions):
        raise ValueError(f"images and captions must be as many, got {len(images)} and {len(captions)}")
    read = probe(images)["colour"].argmax(-1)  # (B, positions): the colour read at each position
    counts = dict.fromkeys(BINDING_OUTCOMES + ("objects right", "objects in the other object's colour",
                                               "objects in neither", "captions"), 0)
    for b, text in enumerate(captions):
        objects = parse_caption(text).objects
        if len(objects) != 2 or objects[0].colour == objects[1].colour:
            continue
        asked = [COLOURS.index(o.colour) for o in objects]  # [first, second]
        got = [int(read[b, POSITIONS.index(o.position)]) for o in objects]
        outcome = {(asked[0], asked[1]): "both right", (asked[0], asked[0]): "both in the first colour",
                   (asked[1], asked[1]): "both in the second colour", (asked[1], asked[0]): "swapped"}
        counts[outcome.get(tuple(got), "other")] += 1
        for mine, theirs, colour in ((asked[0], asked[1], got[0]), (asked[1], asked[0], got[1])):
            key = ("objects right" if colour == mine else "objects in the other object's colour" if colour == theirs
                   else "objects in neither")
            counts[key] += 1
        counts["captions"] += 1
    return counts


def match_rates(probe: AttributeProbe, images: Tensor, captions: Sequence[str]) -> dict[str, float]:
    """Over every object of every caption: the fraction whose attributes the probe reads back.

    ``colour``, ``shape``, ``size``, ``colour_and_shape`` are read at the object's position;
    ``colour_and_shape_anywhere`` accepts an object of that colour and shape at any position.
    """
    return _rates(object_hits(probe, images, captions))


def _rates(hits: dict[str, Tensor]) -> dict[str, float]:
    """``object_hits`` summed over the images: each of ``MATCHES`` as a fraction of all objects."""
    total = hits["objects"].sum().item()
    return {name: hits[name].sum().item() / total for name in MATCHES}


def rate_se(hits: Tensor, objects: Tensor) -> float:
    """Standard error of the rate sum(hits) / sum(objects) with the images as the sampled units (the objects
    of one image are not independent draws): sqrt(n / (n - 1) * sum_i (hits_i - rate * objects_i)^2) / sum(objects)."""
    n, total = len(hits), objects.sum().item()
    if n < 2:
        return float("nan")
    rate = hits.sum().item() / total
    return (n / (n - 1) * (hits - rate * objects).double().square().sum().item()) ** 0.5 / total


@dataclasses.dataclass
class Measurement:
    """One row of an evaluation: a sampling setting and what the probe reads from its samples."""

    guidance: float
    threshold: str
    steps: int
    n: int
    alignment: float
    alignment_se: float  # standard error of the mean over the n images
    frechet: float
    saturation: float
    colour: float
    shape: float
    size: float
    colour_and_shape: float
    colour_and_shape_anywhere: float
    seconds_per_image: float
    sampler: str = "ddim"  # "ddim" (eta = 0) or "ddpm" (ancestral: eta = 1, fresh noise at each of the steps)
    colour_and_shape_se: float = float("nan")  # over images (rate_se); NaN in CSVs written before it existed
    # Per image, in prompt order: "alignment", "objects" and "colour_and_shape" (its objects read right), so
    # that a subset of the prompts can be compared prompt by prompt (``first_images``). ``write_csv`` keeps
    # them in a companion file (``per_image_path``); None for rows read from a CSV without one.
    per_image: dict[str, list] | None = dataclasses.field(default=None, repr=False, compare=False)

    def first_images(self, k: int) -> dict[str, float]:
        """Alignment and colour & shape (with standard errors) over the first ``k`` prompts alone: what a
        ``k``-prompt run of the same setting measures on the same prompts."""
        checks.integer("k", k)
        if self.per_image is None:
            raise ValueError("this row has no per-image values (a CSV written without its .images.csv companion)")
        if k > self.n:
            raise ValueError(f"k must be at most the row's n = {self.n}, got {k}")
        scores = torch.tensor(self.per_image["alignment"][:k], dtype=torch.float64)
        hits = torch.tensor(self.per_image["colour_and_shape"][:k])
        objects = torch.tensor(self.per_image["objects"][:k])
        return {"n": k, "alignment": scores.mean().item(),
                "alignment_se": scores.std().item() / k**0.5 if k > 1 else float("nan"),
                "colour_and_shape": hits.sum().item() / objects.sum().item(),
                "colour_and_shape_se": rate_se(hits, objects)}

    def paired_with(self, other: "Measurement") -> tuple[float, float, int]:
        """Alignment of this row minus ``other``'s, prompt by prompt (rows over the same prompts and starting
        noise): the mean difference, its standard error, and how many prompts score differently."""
        if self.per_image is None or other.per_image is None or self.n != other.n:
            raise ValueError(f"paired_with needs two rows with per-image values over the same n prompts, got n = "
                             f"{self.n} and {other.n}")
        diff = torch.tensor(self.per_image["alignment"]) - torch.tensor(other.per_image["alignment"])
        return diff.mean().item(), diff.std().item() / len(diff) ** 0.5, int((diff.abs() > 1e-6).sum())

    def __str__(self) -> str:
        return (f"{self.sampler} {self.steps:4d} steps  w={self.guidance:<5g} {self.threshold:<8} alignment "
                f"{self.alignment:.3f} ± {self.alignment_se:.3f}  FD {self.frechet:7.2f}  saturation "
                f"{100 * self.saturation:5.2f}%  colour&shape {self.colour_and_shape:.3f} ± "
                f"{self.colour_and_shape_se:.3f}  "
                f"{self.seconds_per_image:.2f} s/image")


def measure(probe: AttributeProbe, images: Tensor, captions: Sequence[str], real: Tensor, *,
            guidance: float, threshold: str, steps: int, seconds_per_image: float = float("nan"),
            sampler: str = "ddim") -> Measurement:
    """All the numbers for one batch of samples ``images`` of ``captions`` against ``real`` renders."""
    scores = alignment(probe, images, list(captions))  # (n,)
    with torch.no_grad():
        fake_stats = feature_statistics(probe.features(images))
        real_stats = feature_statistics(probe.features(real))
    se = scores.std().item() / len(scores) ** 0.5 if len(scores) > 1 else float("nan")
    hits = object_hits(probe, images, captions)
    return Measurement(
        guidance=guidance, threshold=threshold, steps=steps, n=len(images),
        alignment=scores.mean().item(), alignment_se=se, frechet=frechet_distance(*fake_stats, *real_stats),
        saturation=saturation(images).mean().item(), **_rates(hits),
        seconds_per_image=seconds_per_image, sampler=sampler,
        colour_and_shape_se=rate_se(hits["colour_and_shape"], hits["objects"]),
        per_image={"alignment": [round(v, 6) for v in scores.tolist()], "objects": hits["objects"].tolist(),
                   "colour_and_shape": hits["colour_and_shape"].tolist()},
    )


def sample_in_batches(imagen, captions: Sequence[str], *, guidance: float, threshold: str | None, steps: int,
                      seed: int, batch_size: int = 64, device: str = "cpu", clamp: bool = True,
                      eta: float = 0.0, precision: str = "fp32") -> Tensor:
    """The first stage's samples for ``captions``, ``batch_size`` at a time; batch k uses seed ``seed + k``.

    The same (captions, seed, batch_size) give the same images whatever ``guidance`` or ``threshold`` is,
    up to the sampling itself: every setting of a sweep starts from the same noise.
    ``clamp=False`` keeps values outside [-1, 1], e.g. to show what no thresholding produces.
    ``eta=1`` with ``steps=T`` is DDPM.
    """
    out = []
    for k, first in enumerate(range(0, len(captions), batch_size)):
        part = list(captions[first:first + batch_size])
        x = imagen.sample(part, guidance=guidance, threshold=threshold, steps=steps, seed=seed + k,
                          device=device, progress=False, stages=1, clamp=clamp, eta=eta, precision=precision)[0]
        out.append(x.cpu())
    return torch.cat(out)


def check_modes(modes: Iterable[str]) -> list[str]:
    """Thresholding modes as a sweep labels its rows: "none", "static", "dynamic", or a dynamic threshold with
    its settings, e.g. "dynamic:p=0.9:max_s=2" (``thresholding.resolve_threshold``)."""
    modes = list(modes)
    for mode in modes:
        if not isinstance(mode, str):
            raise ValueError(f"modes must be among {THRESHOLD_MODES} or 'dynamic:p=...:max_s=...', got {mode!r}")
        try:
            resolve_threshold(mode)
        except ValueError as error:
            raise ValueError(f"modes must be among {THRESHOLD_MODES} or 'dynamic:p=...:max_s=...': {error}") from None
    return modes


def _run_settings(imagen, probe, settings, *, n, seed, prompt_seed, max_objects, batch_size, device,
                  progress, precision, done=(), on_row=None) -> list[Measurement]:
    """One Measurement per (guidance, threshold mode, steps, sampler) on the same prompts and noise.

    Rows in ``done`` (an interrupted run's, e.g. read back with ``read_csv``) with the same setting and ``n``
    are kept instead of sampled again; ``on_row(rows)`` is called after each new row, e.g. to save them.
    """
    captions, real = eval_prompts(n, seed=prompt_seed, max_objects=max_objects)
    finished = {(r.guidance, r.threshold, r.steps, r.sampler): r for r in done if r.n == n}
    rows = []
    for w, mode, steps, sampler in tqdm(settings, desc="sweep", disable=not progress):
        if (w, mode, steps, sampler) in finished:
            rows.append(finished[(w, mode, steps, sampler)])
            continue
        start = time.perf_counter()
        images = sample_in_batches(imagen, captions, guidance=w, threshold=mode,
                                   steps=steps, seed=seed, batch_size=batch_size, device=device, clamp=False,
                                   eta=1.0 if sampler == "ddpm" else 0.0, precision=precision)
        per_image = (time.perf_counter() - start) / n
        # The probe reads the image as it would be saved (clamped); saturation counts the values the
        # sampler left at or beyond ±1, which clamping pins to exactly ±1.
        rows.append(measure(probe, images.clamp(-1, 1), captions, real, guidance=w, threshold=mode, steps=steps,
                            seconds_per_image=per_image, sampler=sampler))
        if on_row is not None:
            on_row(rows)
    return rows


def threshold_sweep(imagen, probe: AttributeProbe, *, n: int = 256, weights: Iterable[float] = PAPER_WEIGHTS,
                    modes: Iterable[str] = THRESHOLD_MODES, steps: int = 50, seed: int = 0,
                    prompt_seed: int = EVAL_SEED, max_objects: int = 2, batch_size: int = 64, device: str = "cpu",
                    progress: bool = True, precision: str = "fp32", sampler: str = "ddim", done=(),
                    on_row=None) -> list[Measurement]:
    """Imagen's thresholding experiment (§2.3, Fig. A.9): every guidance weight × thresholding mode.

    The same ``n`` held-out prompts and the same starting noise for every setting, so differences
    between rows come from guidance and thresholding alone. ``sampler="ddpm"`` samples ancestrally
    (DDIM with eta = 1, fresh noise at each of the ``steps`` steps) instead of deterministic DDIM.
    ``done`` and ``on_row`` resume an interrupted sweep (see ``_run_settings``).
    """
    modes = check_modes(modes)
    checks.choice("sampler", sampler, ("ddim", "ddpm"))
    settings = [(float(w), mode, steps, sampler) for w in weights for mode in modes]
    return _run_settings(imagen, probe, settings, n=n, seed=seed, prompt_seed=prompt_seed, max_objects=max_objects,
                         batch_size=batch_size, device=device, progress=progress, precision=precision, done=done,
                         on_row=on_row)


DDIM_STEPS = (250, 100, 50, 25, 10)  # the step counts lesson 08 compares with 1000-step DDPM


def steps_sweep(imagen, probe: AttributeProbe, *, n: int = 256, step_counts: Iterable[int] = DDIM_STEPS,
                modes: Iterable[str] = ("static", "dynamic"), guidance: float = 3.0, ddpm: bool = True,
                ancestral_counts: Iterable[int] = (), seed: int = 0, prompt_seed: int = EVAL_SEED,
                max_objects: int = 2, batch_size: int = 64, device: str = "cpu", progress: bool = True,
                precision: str = "fp32", done=(), on_row=None) -> list[Measurement]:
    """Fast sampling (DDIM §5): ancestral DDPM over all T steps against DDIM with fewer steps, for each
    thresholding mode, at one guidance weight; the same prompts and starting noise throughout.

    ``ancestral_counts`` adds ancestral rows (DDIM with eta = 1, sampler "ddpm") at fewer than T steps,
    to tell the effect of the number of steps from that of the fresh noise DDPM adds at each step.
    """
    modes = check_modes(modes)
    T = imagen.stages[0].schedule.T
    ancestral = ([T] if ddpm else []) + [int(k) for k in ancestral_counts if int(k) != T]
    settings = [(float(guidance), mode, k, "ddpm") for k in ancestral for mode in modes]
    settings += [(float(guidance), mode, int(k), "ddim") for k in step_counts for mode in modes]
    return _run_settings(imagen, probe, settings, n=n, seed=seed, prompt_seed=prompt_seed, max_objects=max_objects,
                         batch_size=batch_size, device=device, progress=progress, precision=precision, done=done,
                         on_row=on_row)


def sr_quality(imagen, stage: str, *, n: int = 16, steps: int = 25, guidance: float = 1.0, aug_level: int = 50,
               threshold: str | None = "static", seed: int = 0, prompt_seed: int = EVAL_SEED, batch_size: int = 8,
               device: str = "cpu", precision: str = "fp32", eta: float = 0.0, progress: bool = True,
               texture_probe: TextureProbe | None = None, inputs: str = "real", base_guidance: float = 3.0,
               base_steps: int = 50) -> dict[str, float]:
    """How good is one SR stage? Run it on low-resolution images of ``n`` held-out scenes and compare with
    bicubic upsampling of the same inputs and with the real high-resolution renders.

    ``inputs="real"`` feeds the real low-resolution renders; ``inputs="generated"`` feeds what the cascade's
    earlier stages draw for the scenes' captions (the base stage at ``base_guidance`` with ``base_steps`` DDIM
    steps and ``threshold``, an SR stage before this one at w = 1 with 25), which is what the stage meets
    in the cascade. Returns means over the scenes, each with
    its standard error (``<name>_se``): ``sharpness`` (mean |Laplacian|) of the SR output, of bicubic and of
    the real render; ``downsample_error`` (RMS difference after area-downsampling back to the input) of SR
    and of bicubic; for real inputs ``rmse_to_real`` of SR and of bicubic; and ``seconds_per_image`` (SR
    only). An SR stage should be much sharper than bicubic (towards the real render) at a small downsample
    error. With a ``texture_probe``, also ``texture`` accuracy (per image, the fraction of its objects whose
    caption texture the probe reads) of SR, bicubic and the real render: from a 64 px input only the text
    can tell the texture; and ``texture_other_object_sr``, the fraction given the pattern the caption asks
    for another object of the scene (``texture.texture_readings``).
    """
    sr = imagen.stage(stage)
    if not sr.is_super_resolution:
        raise ValueError(f"stage {stage!r} is the base model; sr_quality needs a super-resolution stage")
    checks.choice("inputs", inputs, ("real", "generated"))
    index = imagen.stages.index(sr)
    low_size = imagen.stages[index - 1].size
    checks.integer("n", n, note="number of scenes")
    if texture_probe is not None and sr.size % TEXTURE_SIZE:
        raise ValueError(f"texture_probe reads images whose side is a multiple of {TEXTURE_SIZE} px; stage {stage!r} "
                         f"draws {sr.size} px (pass texture_probe=None)")
    pairs = SuperResolutionPairs(low_size, sr.size, length=n, seed=prompt_seed)  # each scene at both sizes
    per_image: dict[str, list[Tensor]] = {}
    sr_seconds = 0.0
    for first in tqdm(range(0, n, batch_size), desc=f"{stage} quality ({inputs} inputs)", disable=not progress):
        idx = range(first, min(first + batch_size, n))
        items = [pairs[i] for i in idx]
        real, low = torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])
        captions = [it[2] for it in items]
        if inputs == "generated":
            low = imagen.sample(captions, stages=index, guidance=[base_guidance] + [1.0] * (index - 1),
                                steps=[base_steps] + [25] * (index - 1), threshold=threshold, seed=seed + first,
                                device=device, progress=False, precision=precision)[-1].cpu()
        start = time.perf_counter()
        out = imagen.super_resolve(low, captions, stage=stage, guidance=guidance, steps=steps, aug_level=aug_level,
                                   threshold=threshold, seed=seed + first, device=device, progress=False,
                                   precision=precision, eta=eta).cpu()
        sr_seconds += time.perf_counter() - start
        bicubic = upsample(low, sr.size)
        values = {
            "sharpness_sr": sharpness(out), "sharpness_bicubic": sharpness(bicubic), "sharpness_real": sharpness(real),
            "downsample_error_sr": downsample_error(out, low), "downsample_error_bicubic": downsample_error(bicubic, low),
        }
        if inputs == "real":  # a generated input is another scene than the real render: no distance to it
            values["rmse_to_real_sr"] = (out - real).square().flatten(1).mean(1).sqrt()
            values["rmse_to_real_bicubic"] = (bicubic - real).square().flatten(1).mean(1).sqrt()
        if texture_probe is not None:
            scenes = [pairs.high.scene(i) for i in idx]
            for name, x in (("texture_sr", out), ("texture_bicubic", bicubic), ("texture_real", real)):
                hits, objects = texture_hits(texture_probe, x, scenes)
                values[name] = hits / objects  # per image: the fraction of its objects read right
            # per image: the fraction of its objects given another object's captioned pattern
            values["texture_other_object_sr"] = torch.tensor(
                [texture_readings(texture_probe, out[i:i + 1], [scene])["other_object"] / len(scene.objects)
                 for i, scene in enumerate(scenes)])
        for name, value in values.items():
            per_image.setdefault(name, []).append(value.float())
    result = {}
    for name, chunks in per_image.items():
        value = torch.cat(chunks)
        result[name] = value.mean().item()
        result[f"{name}_se"] = (value.std() / len(value) ** 0.5).item() if len(value) > 1 else float("nan")
    result["seconds_per_image"] = sr_seconds / n
    return result


_ROW_FIELDS = [f.name for f in dataclasses.fields(Measurement) if f.name != "per_image"]
_SETTING = ("guidance", "threshold", "steps", "sampler")
_PER_IMAGE = ("alignment", "objects", "colour_and_shape")


def per_image_path(path: str | pathlib.Path) -> pathlib.Path:
    """Where ``write_csv`` keeps the rows' per-image values: ``sweep.csv`` -> ``sweep.images.csv``."""
    path = pathlib.Path(path)
    return path.with_name(path.stem + ".images.csv")


def write_csv(rows: Sequence[Measurement], path: str | pathlib.Path, comment: str | None = None) -> pathlib.Path:
    """Rows as CSV (one line per setting), preceded by ``# comment`` lines, e.g. the command that ran; rows
    that carry per-image values also go, one line per image, to ``per_image_path(path)``."""
    buffer = io.StringIO()
    if comment:
        for line in comment.splitlines():
            buffer.write(f"# {line}\n")
    writer = csv.DictWriter(buffer, fieldnames=_ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (round(v, 6) if isinstance(v, float) else v)
                         for k, v in dataclasses.asdict(row).items() if k != "per_image"})
    path = pathlib.Path(path)
    with_images = [row for row in rows if row.per_image is not None]
    if with_images:  # written first: a CSV on disk never points at per-image values that are not there yet
        images = io.StringIO()
        out = csv.writer(images, lineterminator="\n")
        out.writerow(_SETTING + ("image",) + _PER_IMAGE)
        for row in with_images:
            setting = tuple(getattr(row, k) for k in _SETTING)
            for i, values in enumerate(zip(*(row.per_image[k] for k in _PER_IMAGE))):
                out.writerow(setting + (i,) + values)
        atomic_write_bytes(per_image_path(path), images.getvalue().encode())
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def read_csv(path: str | pathlib.Path) -> list[Measurement]:
    """Rows written by ``write_csv`` (comment lines skipped), with their per-image values where the
    companion file is there."""
    types = {f.name: f.type for f in dataclasses.fields(Measurement)}
    lines = [line for line in pathlib.Path(path).read_text().splitlines() if not line.startswith("#")]
    rows = []
    for record in csv.DictReader(lines):
        rows.append(Measurement(**{k: (str(v) if types[k] == "str" else int(v) if types[k] == "int" else float(v))
                                   for k, v in record.items()}))
    companion = per_image_path(path)
    if companion.is_file():
        values: dict[tuple, dict[str, list]] = {}
        for record in csv.DictReader(companion.read_text().splitlines()):
            key = (float(record["guidance"]), record["threshold"], int(record["steps"]), record["sampler"])
            per = values.setdefault(key, {k: [] for k in _PER_IMAGE})
            for k, cast in zip(_PER_IMAGE, (float, int, int)):
                per[k].append(cast(record[k]))
        for row in rows:
            row.per_image = values.get((row.guidance, row.threshold, row.steps, row.sampler))
    return rows


def card_record(path: str | pathlib.Path) -> dict:
    """A CSV written by ``write_csv`` as a model card keeps it (``minimagen export --evaluation``): the
    comment lines that say how it was made, and its rows."""
    lines = pathlib.Path(path).read_text().splitlines()
    return {"made_by": [line[2:] for line in lines if line.startswith("# ")],
            "rows": [{k: v for k, v in dataclasses.asdict(r).items() if k != "per_image"} for r in read_csv(path)]}


def base_imagen(path: str | pathlib.Path, text_encoder=None, device: str = "cpu"):
    """A one-stage ``Imagen`` from a base model's weights file (its card names the text encoder)."""
    unet, header = load_unet(path)
    if unet.config.lowres_channels:
        raise ValueError(f"{str(path)!r} holds a super-resolution U-Net; evaluation needs a base model")
    if text_encoder is None:
        text = header.get("text") or {}
        if "encoder" not in text:
            raise ValueError(f"{str(path)!r} does not record its text encoder; pass text_encoder=")
        text_encoder = TextEncoder(text["encoder"], max_length=text.get("max_length", 32), device=device)
    return Imagen(text_encoder, [Stage(header.get("stage") or "base64", unet, header["schedule"], unet.config.image_size)])


def _mode_colours(rows: Sequence[Measurement]) -> dict[str, str]:
    """A colour per thresholding mode in ``rows``, in order of appearance; the three plain modes keep theirs."""
    fixed = {"none": "tab:red", "static": "tab:orange", "dynamic": "tab:blue"}
    others = iter(["tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:grey"] * 4)
    colours = {}
    for r in rows:
        if r.threshold not in colours:
            colours[r.threshold] = fixed.get(r.threshold) or next(others)
    return colours


def plot_sweep(rows: Sequence[Measurement], title: str | None = None, log_frechet: bool | None = None):
    """Imagen Fig. A.9 on Shapes: alignment against Fréchet distance per thresholding mode (one point per
    guidance weight, labelled), and saturation against the guidance weight. Returns the figure.

    ``log_frechet`` draws the Fréchet distance on a logarithmic axis; None (the default) does so when the
    distances span more than a factor of 10, as when one mode collapses while the others stay close.
    """
    import matplotlib.pyplot as plt

    if log_frechet is not None and not isinstance(log_frechet, bool):
        raise TypeError(f"log_frechet must be True, False or None, got {log_frechet!r}")
    distances = [r.frechet for r in rows if r.frechet > 0]
    if log_frechet is None:
        log_frechet = bool(distances) and max(distances) > 10 * min(distances)

    fig, (pareto, sat) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = _mode_colours(rows)
    for mode in colours:
        mine = sorted((r for r in rows if r.threshold == mode), key=lambda r: r.guidance)
        if not mine:
            continue
        pareto.errorbar([r.frechet for r in mine], [r.alignment for r in mine], yerr=[r.alignment_se for r in mine],
                        marker="o", ms=4, capsize=2, color=colours[mode], label=f"{mode} thresholding")
        for r in mine:
            pareto.annotate(f"{r.guidance:g}", (r.frechet, r.alignment), fontsize=7, xytext=(3, 3),
                            textcoords="offset points", color=colours[mode])
        sat.plot([r.guidance for r in mine], [100 * r.saturation for r in mine], marker="o", ms=4,
                 color=colours[mode], label=f"{mode} thresholding")
    pareto.set_xlabel("Fréchet distance to real renders (probe features; lower is better"
                      + ("; log scale)" if log_frechet else ")"))
    if log_frechet:
        pareto.set_xscale("log")
    pareto.set_ylabel("alignment (fraction of caption attributes read back)")
    pareto.set_title("alignment vs fidelity; labels: guidance weight w")
    pareto.legend(fontsize=8)
    sat.set_xlabel("guidance weight w")
    # The modes differ by orders of magnitude, and a well-trained model saturates no pixel at all at w = 1:
    # logarithmic above 0.01%, linear below, so that zero is drawn.
    sat.set_yscale("symlog", linthresh=0.01)
    sat.set_ylim(bottom=0)
    sat.set_ylabel("saturated pixels (% at ±1; log scale above 0.01%)")
    sat.set_title("saturation vs guidance weight")
    sat.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_steps(rows: Sequence[Measurement], title: str | None = None):
    """Lesson 08's figure: alignment and Fréchet distance against the number of sampling steps, one line per
    sampler and thresholding mode (DDIM solid, ancestral DDPM-style dashed); the T-step DDPM result also
    as a band (± one standard error) across the alignment panel."""
    import matplotlib.pyplot as plt

    fig, (align, fd) = plt.subplots(1, 2, figsize=(11, 4))
    colours = _mode_colours(rows)
    T = max((r.steps for r in rows if r.sampler == "ddpm"), default=None)
    for mode in colours:
        for sampler, style, marker in (("ddim", "-", "o"), ("ddpm", "--", "s")):
            mine = sorted((r for r in rows if r.threshold == mode and r.sampler == sampler), key=lambda r: r.steps)
            if not mine:
                continue
            label = f"{'DDIM (eta = 0)' if sampler == 'ddim' else 'ancestral (eta = 1)'}, {mode}"
            align.errorbar([r.steps for r in mine], [r.alignment for r in mine], yerr=[r.alignment_se for r in mine],
                           marker=marker, ms=4, capsize=2, ls=style, color=colours[mode], label=label)
            fd.plot([r.steps for r in mine], [r.frechet for r in mine], marker=marker, ms=4, ls=style,
                    color=colours[mode], label=label)
            for r in (r for r in mine if sampler == "ddpm" and r.steps == T):
                align.axhspan(r.alignment - r.alignment_se, r.alignment + r.alignment_se, color=colours[mode],
                              alpha=0.15)
                fd.axhline(r.frechet, color=colours[mode], ls=":", lw=0.8)
    for ax in (align, fd):
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps (U-Net calls per image)")
        ax.legend(fontsize=7)
    align.set_ylabel("alignment (fraction of caption attributes read back)")
    fd.set_ylabel("Fréchet distance to real renders (lower is better)")
    align.set_title(f"alignment vs steps (bands: DDPM {T}, ± 1 SE)" if T else "alignment vs steps")
    fd.set_title("fidelity vs steps")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
