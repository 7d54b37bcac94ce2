"""Small helpers to look at images: tensors in [-1, 1] to PIL grids and labelled matplotlib figures."""

from __future__ import annotations

import math
import os
import pathlib
import textwrap
from typing import Sequence

import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8 (values outside [-1, 1] are clipped for display)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1)  # (B, H, W, 3)


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> Image.Image:
    """Tile a batch of images into one PIL image, ``nrow`` images per row (default: about square)."""
    b, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    pixels = to_uint8(images)
    grid = torch.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=torch.uint8)
    for i in range(b):
        r, c = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = pixels[i]
    return Image.fromarray(grid.numpy())


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None) -> pathlib.Path:
    """Write ``image_grid(images)`` as a PNG, creating the folder; returns the path.

    A single image is written as it is (a 1024 px sample gives a 1024×1024 PNG), without the grid's border.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, nrow, pad=0 if images.shape[0] == 1 else 2).save(path)
    return path


def show_images(
    images: torch.Tensor,
    titles: Sequence[str] | None = None,
    nrow: int | None = None,
    size: float = 1.6,
    suptitle: str | None = None,
):
    """Show a batch in a matplotlib grid with optional per-image titles; returns the figure."""
    import matplotlib.pyplot as plt

    b = images.shape[0]
    nrow = nrow or min(b, 8)
    ncol = math.ceil(b / nrow)
    fig, axes = plt.subplots(ncol, nrow, figsize=(size * nrow, size * ncol + (0.4 if suptitle else 0)))
    axes = [axes] if b == 1 else list(getattr(axes, "flat", axes))
    pixels = to_uint8(images).numpy()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < b:
            ax.imshow(pixels[i], interpolation="nearest")
            if titles is not None:  # wrapped to the panel's width
                ax.set_title(textwrap.fill(titles[i], width=int(size * 13)), fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig
