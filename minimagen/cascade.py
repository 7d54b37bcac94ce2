"""The cascade's super-resolution inputs: upsampling and noise-conditioning augmentation.

Imagen's super-resolution stages (64->256, 256->1024) are diffusion U-Nets conditioned on the smaller
image, which is upsampled to the stage's size and concatenated with x_t (SR3, Saharia et al. 2021).
During training the small image is a downsampled real image; at sampling it is the previous stage's
*generated* image, with its own artefacts. Noise-conditioning augmentation (Imagen §2.4, after Ho et al.
2021, "Cascaded diffusion models") closes that gap: the small image is corrupted by the forward process
at a random level, and the U-Net is told the level, so it learns to trust the input less the noisier it
is. At sampling a fixed small level is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from minimagen import checks
from minimagen.checkpoint import (TrainingState, atomic_write_bytes, list_checkpoints, load_state_strict, load_unet,
                                  read_weights, save_weights)
from minimagen.data import (ALL_COLOUR_SHAPES, HELD_OUT_COLOUR_SHAPES, OPENMOJI_ATTRIBUTION, TEXTURES, ImageCaptionFolder,
                            OpenMoji, Shapes, openmoji_source)
from minimagen.guidance import guided_model_fn
from minimagen.samplers import ddim_sample
from minimagen.schedules import NoiseSchedule, schedule_from_spec
from minimagen.text import TEXT_MODELS, TextEncoder, sha256_file
from minimagen.train import TrainConfig, Trainer
from minimagen.unet import PRESETS, UNet, UNetConfig


def upsample(lowres: Tensor, size: int) -> Tensor:
    """Bicubic upsampling of [B, 3, h, w] to [B, 3, size, size], clipped back to [-1, 1]."""
    if lowres.ndim != 4:
        raise ValueError(f"lowres must be [B, 3, h, w], got shape {list(lowres.shape)}")
    if size < lowres.shape[-1]:
        raise ValueError(f"size {size} is smaller than the low-resolution image ({lowres.shape[-1]} px)")
    # bicubic overshoots at sharp edges; the clip keeps the input inside the data range
    return F.interpolate(lowres, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def noise_augment(lowres: Tensor, aug_level: Tensor, schedule: NoiseSchedule, noise: Tensor) -> Tensor:
    """Corrupt the conditioning image with the forward process at ``aug_level`` (Imagen §2.4).

    The same q(x_t | x0) as training noise (DDPM eq. 4): ``sqrt(alpha_bar) lowres + sqrt(1 - alpha_bar) noise``.
    ``aug_level`` [B] is an integer timestep of ``schedule``; 0 means almost no corruption.
    """
    return schedule.q_sample(lowres, aug_level, noise)


def sr_inputs(lowres: Tensor, size: int, aug_level: Tensor, schedule: NoiseSchedule, noise: Tensor) -> dict:
    """The extra arguments of an SR U-Net: ``lowres`` upsampled to ``size`` and noised at ``aug_level``."""
    return {"lowres": noise_augment(upsample(lowres, size), aug_level, schedule, noise), "aug_level": aug_level}


def check_sr_sizes(low_size: int, high_size: int, crop: int | None) -> int:
    """The upsampling factor of an SR stage from ``low_size`` to ``high_size`` px, trained on ``crop`` px windows
    (None: whole images); ValueError unless the sizes divide and the crop maps onto whole low-res pixels."""
    if high_size <= low_size or high_size % low_size:
        raise ValueError(f"high_size ({high_size}) must be a multiple of low_size ({low_size}) and larger")
    factor = high_size // low_size
    if crop is not None and (crop > high_size or crop % factor or crop < factor):
        raise ValueError(f"crop must be a multiple of {factor} between {factor} and {high_size}, got {crop}")
    return factor


def crop_window(seed: int, index: int, crop: int, factor: int, high_size: int) -> tuple[int, int]:
    """Top-left corner ``(y, x)``, in high-res pixels, of item ``index``'s ``crop`` px window, drawn from
    ``(seed, index)`` on the low-res grid, so that it maps onto whole high-res pixels."""
    rng = np.random.default_rng([seed, index, 1])
    y, x = (int(v) for v in rng.integers(0, (high_size - crop) // factor + 1, size=2))
    return y * factor, x * factor


class SuperResolutionPairs(Dataset):
    """Aligned (high-res, low-res, caption) views of Shapes scenes for training an SR stage.

    ``high_size`` and ``low_size`` are the stage's output and input resolutions (e.g. 256 and 64). With
    ``crop`` set, a random ``crop``×``crop`` window of the high-res render and the matching window of the
    low-res render are returned (the 256->1024 stage trains on crops, Imagen appendix), the window drawn
    deterministically from ``(seed, index)``.
    """

    def __init__(self, low_size: int, high_size: int, crop: int | None = None, length: int = 10_000,
                 seed: int = 0, max_objects: int = 2, textures: tuple[str, ...] = TEXTURES) -> None:
        factor = check_sr_sizes(low_size, high_size, crop)
        self.low = Shapes(size=low_size, length=length, seed=seed, max_objects=max_objects, textures=textures)
        self.high = Shapes(size=high_size, length=length, seed=seed, max_objects=max_objects, textures=textures)
        self.factor, self.crop, self.seed = factor, crop, seed

    def __len__(self) -> int:
        return len(self.high)

    def window(self, index: int) -> tuple[int, int] | None:
        """Top-left corner ``(y, x)``, in high-res pixels, of item ``index``'s crop (None without ``crop``).

        The window is drawn on the low-res grid, so that it maps onto whole high-res pixels.
        """
        if self.crop is None:
            return None
        return crop_window(self.seed, index, self.crop, self.factor, self.high.size)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        high, caption = self.high[index]  # (3, H, H)
        low, _ = self.low[index]  # (3, H/f, H/f): the same scene
        if self.crop is None:
            return high, low, caption
        y, x = self.window(index)
        f, c = self.factor, self.crop
        return (high[:, y : y + c, x : x + c],  # (3, crop, crop)
                low[:, y // f : (y + c) // f, x // f : (x + c) // f], caption)  # (3, crop/f, crop/f)


class DownsampledPairs(Dataset):
    """Aligned (high-res, low-res, caption) views of any captioned images, for training an SR stage on data
    other than Shapes (``ImageCaptionFolder``, ``OpenMoji``): ``images`` gives each image at ``high_size``,
    and the low-res view is that image area-averaged down to ``low_size`` (close to what a base model trained
    on the same images at the lower size draws). With ``crop``, every read of an image cuts another window:
    item ``index`` is image ``index % len(images)`` and its window is drawn from ``(seed, index)``, as
    ``SuperResolutionPairs`` draws its own, so the dataset is ``windows`` times as long as ``images``."""

    def __init__(self, images: Dataset, low_size: int, high_size: int, crop: int | None = None, seed: int = 0,
                 windows: int = 1000) -> None:
        self.factor = check_sr_sizes(low_size, high_size, crop)
        self.images, self.crop, self.seed = images, crop, seed
        self.low_size, self.high_size = low_size, high_size
        self.windows = 1 if crop is None else checks.integer("windows", windows)

    def __len__(self) -> int:
        return len(self.images) * self.windows

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        high, caption = self.images[index % len(self.images)]  # (3, H, H)
        if high.shape[-2:] != (self.high_size, self.high_size):
            raise ValueError(f"image {index % len(self.images)} is {list(high.shape)}; DownsampledPairs needs "
                             f"[3, {self.high_size}, {self.high_size}] (give the dataset size={self.high_size})")
        if self.crop is not None:
            y, x = crop_window(self.seed, index, self.crop, self.factor, self.high_size)
            high = high[:, y : y + self.crop, x : x + self.crop]  # (3, crop, crop)
        return high, F.avg_pool2d(high[None], self.factor)[0], caption  # low: (3, crop/f, crop/f)


class SuperResolutionTrainer(Trainer):
    """The Trainer for an SR stage on (high, low, caption) items (``SuperResolutionPairs``, ``DownsampledPairs``):
    each batch's low-res images are upsampled and noised at levels drawn from [0, ``config.max_aug_level``)
    (noise-conditioning augmentation, Imagen §2.4), and the U-Net is told the level. The sample grids condition on the first items' low-res images at a
    fixed level."""

    def model_inputs(self, items: list[tuple], size: int) -> dict[str, Tensor]:
        lowres = torch.stack([item[1] for item in items]).to(self.device)  # (B, 3, h, w)
        b = lowres.shape[0]
        aug_level = self.randint(b, self.config.max_aug_level)
        aug_noise = self.randn(b, (3, size, size))
        return sr_inputs(lowres, size, aug_level, self.schedule, aug_noise)

    def sample_inputs(self, n: int, size: int, seed: int, aug_level: int) -> dict[str, Tensor]:
        lowres = torch.stack([self.dataset[i][1] for i in range(n)]).to(self.device)
        level = torch.full((n,), aug_level, device=self.device)
        noise = torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(seed + 1)).to(self.device)
        return sr_inputs(lowres, size, level, self.schedule, noise)


# What each stage of the cascade trains on: (output size, low-res input size or None, default crop).
# The 256->1024 stage trains on 256 px crops of the 1024 px render (with the matching 64 px window of the
# 256 px input) and runs on whole images (Imagen appendix); a smaller crop shrinks the windows further.
STAGES = {"base": (64, None, None), "sr256": (256, 64, None), "sr1024": (1024, 256, 256)}


# Width of the tokens of a text model trained with the U-Net ("bow", "transformer"): small, as the U-Net is.
TEXT_MODEL_WIDTH = 128


def start_from(model: UNet, path: str | os.PathLike, *, text: dict | None = None, schedule: dict | None = None) -> None:
    """Load exported weights into a freshly built ``model`` to fine-tune it (``minimagen train --init``);
    ValueError naming the difference when the file holds another architecture (its training crop aside: a
    fully convolutional SR U-Net runs at any size) or, where given, was trained with another ``text`` encoder
    or noise ``schedule`` than the run's."""
    state, header = read_weights(path)
    for name, ours in (("text", text), ("schedule", schedule)):
        if ours is not None and header.get(name) != ours:
            raise ValueError(f"--init {str(path)!r} was trained with {name} {header.get(name)}, this run uses {ours}")
    theirs = UNetConfig.from_dict({**header["config"], "image_size": model.config.image_size})
    if theirs != model.config:
        differ = [f.name for f in dataclasses.fields(theirs) if getattr(theirs, f.name) != getattr(model.config, f.name)]
        raise ValueError(f"--init {str(path)!r} holds another U-Net than this recipe builds (differs in {differ}): "
                         f"give the --stage and --unet it was trained with")
    load_state_strict(model, state, path)


