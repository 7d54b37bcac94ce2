"""The U-Net that predicts the noise eps in x_t (DDPM, Ho et al. 2020, §3.2 and Appendix B).

One network serves every stage of the cascade:
- the base 64x64 model: time embedding + text (pooled vector and cross-attention), Imagen §2.5;
- the super-resolution stages: the upsampled low-resolution image is concatenated with x_t on channels
  (SR3, Saharia et al. 2021) and the noise-augmentation level of that image is embedded like t (Imagen §2.4).
Imagen's "Efficient U-Net" (Appendix B.1) is two options of the config: `skip_scale` and `efficient_updown`.

The network is a stack of *levels*. A level is some ResNet blocks at one resolution, then optional self-
and cross-attention. The way down ends each level with a skip connection; the way up concatenates it back.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from minimagen.diffusion import PREDICTIONS
from minimagen.text import TEXT_MODELS, pooled, text_model


@dataclass(frozen=True)
class UNetConfig:
    image_size: int  # side of the square images this U-Net is built for (64 for the base model)
    in_channels: int = 3  # channels of x_t
    out_channels: int = 3  # channels of the prediction eps
    channels: int = 64  # base width; level i has channels * channel_mults[i] channels
    channel_mults: tuple[int, ...] = (1, 2, 4)  # one per level; each level after the first halves H and W
    blocks_per_level: tuple[int, ...] = (2, 2, 2)  # ResNet blocks per level (Efficient U-Net: more low down)
    self_attention_levels: tuple[bool, ...] = (False, False, True)  # self-attention at the end of each level
    cross_attention_levels: tuple[bool, ...] = (False, False, False)  # text cross-attention (needs text_dim)
    text_dim: int | None = None  # width of the frozen encoder's tokens (384 for MiniLM); None = no text
    num_heads: int = 4  # attention heads; every level's width must divide by it
    dropout: float = 0.0  # dropout inside ResNet blocks
    groups: int = 8  # GroupNorm groups; channels must divide by it
    skip_scale: float = 1.0  # multiplies skip connections; Imagen's Efficient U-Net uses 1/sqrt(2)
    efficient_updown: bool = False  # Efficient U-Net: downsample before a level's convs, upsample after
    lowres_channels: int = 0  # >0: a super-resolution U-Net that takes `lowres` (SR3)
    aug_level_conditioning: bool = False  # SR: embed the noise-augmentation level of `lowres` (Imagen §2.4)
    prediction: str = "eps"  # what the output means: "eps" (the noise) or "v" (see minimagen.diffusion)
    # >1: the U-Net runs on non-overlapping patch_size x patch_size pixel patches, each folded into
    # channels (space-to-depth) on the way in and unfolded on the way out, so every layer runs at
    # 1/patch_size of the image's side (patch_size^2 fewer positions). For large SR stages, whose work is
    # mostly per-pixel detail around content the low-res input already fixes.
    patch_size: int = 1
    # A patched U-Net ends at full resolution: its last features, unfolded to patch_head channels per pixel,
    # meet x_t and lowres pixel for pixel in a small conditioned head (``PatchHead``). Unused when patch_size is 1.
    patch_head: int = 8
    # A text model trained with the U-Net (lesson 12): "bow" (a vector per token) or "transformer" (GLIDE's
    # way, text.TokenTransformer) turns token ids [B, L] into the text_dim-wide tokens; None: the text comes
    # encoded, by a frozen encoder. text_vocab: how many token ids there are; text_layers and
    # text_max_length: the transformer's depth and positions.
    text_model: str | None = None
    text_vocab: int = 0
    text_layers: int = 2
    text_max_length: int = 0

    def __post_init__(self):
        # JSON gives lists back; the config keeps tuples so that it stays hashable and comparable.
        for name in ("channel_mults", "blocks_per_level", "self_attention_levels", "cross_attention_levels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # frozen: set once, here
        levels = len(self.channel_mults)
        if levels == 0 or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"UNetConfig.channel_mults must be ints >= 1, got {self.channel_mults}")
        for name in ("blocks_per_level", "self_attention_levels", "cross_attention_levels"):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"UNetConfig.{name} needs {levels} entries, got {getattr(self, name)}")
        if any(b < 1 for b in self.blocks_per_level):
            raise ValueError(f"UNetConfig.blocks_per_level must be >= 1, got {self.blocks_per_level}")
        for name in ("image_size", "in_channels", "out_channels", "groups", "num_heads", "patch_size", "patch_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.patch_size > 1 and self.patch_head % min(self.groups, self.patch_head):
            raise ValueError(f"UNetConfig.patch_head must be a multiple of groups={self.groups} (or fewer channels) "
                             f"for patch_size > 1, got {self.patch_head}")
        if self.channels < 2 or self.channels % 2 or self.channels % self.groups:
            raise ValueError(f"UNetConfig.channels must be even and divisible by groups={self.groups}, "
                             f"got {self.channels}")
        if self.channels % self.num_heads:
            raise ValueError(f"UNetConfig.num_heads={self.num_heads} must divide channels={self.channels}")
        if self.image_size % self.downsampling_factor:
            raise ValueError(f"UNetConfig.image_size must be divisible by {self.downsampling_factor} "
                             f"({levels} levels, patch_size {self.patch_size}), got {self.image_size}")
        if any(self.cross_attention_levels) and self.text_dim is None:
            raise ValueError("UNetConfig.cross_attention_levels needs text_dim (the text tokens' width)")
        if self.text_dim is not None and self.text_dim < 1:
            raise ValueError(f"UNetConfig.text_dim must be >= 1 or None, got {self.text_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.skip_scale <= 0:
            raise ValueError(f"UNetConfig.skip_scale must be > 0, got {self.skip_scale}")
        if self.lowres_channels < 0:
            raise ValueError(f"UNetConfig.lowres_channels must be >= 0, got {self.lowres_channels}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"UNetConfig.prediction must be 'eps' or 'v', got {self.prediction!r}")
        if self.aug_level_conditioning and self.lowres_channels == 0:
            raise ValueError("UNetConfig.aug_level_conditioning needs lowres_channels > 0 (an SR U-Net)")
        if self.text_model is not None:
            if self.text_model not in TEXT_MODELS or self.text_dim is None:
                raise ValueError(f"UNetConfig.text_model must be one of {TEXT_MODELS} (with text_dim) or None, "
                                 f"got {self.text_model!r} with text_dim {self.text_dim}")
            if self.text_vocab < 1 or self.text_layers < 1 or self.text_max_length < 1:
                raise ValueError(f"UNetConfig.text_model {self.text_model!r} needs text_vocab, text_layers and "
                                 f"text_max_length >= 1, got {self.text_vocab}, {self.text_layers}, "
                                 f"{self.text_max_length}")

    @property
    def downsampling_factor(self) -> int:
        """How much the lowest level is smaller than the image: the efficient order halves once more,
        and patches shrink every level by patch_size."""
        levels = len(self.channel_mults)
        return self.patch_size * 2 ** (levels if self.efficient_updown else levels - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists), for the weights file's header."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown UNetConfig fields: {sorted(unknown)}")
        return cls(**d)


# Named U-Nets (`minimagen train --unet NAME`), each a complete config that `UNet(PRESETS[name])` builds.
# All use the Efficient U-Net order and skips scaled by 1/sqrt(2) (Imagen appendix B) and read MiniLM's
# 384-wide tokens. At 64 px "base-s" has 2.3 M parameters and "base-m" 10.4 M (`bench/bench_unet.py`
# measures their training speed). The "sr-" U-Nets are the super-resolution stages' (64 -> 256 px; the
# 256 -> 1024 stage uses the same networks on 256 px crops): they take the low-res input and its
# augmentation level, predict v, and have no self-attention, so they are fully convolutional apart from
# text cross-attention at the coarsest level, and train on crops and run on whole images (Imagen appendix:
# the 256->1024 model has no self-attention). `cascade.StageRecipe` sets the size, the encoder's width and
# the stage's inputs with `dataclasses.replace`, so a base preset can also train an SR stage and back.
PRESETS: dict[str, UNetConfig] = {
    "base-s": UNetConfig(
        image_size=64, channels=32, channel_mults=(1, 2, 3), blocks_per_level=(1, 2, 2),
        self_attention_levels=(False, False, True), cross_attention_levels=(False, True, True),
        text_dim=384, skip_scale=2**-0.5, efficient_updown=True,
    ),
    "base-m": UNetConfig(
        image_size=64, channels=48, channel_mults=(1, 2, 3, 4), blocks_per_level=(1, 2, 2, 2),
        self_attention_levels=(False, False, True, True), cross_attention_levels=(False, True, True, True),
        text_dim=384, skip_scale=2**-0.5, efficient_updown=True,
    ),
    "sr-s": UNetConfig(
        image_size=256, channels=32, channel_mults=(1, 2, 4), blocks_per_level=(1, 2, 2),
        self_attention_levels=(False, False, False), cross_attention_levels=(False, False, True),
        text_dim=384, skip_scale=2**-0.5, efficient_updown=True,
        lowres_channels=3, aug_level_conditioning=True, prediction="v",
    ),
    "sr-xs": UNetConfig(
        image_size=256, channels=16, channel_mults=(1, 2, 4), blocks_per_level=(1, 1, 2),
        self_attention_levels=(False, False, False), cross_attention_levels=(False, False, True),
        text_dim=384, skip_scale=2**-0.5, efficient_updown=True,
        lowres_channels=3, aug_level_conditioning=True, prediction="v",
    ),
    # sr-xs's layout on 4x4 patches, twice as wide: 1/16 of the positions at every level, for a 256 -> 1024
    # stage, ending in an 8-wide PatchHead at full resolution (which removes x_t's per-pixel noise near t = 0:
    # without it, a trial left a third to three quarters of that noise in x0-hat at t <= 40, and grain in the
    # samples). `python bench/bench_cascade.py --random-weights --sr1024 sr-p4` times it in the cascade.
    "sr-p4": UNetConfig(
        image_size=256, channels=32, channel_mults=(1, 2, 4), blocks_per_level=(1, 1, 2),
        self_attention_levels=(False, False, False), cross_attention_levels=(False, False, True),
        text_dim=384, skip_scale=2**-0.5, efficient_updown=True,
        lowres_channels=3, aug_level_conditioning=True, prediction="v", patch_size=4,
    ),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer or float timesteps [B] -> [B, dim] (Transformer §3.5, DDPM App. B).

    Half the features are sin(t * w_i), half cos(t * w_i), with w_i = max_period^(-i / (dim/2)).
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]  # (B, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (B, dim)


def embedding_mlp(in_dim: int, out_dim: int) -> nn.Module:
    """Sinusoidal features -> conditioning vector (DDPM App. B: two dense layers around a SiLU)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias, so the residual branch it ends starts as "add nothing"."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              impl: Literal["sdpa", "manual"] = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v  (Vaswani et al. 2017, eq. 1), per head.

    q: (B, nh, Lq, d); k, v: (B, nh, Lk, d); mask: (B, Lk) bool, True = may be attended to.
    "manual" spells the formula out; "sdpa" is PyTorch's fused kernel. They compute the same function.
    """
    if mask is not None:
        mask = mask[:, None, None, :]  # (B, 1, 1, Lk), broadcast over heads and queries
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, Lq, d)
    if impl != "manual":
        raise ValueError(f"impl must be 'sdpa' or 'manual', got {impl!r}")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # exp(-inf) = 0: padding gets no weight
    return scores.softmax(dim=-1) @ v  # (B, nh, Lq, d)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    B, L, C = x.shape
    return x.view(B, L, num_heads, C // num_heads).transpose(1, 2)  # (B, nh, L, C/nh)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, nh, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, nh * d)  # (B, L, C)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection, conditioned on a vector per sample.

    The conditioning (time, pooled text, augmentation level) sets a per-channel scale and shift after the
    second normalisation: h = norm(h) * (1 + scale) + shift ("AdaGN", Dhariwal & Nichol 2021 §3).
    """

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.cond_proj = nn.Linear(cond_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))  # the block starts as the identity
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out_ch, H, W)
        scale, shift = self.cond_proj(F.silu(cond))[:, :, None, None].chunk(2, dim=1)  # 2 x (B, out_ch, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h  # (B, out_ch, H, W)


