"""Truths about the U-Net: shapes, padding invariance, the null caption, the two attention paths, SR inputs."""

import dataclasses
import math

import pytest
import torch

from minimagen.unet import PRESETS, UNet, UNetConfig, attention, timestep_embedding

TEXT_DIM = 12


def tiny(image_size=32, text=True, **overrides) -> UNetConfig:
    """A few thousand parameters: fast on two CPU cores, yet every kind of layer is there."""
    kw = dict(image_size=image_size, channels=8, channel_mults=(1, 2), blocks_per_level=(1, 1),
              self_attention_levels=(False, True), cross_attention_levels=(False, text),
              text_dim=TEXT_DIM if text else None, num_heads=2, groups=4)
    kw.update(overrides)
    return UNetConfig(**kw)


def perturbed(config: UNetConfig, seed: int = 0) -> UNet:
    """A U-Net whose zero-initialised layers are made non-zero, so every input can change the output."""
    torch.manual_seed(seed)
    model = UNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.2)
    return model


def inputs(config: UNetConfig, B=2, L=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, config.in_channels, config.image_size, config.image_size, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    text = torch.randn(B, L, TEXT_DIM, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False  # the first caption is shorter
    return x, t, text, mask


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("text", [False, True])
@pytest.mark.parametrize("efficient", [False, True])
@pytest.mark.parametrize("skip_scale", [1.0, 1 / math.sqrt(2)])
def test_output_shape_matches_input(image_size, text, efficient, skip_scale):
    config = tiny(image_size, text, efficient_updown=efficient, skip_scale=skip_scale)
    model = UNet(config)
    x, t, tokens, mask = inputs(config)
    eps = model(x, t, tokens, mask) if text else model(x, t)
    assert eps.shape == x.shape
    assert not eps.any()  # zero-initialised output conv: an untrained U-Net predicts eps = 0


def test_timestep_embedding_is_sin_cos():
    t = torch.tensor([0, 7])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = 10000.0 ** (-torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([(7 * freqs).sin(), (7 * freqs).cos()]))


@pytest.mark.parametrize("with_mask", [False, True])
def test_manual_and_sdpa_attention_agree(with_mask):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 2, n, 8, generator=g) for n in (10, 6, 6))
    mask = torch.rand(3, 6, generator=g) > 0.5 if with_mask else None
    if mask is not None:
        mask[:, 0] = True
    torch.testing.assert_close(attention(q, k, v, mask, impl="manual"), attention(q, k, v, mask, impl="sdpa"))


def test_unet_attention_paths_agree():
    model = perturbed(tiny())
    x, t, text, mask = inputs(model.config)
    fast = model(x, t, text, mask)
    for m in model.modules():
        if hasattr(m, "impl"):
            m.impl = "manual"
    torch.testing.assert_close(model(x, t, text, mask), fast)


def test_cross_attention_ignores_padding():
    model = perturbed(tiny())
    x, t, text, mask = inputs(model.config)
    with torch.no_grad():
        ref = model(x, t, text, mask)
        # More padding, with random values: nothing changes.
        pad, pad_mask = torch.randn(2, 4, TEXT_DIM) * 100, torch.zeros(2, 4, dtype=torch.bool)
        longer = model(x, t, torch.cat([text, pad], 1), torch.cat([mask, pad_mask], 1))
        torch.testing.assert_close(longer, ref)
        # New values under the existing padding of sample 0: nothing changes.
        other = text.clone()
        other[0, 3:] = torch.randn(2, TEXT_DIM)
        torch.testing.assert_close(model(x, t, other, mask), ref)
        # A real token changes the output.
        other[0, 1] += 1.0
        assert not torch.allclose(model(x, t, other, mask)[0], ref[0])


def test_null_text():
    model = perturbed(tiny())
    x, t, text, mask = inputs(model.config)
    with torch.no_grad():
        cond = model(x, t, text, mask)
        uncond = model(x, t)  # text=None: the null caption for everyone
        all_dropped = model(x, t, text, mask, text_drop=torch.tensor([True, True]))
        torch.testing.assert_close(all_dropped, uncond)
        assert not torch.allclose(cond, uncond)
        # Dropping sample 1 changes sample 1 only.
        mixed = model(x, t, text, mask, text_drop=torch.tensor([False, True]))
        torch.testing.assert_close(mixed[0], cond[0])
        torch.testing.assert_close(mixed[1], uncond[1])


def test_batch_independence():
    model = perturbed(tiny())
    x, t, text, mask = inputs(model.config, B=3)
    with torch.no_grad():
        batch = model(x, t, text, mask)
        for i in range(3):
            alone = model(x[i:i + 1], t[i:i + 1], text[i:i + 1], mask[i:i + 1])
            torch.testing.assert_close(alone[0], batch[i])