@dataclass(frozen=True)
class StageRecipe:
    """What ``minimagen train --stage ...`` builds for one stage of the cascade (on Shapes, OpenMoji or a folder
    of images), and records in every checkpoint of the run: the U-Net (a preset, sized for the stage), its
    schedule, its text encoder, its data."""

    stage: str = "base"  # "base", "sr256" or "sr1024" (``STAGES``)
    unet: str = "base-s"  # a name in ``unet.PRESETS``
    image_size: int | None = None  # base stage only (default 64)
    crop: int | None = None  # SR stages: train on crops of this side (default: STAGES' crop)
    prediction: str | None = None  # default: eps for the base stage, v for SR stages (see minimagen.diffusion)
    schedule: dict = dataclasses.field(default_factory=lambda: {"kind": "cosine", "T": 1000, "max_beta": 0.2})
    # "minilm" (frozen, pretrained: Imagen's way), "minilm-random" (the same, with random weights), "bow" or
    # "transformer" (a text model trained with the U-Net from MiniLM's token ids: GLIDE's way), or any name
    # TextEncoder takes (a frozen encoder)
    encoder: str = "minilm"
    max_length: int = 24
    max_aug_level: int = 250  # SR stages: augmentation levels are drawn from [0, this)
    seed: int = 0  # the data's seed and the initial weights'
    # base stage: never draw data.HELD_OUT_COLOUR_SHAPES, so that a model can be tested on compositions it
    # never saw (lesson 12)
    hold_out_colour_shapes: bool = False
    # what to train on: "shapes" (procedural scenes), "openmoji" (data.OpenMoji's training split, on white)
    # or a folder of images with captions (data.ImageCaptionFolder); SR stages area-average its images down
    data: str = "shapes"
    # a weights file (minimagen export) to start from instead of random weights: fine-tuning. Its U-Net must be
    # the one the recipe builds (the same architecture, inputs and text encoder; the training crop may differ)
    init: str | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {sorted(STAGES)}, got {self.stage!r}")
        if self.unet not in PRESETS:
            raise ValueError(f"unet must be one of {sorted(PRESETS)}, got {self.unet!r}")
        size, low, _ = STAGES[self.stage]
        if low is not None and self.image_size not in (None, size):
            raise ValueError(f"--image-size is fixed at {size} for --stage {self.stage} (use --crop to train on windows)")
        crop = self.shapes[2]
        if low is not None and self.hold_out_colour_shapes:
            raise ValueError("--hold-out-colour-shapes is for the base stage (the SR stages draw what they are given)")
        if low is not None and crop is not None and (crop > size or crop % (size // low)):
            raise ValueError(f"--crop must be a multiple of {size // low} up to {size}, got {crop}")
        if self.data not in ("shapes", "openmoji") and not pathlib.Path(self.data).is_dir():
            raise ValueError(f"--data must be shapes, openmoji or a folder of images with captions, got {self.data!r} "
                             f"(no such folder)")
        if self.data != "shapes" and self.hold_out_colour_shapes:
            raise ValueError("--hold-out-colour-shapes is for --data shapes")

    @property
    def text_encoder_name(self) -> str:
        """The TextEncoder this recipe reads captions with (the tokenizer alone for a text model of its own)."""
        return "minilm-tokens" if self.encoder in TEXT_MODELS else self.encoder

    @property
    def shapes(self) -> tuple[int, int | None, int | None]:
        """(output size, low-res input size or None, crop or None)."""
        size, low, crop = STAGES[self.stage]
        if low is None:
            return self.image_size or size, None, None
        return size, low, self.crop or crop

    def metadata(self, command: str, init: dict | None = None) -> dict:
        """What the run's checkpoints record besides the model and training configs (``init``: the weights file
        the run started from and its SHA-256)."""
        size, low, crop = self.shapes
        if self.data == "shapes":
            data = {"dataset": "Shapes", "size": size, "seed": self.seed, "max_objects": 2}
        elif self.data == "openmoji":
            data = {"dataset": "OpenMoji", **openmoji_source(), "size": size, "seed": self.seed, "split": "train",
                    "background": "#ffffff", "licence": "CC BY-SA 4.0", "attribution": OPENMOJI_ATTRIBUTION}
        else:
            data = {"dataset": "ImageCaptionFolder", "size": size, "seed": self.seed,
                    "root": str(pathlib.Path(self.data).resolve())}
        if init is not None:
            data["init"] = init
        if self.hold_out_colour_shapes:
            data["held_out_colour_shapes"] = sorted(map(list, HELD_OUT_COLOUR_SHAPES))
        if low is not None:
            data.update(low_size=low, crop=crop, max_aug_level=self.max_aug_level)
        return {"stage": self.stage, "schedule": dict(self.schedule),
                "text": {"encoder": self.text_encoder_name, "max_length": self.max_length},
                "data": data, "size": size, "command": command}

    def trainer(self, config: TrainConfig, out_dir, *, device="cpu", workers: int = 0, cache_size: int = 50_000,
                command: str = "", parallel=None) -> Trainer:
        """The Trainer of this recipe (a ``SuperResolutionTrainer`` for SR stages), not yet resumed.

        ``parallel`` shares its steps between processes (``minimagen.distributed.Ranks``; see ``Trainer``)."""
        size, low, crop = self.shapes
        encoder = TextEncoder(self.text_encoder_name, max_length=self.max_length, device=device,
                              cache_size=cache_size)
        own = self.encoder in TEXT_MODELS  # the U-Net carries a text model, trained with it
        unet_config = dataclasses.replace(  # the preset's architecture, sized and wired for this stage
            PRESETS[self.unet], image_size=crop or size, text_dim=TEXT_MODEL_WIDTH if own else encoder.dim,
            lowres_channels=3 if low else 0, aug_level_conditioning=bool(low),
            prediction=self.prediction or ("v" if low else "eps"),
            text_model=self.encoder if own else None, text_vocab=encoder.vocab_size if own else 0,
            text_max_length=self.max_length if own else 0,
        )
        with torch.random.fork_rng(devices=[]):  # the initial weights, without touching the caller's global RNG
            torch.manual_seed(self.seed)
            model = UNet(unet_config)
        init = self._start(model, out_dir)
        trainer_class = Trainer if low is None else SuperResolutionTrainer
        if self.data == "shapes" and low is None:
            pairs = ALL_COLOUR_SHAPES - HELD_OUT_COLOUR_SHAPES if self.hold_out_colour_shapes else None
            data = Shapes(size=size, length=10_000_000, seed=self.seed, colour_shapes=pairs)
        elif self.data == "shapes":
            data = SuperResolutionPairs(low_size=low, high_size=size, crop=crop, length=10_000_000, seed=self.seed)
        else:
            data = OpenMoji(size) if self.data == "openmoji" else ImageCaptionFolder(self.data, size)
            if low is not None:
                small = data.smaller_than(size) if isinstance(data, ImageCaptionFolder) else []
                if small:
                    warnings.warn(f"{len(small)} of the {len(data)} images in {self.data} are smaller than {size} px, "
                                  f"so this {self.stage} stage learns to draw their upsampling blur: {small[:5]}",
                                  stacklevel=2)
                data = DownsampledPairs(data, low_size=low, high_size=size, crop=crop, seed=self.seed)
        return trainer_class(model, data, schedule_from_spec(self.schedule), config, out_dir, text_encoder=encoder,
                             device=device, extra_metadata=self.metadata(command, init), workers=workers,
                             parallel=parallel)

    def _start(self, model: UNet, out_dir) -> dict | None:
        """Load ``--init``'s weights into a new run's ``model`` and return the record of them the checkpoints keep.
        A run being resumed takes its weights from its checkpoint, and its record from there too (so the file
        may be gone); ValueError if ``--init`` names another file than the run started from."""
        previous = list_checkpoints(out_dir)
        if previous:
            init = TrainingState(previous[-1]).meta.get("data", {}).get("init")
            given = str(pathlib.Path(self.init).resolve()) if self.init is not None else None
            if given is not None and (init is None or init["weights"] != given):
                raise ValueError(f"{str(out_dir)!r} holds a run started from {init and init['weights']}, not from "
                                 f"--init {self.init!r}: resume it with the --init it started with, or use a new --out")
            return init
        if self.init is None:
            return None
        start_from(model, self.init, text={"encoder": self.text_encoder_name, "max_length": self.max_length},
                   schedule=self.schedule)
        return {"weights": str(pathlib.Path(self.init).resolve()), "sha256": sha256_file(self.init)}


@dataclass
class Stage:
    """One diffusion model of the cascade: its U-Net, its noise schedule and the size it generates."""

    name: str  # "base64", "sr256", "sr1024"
    unet: torch.nn.Module
    schedule_spec: dict  # as model cards record it, e.g. {"kind": "cosine", "T": 1000, "max_beta": 0.2}
    size: int  # output side in pixels (a fully convolutional SR U-Net may be trained on smaller crops)

    def __post_init__(self) -> None:
        self.schedule = schedule_from_spec(self.schedule_spec)

    @property
    def is_super_resolution(self) -> bool:
        return self.unet.config.lowres_channels > 0

    @torch.no_grad()
    def sample(self, text: Tensor, mask: Tensor, *, lowres: Tensor | None = None, guidance: float = 1.0,
               steps: int = 25, threshold=None, eta: float = 0.0, aug_level: int = 50,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu",
               precision: str = "fp32", progress: bool = True) -> Tensor:
        """DDIM samples [B, 3, size, size] (not clamped) of this stage for encoded captions ``text``/``mask``.

        A super-resolution stage is conditioned on ``lowres`` (the previous stage's images, [B, 3, h, h]),
        upsampled and noised at the fixed ``aug_level`` (Imagen §2.4); its augmentation noise is drawn from
        ``generator`` before the sampler draws x_T, so a seed fixes both.
        """
        b = text.shape[0]
        schedule = self.schedule.to(device)
        extra = {}
        if self.is_super_resolution:
            if lowres is None:
                raise ValueError(f"stage {self.name} is a super-resolution stage: pass lowres=")
            if not 0 <= aug_level < self.schedule.T:
                raise ValueError(f"aug_level must be in [0, {self.schedule.T}), got {aug_level}")
            level = torch.full((b,), aug_level, device=device)
            noise = torch.randn((b, 3, self.size, self.size), generator=generator).to(device)
            extra = sr_inputs(lowres.to(device), self.size, level, schedule, noise)
        elif lowres is not None:
            raise ValueError(f"stage {self.name} is a base stage: it takes no lowres input")
        model_fn = _sampling_model_fn(self.unet, text, mask, guidance, precision, device, schedule, **extra)
        return ddim_sample(model_fn, (b, 3, self.size, self.size), schedule, steps=steps, eta=eta,
                           threshold=threshold, generator=generator, device=device, progress=progress)


INDEX = "imagen.json"  # a cascade folder's index: the text encoder and the stages' names, in order


def read_index(folder: str | os.PathLike) -> tuple[dict, list[str]]:
    """The text encoder record and the stage names of a cascade folder's ``imagen.json``."""
    path = pathlib.Path(folder) / INDEX
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} has no {INDEX}: not a cascade folder (Imagen.save_pretrained or "
                         f"minimagen export --cascade write one)")
    try:
        index = json.loads(path.read_text())
        text, names = index["text"], index["stages"]
        text["encoder"], text["max_length"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{str(path)!r} is not a valid cascade index (expected JSON with 'text' "
                         f"{{'encoder', 'max_length'}} and 'stages'): {err}") from err
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{str(path)!r}: 'stages' must be a list of stage names, got {names!r}")
    return text, names


def write_index(folder: str | os.PathLike, text: dict, names: list[str]) -> None:
    index = {"text": {"encoder": text["encoder"], "max_length": text["max_length"]}, "stages": list(names)}
    atomic_write_bytes(pathlib.Path(folder) / INDEX, (json.dumps(index, indent=2) + "\n").encode())


def check_order(stages: list[tuple[str, int, bool]], complete: bool = True) -> None:
    """A cascade's stages as (name, output size, is super-resolution), in order: a base model first, then
    super-resolution stages, each larger than the one before; ValueError naming the first that is not.
    ``complete=False`` accepts a cascade still being put together, whose base may not be there yet."""
    if not stages:
        raise ValueError("stages must hold at least the base stage")
    if complete and stages[0][2]:
        raise ValueError(f"the first stage ({stages[0][0]}) must be a base model, not a super-resolution one")
    for (prev, prev_size, _), (name, size, sr) in zip(stages, stages[1:]):
        if not sr:
            raise ValueError(f"stage {name} follows {prev} but takes no low-resolution input")
        if size <= prev_size:
            raise ValueError(f"stage {name} ({size} px) must be larger than {prev} ({prev_size} px)")


def add_to_cascade(weights: str | os.PathLike) -> list[str]:
    """List an exported stage (``minimagen export``'s weights file) in its folder's ``imagen.json``, written if
    absent, so that ``Imagen.from_pretrained(folder)`` (``minimagen sample --models folder``) runs it with the
    folder's other stages, smallest output first. Returns the stages listed. ValueError, leaving the index as
    it was, unless the stages make a cascade, or the part of one exported so far (``check_order``; an SR stage
    after the stage whose size it was trained to enlarge), read by one text encoder."""
    path = pathlib.Path(weights)
    if path.suffix != ".safetensors":
        raise ValueError(f"weights must be a .safetensors file in the cascade's folder, got {str(path)!r}")
    folder = path.parent
    headers = {path.stem: read_weights(path)[1]}
    text = headers[path.stem].get("text")
    if not isinstance(text, dict) or "encoder" not in text:
        raise ValueError(f"{str(path)!r} does not record its text encoder: export it with `minimagen export`")
    names = [path.stem]
    if (folder / INDEX).is_file():
        theirs, listed = read_index(folder)
        if theirs != text:
            raise ValueError(f"{str(path)!r} reads captions with {text}, the cascade in {str(folder)!r} with "
                             f"{theirs}: one cascade, one text encoder")
        names += [n for n in listed if n != path.stem]
    for name in names[1:]:
        headers[name] = read_weights(folder / f"{name}.safetensors")[1]
    names.sort(key=lambda n: int(headers[n]["size"]))
    check_order([(n, int(headers[n]["size"]), bool(headers[n]["config"].get("lowres_channels"))) for n in names],
                complete=False)
    for prev, name in zip(names, names[1:]):
        low = STAGES.get(headers[name].get("stage"), (None, None, None))[1]
        if low is not None and low != int(headers[prev]["size"]):
            raise ValueError(f"stage {name} was trained on {low} px inputs, but follows {prev} "
                             f"({headers[prev]['size']} px)")
    write_index(folder, text, names)
    return names


def sampling_defaults(stages: Sequence[Stage]) -> tuple[list[int], list[float]]:
    """``minimagen sample``'s steps and eta for each of ``stages``: ancestral sampling (eta = 1) everywhere, 25
    steps, and 10 for a stage of 1024 px or more, where a step costs most.

    Measured on the shipped models: the base draws colour and shape right more often ancestrally than with
    DDIM at every guidance weight (data/results/thresholding_ancestral.csv against thresholding.csv). For the
    SR stages deterministic DDIM carries each step's leftover noise into the next, and sampling ancestrally
    forgets it: sr256 on 32 held-out scenes, downsample error 0.0086 against 0.0102, RMSE to the real renders
    0.0615 against 0.0654; sr1024 on 16, sharpness 0.0419 (10 ancestral steps) against 0.0448 (25 DDIM; real
    renders 0.0199), downsample error 0.0158 against 0.0171 (data/results/sr_sampling/ against sr256.json and
    sr1024.json, which hold the DDIM measurements).
    """
    steps = [10 if stage.size >= 1024 else 25 for stage in stages]
    return steps, [1.0] * len(stages)


PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Does ``device`` do bfloat16 arithmetic in hardware? A CUDA GPU that says so, or a CPU with the
    AVX-512 bf16 or AMX instructions (read from /proc/cpuinfo; False where that cannot be read). Without
    them bfloat16 is emulated on a CPU and autocast is many times slower than float32, not faster."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """"auto" -> "bf16" where ``device`` has native bfloat16 (``native_bf16``), else "fp32"; "fp32" and
    "bf16" are kept as asked."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def _sampling_model_fn(unet: torch.nn.Module, text, mask, w: float, precision: str, device, schedule, **extra):
    """The guided ``model_fn`` for one stage, set up to run fast.

    The U-Net's weights are put in channels-last layout (the same numbers up to float rounding, about
    1.4x faster convolutions on a CPU). ``precision="bf16"`` runs the U-Net under bfloat16 autocast
    (about 2x faster again on a CPU with AVX-512 bf16 or a GPU; eps differs from fp32 by ~0.004 on
    average, ten times less than a small model's own error) and hands eps back in float32, so the
    sampler's arithmetic and thresholding stay in float32. ``precision="auto"`` is bf16 only where the
    device has it in hardware (``resolve_precision``).
    """
    precision = resolve_precision(precision, device)
    unet = unet.to(device, memory_format=torch.channels_last).eval()
    model_fn = guided_model_fn(unet, text, mask, w, schedule=schedule, **extra)
    if precision == "fp32":
        return model_fn
    device_type = torch.device(device).type

    def bf16_model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            return model_fn(x_t, t).float()

    return bf16_model_fn


def _per_stage(name: str, value, n_all: int, n: int) -> list:
    """One number for each of the first ``n`` stages: given per stage (for all ``n_all`` or for the
    ``n`` that run), or as one number (or a list of one) for all of them."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    values = values * n if len(values) == 1 else values
    if len(values) not in (n, n_all):
        raise ValueError(f"{name} needs one value per stage ({n_all}), got {len(values)}: {value!r}")
    return values[:n]


class Imagen:
    """Text encoder + base U-Net + super-resolution U-Nets, sampled one after the other (Imagen §2).

    ``sample(prompts)`` runs the base stage from noise, then each SR stage conditioned on the previous
    stage's output (upsampled and noise-augmented at a fixed level) and on the same text.
    """

    def __init__(self, text_encoder, stages: list[Stage]) -> None:
        check_order([(stage.name, stage.size, stage.is_super_resolution) for stage in stages])
        gives_ids = getattr(text_encoder, "output", "embeddings") == "ids"
        for stage in stages:
            own = stage.unet.config.text_model  # a text model of its own reads token ids
            if bool(own) != gives_ids:
                raise ValueError(f"stage {stage.name} reads {'token ids (its ' + own + ' text model)' if own else 'encoded text'}"
                                 f", the encoder gives {'token ids' if gives_ids else 'encoded text'}")
            if not own and stage.unet.config.text_dim != text_encoder.dim:
                raise ValueError(f"stage {stage.name} expects {stage.unet.config.text_dim}-dimensional text, "
                                 f"the encoder gives {text_encoder.dim}")
        self.text_encoder, self.stages = text_encoder, stages

    @torch.no_grad()
    def sample(self, prompts: list[str], *, guidance: float | Sequence[float] | None = None,
               threshold: str | None = "dynamic", steps: int | Sequence[int] | None = None,
               aug_level: int = 50, seed: int = 0, device: str | torch.device = "cpu",
               progress: bool = True, stages: int | None = None, clamp: bool = True,
               eta: float | Sequence[float] = 0.0, precision: str = "fp32") -> list[Tensor]:
        """Images of every stage for ``prompts``: a list of [B, 3, size, size] tensors in [-1, 1].

        ``guidance`` and ``steps`` (DDIM steps) are per stage, or one value for all (default: w = 3 and 50
        steps for the base stage, w = 1 and 25 steps for each SR stage). ``threshold`` defaults to Imagen's
        "dynamic"; with the shipped base model "static" matches no thresholding and beats "dynamic" from w = 3
        up (a lower Fréchet distance; dynamic collapses from w = 5 ancestral, w = 8 DDIM;
        data/results/thresholding*.csv), so ``minimagen sample`` uses it. The SR stages' x0
        predictions stay inside [-1, 1], so neither mode changes them. ``aug_level`` is the
        noise-augmentation timestep applied to each SR stage's input; ``seed`` makes the run repeatable.
        ``stages=k`` runs only the first k stages. ``clamp=False`` returns the last stage unclamped
        (e.g. to measure what sampling without thresholding produces); inputs to SR stages are always
        clamped. ``eta`` is DDIM's noise level, per stage or one for all: 0 is deterministic DDIM, 1 ancestral
        sampling (fresh noise at every step), and ``eta=1`` with ``steps=T`` is DDPM. ``precision="bf16"`` runs the U-Nets under
        bfloat16 autocast (about 2x faster, see ``_sampling_model_fn``).
        """
        n = len(self.stages) if stages is None else stages
        checks.integer("stages", n, 1, len(self.stages))
        n_all = len(self.stages)
        guidance = [3.0] + [1.0] * (n_all - 1) if guidance is None else guidance
        steps = [50] + [25] * (n_all - 1) if steps is None else steps
        guidance, steps = _per_stage("guidance", guidance, n_all, n), _per_stage("steps", steps, n_all, n)
        eta = _per_stage("eta", eta, n_all, n)
        for value in eta:
            checks.number("eta", value, 0.0, 1.0, note="DDIM's noise level: 0 deterministic, 1 ancestral")
        text, mask = self.text_encoder.encode(prompts)  # (B, L, D), (B, L); checks the prompts
        text, mask = text.to(device), mask.to(device)
        generator = torch.Generator().manual_seed(seed)
        images: list[Tensor] = []
        for stage, w, k, noise in zip(self.stages[:n], guidance, steps, eta):
            if progress:
                print(f"stage {stage.name}: {stage.size}×{stage.size}, {k} DDIM steps (eta = {noise:g}), guidance w = {w}")
            x = stage.sample(text, mask, lowres=images[-1] if stage.is_super_resolution else None, guidance=w,
                             steps=k, threshold=threshold, eta=noise, aug_level=aug_level, generator=generator,
                             device=device, precision=precision, progress=progress)
            images.append(x.clamp(-1, 1))
        if not clamp:
            images[-1] = x
        return images

    def stage(self, name: str) -> Stage:
        """The stage called ``name`` (e.g. "sr256"); ValueError naming the stages there are."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ValueError(f"no stage named {name!r}; this cascade has {[s.name for s in self.stages]}")

    @torch.no_grad()
    def super_resolve(self, lowres: Tensor, prompts: list[str], *, stage: str, guidance: float = 1.0,
                      steps: int = 25, aug_level: int = 50, threshold: str | None = "dynamic", seed: int = 0,
                      device: str | torch.device = "cpu", progress: bool = True, precision: str = "fp32",
                      eta: float = 0.0) -> Tensor:
        """Run one super-resolution stage on given low-resolution images (e.g. real renders, or another
        model's samples): [B, 3, h, h] in [-1, 1] with h the previous stage's size -> [B, 3, size, size].
        ``eta`` is DDIM's noise level (0: deterministic; 1: ancestral, fresh noise at every step).
        """
        sr = self.stage(stage)
        if not sr.is_super_resolution:
            raise ValueError(f"stage {stage!r} is the base model; super_resolve needs a super-resolution stage")
        expected = self.stages[self.stages.index(sr) - 1].size
        if not isinstance(lowres, Tensor) or lowres.ndim != 4 or lowres.shape[1] != 3:
            raise ValueError(f"lowres must be a [B, 3, {expected}, {expected}] tensor, got "
                             f"{list(lowres.shape) if isinstance(lowres, Tensor) else type(lowres).__name__}")
        if lowres.shape[-2:] != (expected, expected):
            raise ValueError(f"image size {lowres.shape[-1]}x{lowres.shape[-2]} does not match stage {stage!r} "
                             f"(expects {expected}x{expected} inputs, makes {sr.size}x{sr.size})")
        if not 0 <= aug_level < sr.schedule.T:
            raise ValueError(f"aug_level must be in [0, {sr.schedule.T}), got {aug_level}")
        text, mask = self.text_encoder.encode(prompts)  # checks the prompts
        if len(prompts) != lowres.shape[0]:
            raise ValueError(f"prompts ({len(prompts)}) and lowres images ({lowres.shape[0]}) must be as many")
        x = sr.sample(text.to(device), mask.to(device), lowres=lowres.clamp(-1, 1), guidance=guidance, steps=steps,
                      threshold=threshold, eta=eta, aug_level=aug_level, generator=torch.Generator().manual_seed(seed),
                      device=device, precision=precision, progress=progress)
        return x.clamp(-1, 1)

    def replace_stage(self, name: str, path: str | os.PathLike) -> "Imagen":
        """This cascade with stage ``name`` loaded from another weights file (``minimagen export``), e.g. an
        ablation of it, so it can be measured in place; the other stages and the text encoder are shared."""
        old = self.stage(name)
        unet, header = load_unet(path)
        size = header.get("size")
        if bool(unet.config.lowres_channels) != old.is_super_resolution or size != old.size:
            raise ValueError(f"{str(path)!r} holds a {size} px {'SR' if unet.config.lowres_channels else 'base'} "
                             f"U-Net; stage {name!r} is a {old.size} px "
                             f"{'SR' if old.is_super_resolution else 'base'} stage")
        stages = [Stage(name, unet, header["schedule"], old.size) if s is old else s for s in self.stages]
        return Imagen(self.text_encoder, stages)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write every stage's weights (fp16 + card-less header) and ``imagen.json`` to ``folder``."""
        folder = pathlib.Path(folder)
        for stage in self.stages:
            save_weights(stage.unet, folder / f"{stage.name}.safetensors", stage.unet.config.to_dict(),
                         extra={"stage": stage.name, "schedule": stage.schedule_spec, "size": stage.size})
        write_index(folder, {"encoder": self.text_encoder.name, "max_length": self.text_encoder.max_length},
                    [stage.name for stage in self.stages])

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, text_encoder=None, device: str = "cpu") -> "Imagen":
        """Load a cascade folder (``save_pretrained``, ``minimagen export --cascade``); the text encoder is loaded
        by name unless given."""
        folder = pathlib.Path(folder)
        text, names = read_index(folder)
        if text_encoder is None:
            text_encoder = TextEncoder(text["encoder"], max_length=text["max_length"], device=device)
        stages = []
        for name in names:
            unet, header = load_unet(folder / f"{name}.safetensors")
            stages.append(Stage(name, unet, header["schedule"], int(header["size"])))
        return cls(text_encoder, stages)
