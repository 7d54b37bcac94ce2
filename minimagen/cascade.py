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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from minimagen.data import TEXTURES, Shapes
from minimagen.schedules import NoiseSchedule


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


class SuperResolutionPairs(Dataset):
    """Aligned (high-res, low-res, caption) views of Shapes scenes for training an SR stage.

    ``high_size`` and ``low_size`` are the stage's output and input resolutions (e.g. 256 and 64). With
    ``crop`` set, a random ``crop``×``crop`` window of the high-res render and the matching window of the
    low-res render are returned (the 256->1024 stage trains on crops, Imagen appendix), the window drawn
    deterministically from ``(seed, index)``.
    """

    def __init__(self, low_size: int, high_size: int, crop: int | None = None, length: int = 10_000,
                 seed: int = 0, max_objects: int = 2, textures: tuple[str, ...] = TEXTURES) -> None:
        if high_size <= low_size or high_size % low_size:
            raise ValueError(f"high_size ({high_size}) must be a multiple of low_size ({low_size}) and larger")
        factor = high_size // low_size
        if crop is not None and (crop > high_size or crop % factor or crop < factor):
            raise ValueError(f"crop must be a multiple of {factor} between {factor} and {high_size}, got {crop}")
        self.low = Shapes(size=low_size, length=length, seed=seed, max_objects=max_objects, textures=textures)
        self.high = Shapes(size=high_size, length=length, seed=seed, max_objects=max_objects, textures=textures)
        self.factor, self.crop, self.seed = factor, crop, seed

    def __len__(self) -> int:
        return len(self.high)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        high, caption = self.high[index]  # (3, H, H)
        low, _ = self.low[index]  # (3, H/f, H/f): the same scene
        if self.crop is None:
            return high, low, caption
        # a window on the low-res grid, so that it maps onto whole high-res pixels
        rng = np.random.default_rng([self.seed, index, 1])
        cells = self.crop // self.factor
        y, x = (int(v) for v in rng.integers(0, low.shape[-1] - cells + 1, size=2))
        f = self.factor
        return (high[:, y * f : (y + cells) * f, x * f : (x + cells) * f],  # (3, crop, crop)
                low[:, y : y + cells, x : x + cells], caption)  # (3, crop/f, crop/f)