def test_super_resolution_inputs_matter():
    config = tiny(text=False, lowres_channels=3, aug_level_conditioning=True)
    model = perturbed(config)
    x, t, _, _ = inputs(config)
    lowres, aug = torch.randn_like(x), torch.tensor([0, 100])
    with torch.no_grad():
        ref = model(x, t, lowres=lowres, aug_level=aug)
        assert not torch.allclose(model(x, t, lowres=lowres + 1.0, aug_level=aug), ref)
        assert not torch.allclose(model(x, t, lowres=lowres, aug_level=aug + 300), ref)
    with pytest.raises(ValueError, match="lowres"):
        model(x, t, lowres=lowres[:, :, :16, :16], aug_level=aug)
    with pytest.raises(ValueError, match="lowres"):
        model(x, t, aug_level=aug)
    with pytest.raises(ValueError, match="aug_level"):
        model(x, t, lowres=lowres)


def test_fully_convolutional_unet_accepts_other_sizes():
    # Without self-attention (the 256->1024 stage), a U-Net trained on crops runs on whole images.
    config = tiny(text=False, self_attention_levels=(False, False), lowres_channels=3)
    model = UNet(config)
    x = torch.randn(1, 3, 48, 64)
    assert model(x, torch.tensor([5]), lowres=torch.randn_like(x)).shape == x.shape
    with pytest.raises(ValueError, match="x_t"):
        model(torch.randn(1, 3, 33, 32), torch.tensor([5]), lowres=torch.randn(1, 3, 33, 32))


def test_patched_unet_runs_every_level_at_a_patch_of_the_size():
    # patch_size=p folds p x p pixels into channels: level i runs at size / (p 2^(i+1)) in the efficient order,
    # the output has every pixel back, and the sides must divide by p times the levels' factor.
    config = tiny(64, text=False, self_attention_levels=(False, False), efficient_updown=True,
                  lowres_channels=3, patch_size=2)
    model = perturbed(config)
    assert config.downsampling_factor == 8
    sizes = {}
    for i, m in enumerate(model.down_levels):
        m.register_forward_hook(lambda mod, args, out, i=i: sizes.__setitem__(i, out.shape[-1]))
    x = torch.randn(2, 3, 64, 64)
    out = model(x, torch.tensor([5, 500]), lowres=torch.randn_like(x))
    assert out.shape == x.shape and sizes == {0: 16, 1: 8}
    # Every pixel of a patch gets its own value (the unfolding puts each channel block at its own offset).
    assert out[:, :, 0::2, 0::2].sub(out[:, :, 1::2, 1::2]).abs().mean() > 1e-3
    assert model(torch.randn(1, 3, 48, 40), torch.tensor([5]), lowres=torch.randn(1, 3, 48, 40)).shape[-2:] == (48, 40)
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.randn(1, 3, 36, 32), torch.tensor([5]), lowres=torch.randn(1, 3, 36, 32))
    # The head sees x_t pixel for pixel: with the folded U-Net's features silenced (its last convolution
    # zeroed), a change of one pixel of x_t changes the output exactly inside the 5 x 5 window of the head's
    # two 3x3 convolutions around it; elsewhere only through the head's GroupNorm statistics (a mean over all
    # pixels), a hundredth of that at most.
    fresh = perturbed(config)
    with torch.no_grad():
        fresh.out[-1].weight.zero_()
        x2 = x.clone()
        x2[:, :, 21, 42] += 1.0
        t, low = torch.tensor([5, 500]), torch.randn_like(x)
        change = (fresh(x2, t, lowres=low) - fresh(x, t, lowres=low)).abs().amax(dim=(0, 1))  # (H, W)
    window = torch.zeros_like(change, dtype=torch.bool)
    window[19:24, 40:45] = True
    assert change[window].amin() > 0 and change[~window].amax() < change[window].amax() / 100
    with pytest.raises(ValueError, match="patch_head"):
        tiny(64, text=False, efficient_updown=True, patch_size=2, patch_head=0)
    # A config written before patch_size existed loads as an unpatched U-Net.
    d = config.to_dict()
    del d["patch_size"]
    assert UNetConfig.from_dict(d).patch_size == 1


def test_config_round_trip_and_unknown_key():
    config = tiny(efficient_updown=True, skip_scale=1 / math.sqrt(2))
    d = config.to_dict()
    assert isinstance(d["channel_mults"], list)  # JSON-ready
    assert UNetConfig.from_dict(d) == config
    with pytest.raises(ValueError, match="colour"):
        UNetConfig.from_dict({**d, "colour": "blue"})


