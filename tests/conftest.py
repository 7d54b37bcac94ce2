"""Shared test helpers."""

import builtins

import pytest

from minimagen.unet import UNet, UNetConfig


@pytest.fixture
def tiny_cascade_unet():
    """Factory for tiny text-conditional U-Nets usable as cascade stages: ``make(size, sr, text_dim)``."""

    def make(size: int, sr: bool, text_dim: int) -> UNet:
        return UNet(UNetConfig(image_size=size, channels=8, channel_mults=(1, 2), blocks_per_level=(1, 1),
                               self_attention_levels=(False, False), cross_attention_levels=(False, True),
                               text_dim=text_dim, num_heads=2, lowres_channels=3 if sr else 0,
                               aug_level_conditioning=sr))

    return make


@pytest.fixture
def without_module(monkeypatch):
    """``without_module(name)``: from then on in the test, importing ``name`` fails as if it were not installed."""

    def block(missing: str) -> None:
        real_import = builtins.__import__

        def fake_import(name, *args, **kwargs):
            if name == missing:
                raise ImportError(f"No module named {missing!r}", name=missing)
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake_import)

    return block
