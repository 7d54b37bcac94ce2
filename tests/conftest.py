"""Shared test helpers."""

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