class SelfAttention(nn.Module):
    """Every pixel attends to every pixel of the same feature map (DDPM App. B, at low resolutions)."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.impl: Literal["sdpa", "manual"] = "sdpa"
        self.norm = nn.GroupNorm(groups, channels)
        self.to_qkv = nn.Linear(channels, 3 * channels)
        self.out = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C): one token per pixel
        q, k, v = (split_heads(z, self.num_heads) for z in self.to_qkv(h).chunk(3, dim=-1))  # (B, nh, HW, d)
        h = merge_heads(attention(q, k, v, impl=self.impl))  # (B, H*W, C)
        h = self.out(h).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + h


class CrossAttention(nn.Module):
    """Pixels (queries) attend to the caption's tokens (keys, values), ignoring padding (Imagen §2.5).

    Plain cross-attention: some Imagen variants concatenate the text keys with the image's own keys
    (self- and cross-attention in one softmax); we keep the two apart, which reads more simply.
    """

    def __init__(self, channels: int, cond_dim: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.impl: Literal["sdpa", "manual"] = "sdpa"
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(cond_dim, 2 * channels)
        self.out = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        q = split_heads(self.to_q(h), self.num_heads)  # (B, nh, HW, d)
        k, v = (split_heads(z, self.num_heads) for z in self.to_kv(text).chunk(2, dim=-1))  # (B, nh, L, d)
        h = merge_heads(attention(q, k, v, text_mask, impl=self.impl))  # (B, H*W, C)
        h = self.out(h).transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + h


def downsample(channels: int) -> nn.Module:
    """Halve H and W with a strided 3x3 convolution: (B, C, H, W) -> (B, C, H/2, W/2)."""
    return nn.Conv2d(channels, channels, 3, stride=2, padding=1)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour copy, then a 3x3 convolution to smooth the blocks."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class Level(nn.Module):
    """ResNet blocks at one resolution, then optional self- and cross-attention (Imagen App. B, DBlock)."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, self_attention: bool, cross_attention: bool,
                 cond_dim: int, config: UNetConfig):
        super().__init__()
        c = config
        self.blocks = nn.ModuleList(ResBlock(in_ch if i == 0 else out_ch, out_ch, cond_dim, c.groups, c.dropout)
                                    for i in range(num_blocks))
        self.self_attn = SelfAttention(out_ch, c.num_heads, c.groups) if self_attention else None
        self.cross_attn = CrossAttention(out_ch, cond_dim, c.num_heads, c.groups) if cross_attention else None

    def forward(self, h, cond, text, text_mask):
        for block in self.blocks:
            h = block(h, cond)  # (B, out_ch, H, W)
        if self.self_attn is not None:
            h = self.self_attn(h)
        if self.cross_attn is not None:
            h = self.cross_attn(h, text, text_mask)
        return h