@pytest.mark.parametrize("overrides, field", [
    (dict(blocks_per_level=(1, 1, 1)), "blocks_per_level"),
    (dict(self_attention_levels=(True,)), "self_attention_levels"),
    (dict(image_size=30, efficient_updown=True), "image_size"),
    (dict(channels=10), "channels"),
    (dict(text_dim=None), "cross_attention_levels"),
    (dict(dropout=1.5), "dropout"),
    (dict(skip_scale=0.0), "skip_scale"),
    (dict(aug_level_conditioning=True), "aug_level_conditioning"),
    (dict(channel_mults=()), "channel_mults"),
    (dict(patch_size=0), "patch_size"),
    (dict(image_size=40, patch_size=4, efficient_updown=True), "image_size"),
])
def test_invalid_configs_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny(**overrides)


def test_bad_inputs_name_the_argument():
    model = UNet(tiny())
    x, t, text, mask = inputs(model.config)
    with pytest.raises(ValueError, match=r"x_t has size 64x64 but this U-Net is built for 32x32"):
        model(torch.randn(2, 3, 64, 64), t, text, mask)
    with pytest.raises(ValueError, match="x_t"):
        model(torch.randn(2, 4, 32, 32), t, text, mask)
    with pytest.raises(ValueError, match=r"^t \("):
        model(x, None, text, mask)
    with pytest.raises(ValueError, match="t must have shape"):
        model(x, t[:1], text, mask)
    with pytest.raises(ValueError, match="text must"):
        model(x, t, text[..., :5], mask)
    with pytest.raises(ValueError, match="text_mask"):
        model(x, t, text, mask.float())
    with pytest.raises(ValueError, match="text_mask"):
        model(x, t, text)
    with pytest.raises(ValueError, match="lowres"):
        model(x, t, text, mask, lowres=x)
    unconditional = UNet(tiny(text=False))
    with pytest.raises(ValueError, match="text"):
        unconditional(x, t, text, mask)


@pytest.mark.parametrize("efficient", [False, True])
def test_resolution_of_each_level(efficient):
    # Classic order: level i runs at image_size / 2^i; efficient order: at image_size / 2^(i+1).
    model = UNet(tiny(64, text=False, efficient_updown=efficient))
    sizes = {}
    for name, level in [("down", model.down_levels), ("up", model.up_levels)]:
        for i, m in enumerate(level):
            m.register_forward_hook(lambda mod, args, out, key=(name, i): sizes.__setitem__(key, out.shape[-1]))
    x, t, _, _ = inputs(model.config)
    model(x, t)
    shift = 1 if efficient else 0
    assert sizes == {(d, i): 64 >> (i + shift) for d in ("down", "up") for i in range(2)}


@pytest.mark.parametrize("efficient, patch", [(False, 1), (True, 1), (True, 2)])
def test_gradients_reach_every_parameter(efficient, patch):
    model = perturbed(tiny(efficient_updown=efficient, patch_size=patch)).train()
    x, t, text, mask = inputs(model.config)
    # One sample keeps its caption and one drops it, so both the text path and the null token are used.
    eps = model(x, t, text, mask, text_drop=torch.tensor([False, True]))
    eps.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_summary_counts_every_parameter():
    model = UNet(tiny())
    total = int(model.summary().splitlines()[-1].split()[-1].replace(",", ""))
    assert total == model.num_parameters()
    parts = [int(line.split()[-1].replace(",", "")) for line in model.summary().splitlines()[:-1]]
    assert sum(parts) == total


def test_a_unet_with_its_own_text_model_reads_token_ids():
    cfg = dataclasses.replace(PRESETS["base-s"], image_size=32, channels=8, channel_mults=(1, 2),
                              blocks_per_level=(1, 1), self_attention_levels=(False, False),
                              cross_attention_levels=(False, True), text_dim=16, text_model="bow", text_vocab=100,
                              text_max_length=8)
    unet = UNet(cfg)
    ids, mask = torch.randint(1, 100, (2, 8)), torch.ones(2, 8, dtype=torch.bool)
    assert unet(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), ids, mask).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="token ids"):
        unet(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), torch.randn(2, 8, 16), mask)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg  # the card rebuilds it
    with pytest.raises(ValueError, match="text_model must be one of"):
        dataclasses.replace(cfg, text_model="lstm")
    with pytest.raises(ValueError, match="needs text_vocab"):
        dataclasses.replace(cfg, text_vocab=0)