class PatchHead(nn.Module):
    """The full-resolution end of a patched U-Net: a 3x3 convolution over the unfolded features and the input
    pixels (x_t, lowres), normalised and scaled and shifted from the conditioning like a ResBlock, then a
    3x3 convolution to the prediction (zero at initialisation). Per pixel it costs about
    9 * (width + pixels) * width + 9 * width * out multiply-adds: ~1.2 k at width 8, against the ~9 k of an
    unpatched U-Net's full-resolution stem, top block and output."""

    def __init__(self, width: int, pixels: int, out_channels: int, cond_dim: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(width + pixels, width, 3, padding=1)
        self.norm = nn.GroupNorm(groups, width)
        self.cond_proj = nn.Linear(cond_dim, 2 * width)
        self.out = zero_init(nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, features: torch.Tensor, pixels: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv(torch.cat([features, pixels], dim=1))  # (B, width, H, W)
        scale, shift = self.cond_proj(F.silu(cond))[:, :, None, None].chunk(2, dim=1)  # 2 x (B, width, 1, 1)
        return self.out(F.silu(self.norm(h) * (1 + scale) + shift))  # (B, out_channels, H, W)


class UNet(nn.Module):
    """eps_theta(x_t, t, text [, lowres, aug_level]) for the whole cascade; see the module docstring.

    The order of resampling is the config's choice (Imagen App. B.1):
    - classic (DDPM): level i runs at image_size / 2^i; downsample after a level, upsample after a level;
    - efficient_updown: every level downsamples *before* its convolutions and upsamples *after* them, so
      only one ResNet block runs at full resolution (level i runs at image_size / 2^(i+1)): much faster.
      That one block, `top`, joins the upsampled features with the stem's full-resolution features.
    Each level passes one skip connection (its output) to its mirror on the way up, scaled by skip_scale.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        widths = [c.channels * m for m in c.channel_mults]
        cond_dim = 4 * c.channels  # width of the conditioning vector and of the projected text tokens
        last = len(widths) - 1

        self.time_mlp = embedding_mlp(c.channels, cond_dim)
        # The augmentation level is a second timestep, with its own MLP (Imagen §2.4).
        self.aug_mlp = embedding_mlp(c.channels, cond_dim) if c.aug_level_conditioning else None
        self.text_proj = self.pool_proj = self.null_text = self.text_model = None
        if c.text_model is not None:  # token ids in, tokens out: trained with the rest of the U-Net
            self.text_model = text_model(c.text_model, c.text_vocab, c.text_dim, c.text_layers, c.text_max_length)
        if c.text_dim is not None:
            self.text_proj = nn.Sequential(nn.LayerNorm(c.text_dim), nn.Linear(c.text_dim, cond_dim))
            self.pool_proj = nn.Linear(cond_dim, cond_dim)
            # "No caption" for classifier-free guidance: one learned token, already projected (cond_dim wide).
            self.null_text = nn.Parameter(torch.randn(1, 1, cond_dim) * 0.02)

        p2 = c.patch_size ** 2  # a patch folds p x p pixels of every channel into p^2 channels
        self.stem = nn.Conv2d((c.in_channels + c.lowres_channels) * p2, c.channels, 3, padding=1)
        self.down_levels, self.downsamples = nn.ModuleList(), nn.ModuleList()
        ch = c.channels
        for i, w in enumerate(widths):
            if c.efficient_updown:  # down first, at the previous level's width
                self.downsamples.append(downsample(ch))
            self.down_levels.append(Level(ch, w, c.blocks_per_level[i], c.self_attention_levels[i],
                                          c.cross_attention_levels[i], cond_dim, c))
            if not c.efficient_updown:  # down after, except below the lowest level
                self.downsamples.append(downsample(w) if i < last else nn.Identity())
            ch = w

        self.middle = nn.ModuleList([
            Level(ch, ch, 1, c.self_attention_levels[-1], c.cross_attention_levels[-1], cond_dim, c),
            Level(ch, ch, 1, False, False, cond_dim, c),
        ])

        up_levels, upsamples = {}, {}
        for i in reversed(range(len(widths))):  # built from the bottom, where ch is known
            w = widths[i]
            up_levels[i] = Level(ch + w, w, c.blocks_per_level[i], c.self_attention_levels[i],
                                 c.cross_attention_levels[i], cond_dim, c)
            # Both orders upsample after a level's convolutions; the classic one not above the top level.
            upsamples[i] = Upsample(w) if (c.efficient_updown or i > 0) else nn.Identity()
            ch = w
        # Indexed like the way down: up_levels[i] runs at the resolution of down_levels[i].
        self.up_levels = nn.ModuleList(up_levels[i] for i in range(len(widths)))
        self.upsamples = nn.ModuleList(upsamples[i] for i in range(len(widths)))

        self.top = None
        if c.efficient_updown:
            # No level runs at full resolution in this order, yet eps has per-pixel detail (at large t it
            # is nearly x_t itself): one ResBlock at full resolution sees the stem's features through a skip.
            self.top = ResBlock(ch + c.channels, c.channels, cond_dim, c.groups, c.dropout)
            ch = c.channels
        self.head = None
        if c.patch_size > 1:
            # A position's c.channels features cannot carry the (in + lowres) * p^2 values of its patch, yet
            # near t = 0 the prediction is x_t's own noise, pixel by pixel. So the last features are unfolded
            # to patch_head channels per pixel and a small head at full resolution, which sees x_t and lowres
            # pixel for pixel, makes the prediction.
            self.out = nn.Sequential(nn.GroupNorm(c.groups, ch), nn.SiLU(),
                                     nn.Conv2d(ch, c.patch_head * p2, 3, padding=1))
            self.head = PatchHead(c.patch_head, c.in_channels + c.lowres_channels, c.out_channels, cond_dim,
                                  min(c.groups, c.patch_head))
        else:
            self.out = nn.Sequential(nn.GroupNorm(c.groups, ch), nn.SiLU(),
                                     zero_init(nn.Conv2d(ch, c.out_channels, 3, padding=1)))  # untrained: eps = 0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, *, lowres: torch.Tensor | None = None,
                aug_level: torch.Tensor | None = None, text_drop: torch.Tensor | None = None) -> torch.Tensor:
        """Predict eps [B, out_channels, H, W] from x_t [B, in_channels, H, W] and timesteps t [B].

        text [B, L, text_dim] with text_mask [B, L] (True = real token): the frozen encoder's output.
        text=None on a text U-Net, or text_drop[b] = True, means "no caption" (the learned null token).
        lowres [B, lowres_channels, H, W]: the low-resolution image, already upsampled (SR stages).
        aug_level [B]: the noise-augmentation timestep applied to lowres (SR stages).
        """
        self._check_inputs(x_t, t, text, text_mask, lowres, aug_level, text_drop)
        c = self.config
        cond = self.time_mlp(timestep_embedding(t, c.channels))  # (B, cond_dim)
        if self.aug_mlp is not None:
            cond = cond + self.aug_mlp(timestep_embedding(aug_level, c.channels))
        tokens = mask = None
        if self.text_model is not None and text is not None:
            text = self.text_model(text, text_mask)  # token ids (B, L) -> tokens (B, L, text_dim)
        if self.text_proj is not None:
            tokens, mask = self.project_text(x_t.shape[0], text, text_mask, text_drop)  # (B, L, cond_dim)
            cond = cond + self.pool_proj(pooled(tokens, mask))  # (B, cond_dim): mean of the real tokens

        pixels = h = x_t if lowres is None else torch.cat([x_t, lowres], dim=1)  # (B, in + lowres, H, W): SR3
        if c.patch_size > 1:
            h = F.pixel_unshuffle(h, c.patch_size)  # (B, channels * p^2, H/p, W/p): one position per patch
        h = stem = self.stem(h)  # (B, channels, H/p, W/p)
        skips = []
        for level, down in zip(self.down_levels, self.downsamples):
            if c.efficient_updown:
                h = down(h)  # (B, C, H/2, W/2): the level's convolutions run at the lower resolution
            h = level(h, cond, tokens, mask)
            skips.append(h)
            if not c.efficient_updown:
                h = down(h)  # (B, C, H/2, W/2), or unchanged below the lowest level
        for level in self.middle:
            h = level(h, cond, tokens, mask)
        for i in reversed(range(len(self.up_levels))):
            # Imagen App. B.1 scales skips by 1/sqrt(2), which keeps the activations' variance in check.
            h = torch.cat([h, skips[i] * c.skip_scale], dim=1)  # (B, C + C_skip, H, W)
            h = self.up_levels[i](h, cond, tokens, mask)  # (B, C_level, H, W)
            h = self.upsamples[i](h)  # (B, C_level, 2H, 2W), or unchanged at the top
        if self.top is not None:
            h = self.top(torch.cat([h, stem * c.skip_scale], dim=1), cond)  # (B, channels, H/p, W/p)
        if self.head is None:
            return self.out(h)  # (B, out_channels, H, W)
        features = F.pixel_shuffle(self.out(h), c.patch_size)  # (B, patch_head, H, W)
        return self.head(features, pixels, cond)  # (B, out_channels, H, W)

    def project_text(self, batch, text, text_mask, text_drop):
        """Project the encoder's tokens to cond_dim; swap in the null token where there is no caption."""
        null = self.null_text.expand(batch, 1, -1)  # (B, 1, cond_dim)
        if text is None:
            return null, torch.ones(batch, 1, dtype=torch.bool, device=null.device)
        tokens = self.text_proj(text)  # (B, L, cond_dim)
        if text_drop is None:
            return tokens, text_mask
        # A dropped sample keeps only its first position, which holds the null token.
        null_tokens = F.pad(null, (0, 0, 0, tokens.shape[1] - 1))  # (B, L, cond_dim)
        null_mask = torch.zeros_like(text_mask)
        null_mask[:, 0] = True
        tokens = torch.where(text_drop[:, None, None], null_tokens.to(tokens.dtype), tokens)
        return tokens, torch.where(text_drop[:, None], null_mask, text_mask)

    def _check_inputs(self, x_t, t, text, text_mask, lowres, aug_level, text_drop):
        """Fail early with the argument's name rather than deep inside a convolution."""
        c = self.config
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != 4:
            raise ValueError(f"x_t must be a tensor [B, {c.in_channels}, H, W], got {_describe(x_t)}")
        B, C, H, W = x_t.shape
        if C != c.in_channels:
            raise ValueError(f"x_t has {C} channels but this U-Net takes {c.in_channels}")
        if self.fully_convolutional:  # no self-attention: any size works (the 1024 stage trains on crops)
            f = c.downsampling_factor
            if H % f or W % f:
                raise ValueError(f"x_t has size {H}x{W}; this U-Net needs sides divisible by {f}")
        elif (H, W) != (c.image_size, c.image_size):
            s = c.image_size
            raise ValueError(f"x_t has size {H}x{W} but this U-Net is built for {s}x{s}")
        if t is None:
            raise ValueError("t (the timesteps, shape [B]) is required")
        _check_shape("t", t, (B,))
        if text_drop is not None:
            _check_shape("text_drop", text_drop, (B,), torch.bool)
        if c.text_dim is None:
            for name, value in (("text", text), ("text_mask", text_mask), ("text_drop", text_drop)):
                if value is not None:
                    raise ValueError(f"{name} was given but this U-Net has no text input (text_dim=None)")
        elif text is None:
            if text_mask is not None:
                raise ValueError("text_mask was given without text")
        else:
            if text_mask is None:
                raise ValueError("text_mask [B, L] (True = real token) is required with text")
            if c.text_model is not None:  # its own text model reads token ids
                if text.dim() != 2 or text.dtype != torch.long:
                    raise ValueError(f"text must be token ids [B, L] (int64) for this U-Net's {c.text_model!r} text "
                                     f"model, got {_describe(text)}")
                _check_shape("text", text, (B, text.shape[1]))
            elif text.dim() != 3:
                raise ValueError(f"text must be [B, L, {c.text_dim}], got {_describe(text)}")
            else:
                _check_shape("text", text, (B, text.shape[1], c.text_dim))
            _check_shape("text_mask", text_mask, (B, text.shape[1]), torch.bool)
            if not text_mask.any(dim=1).all():
                raise ValueError("text_mask has a sample with no real token (a row of all False)")
        if c.lowres_channels == 0:
            if lowres is not None:
                raise ValueError("lowres was given but this U-Net has lowres_channels=0 (not an SR U-Net)")
        else:
            if lowres is None:
                raise ValueError(f"lowres [B, {c.lowres_channels}, {H}, {W}] is required (an SR U-Net)")
            _check_shape("lowres", lowres, (B, c.lowres_channels, H, W))
        if c.aug_level_conditioning:
            if aug_level is None:
                raise ValueError("aug_level (lowres's noise-augmentation timestep, [B]) is required")
            _check_shape("aug_level", aug_level, (B,))
        elif aug_level is not None:
            raise ValueError("aug_level was given but this U-Net has aug_level_conditioning=False")

    @property
    def fully_convolutional(self) -> bool:
        return not any(self.config.self_attention_levels)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        """Parameters per part, named as the attributes (level 0 is the top, full-resolution one)."""
        counts: dict[str, int] = {}
        for name, p in self.named_parameters():
            parts = name.split(".")
            part = ".".join(parts[:2]) if isinstance(getattr(self, parts[0]), nn.ModuleList) else parts[0]
            counts[part] = counts.get(part, 0) + p.numel()
        lines = [f"{part:<20}{n:>12,}" for part, n in counts.items()]
        return "\n".join(lines + [f"{'total':<20}{self.num_parameters():>12,}"])


def _describe(x) -> str:
    return f"shape {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_shape(name: str, x, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> None:
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {_describe(x)}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} must be a {dtype} tensor, got {x.dtype}")
