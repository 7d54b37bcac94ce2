"""Metrics: saturation, the Fréchet distance's closed form, and the probe's plumbing."""

import math

import pytest
import torch

from minimagen import metrics
from minimagen.data import POSITIONS, Shapes, parse_caption


def test_saturation_counts_pinned_pixels():
    x = torch.zeros(2, 3, 4, 4)
    x[0, 0, 0, :2] = 1.0
    x[0, 1, 0, 0] = -1.0
    torch.testing.assert_close(metrics.saturation(x), torch.tensor([3 / 48, 0.0]))
    real = torch.stack([Shapes(size=64, length=8, seed=0)[i][0] for i in range(8)])
    assert metrics.saturation(real).max() == 0  # real renders never touch ±1
    assert metrics.saturation(torch.randn(4, 3, 64, 64) * 10).min() > 0.9


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 1.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([9.0, 4.0]))
    # ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2 for diagonal covariances
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(4.0 + (1 - 3) ** 2 + 0, abs=1e-9)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_samples_separates_distributions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4000, 3, generator=g), torch.randn(4000, 3, generator=g)
    shifted = torch.randn(4000, 3, generator=g) + 1.0
    same = metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b))
    different = metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(shifted))
    assert same < 0.02 and different == pytest.approx(3.0, rel=0.1)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.feature_statistics(torch.zeros(1, 3))


def test_scene_targets_mark_objects_by_position():
    scene = parse_caption("a small red plain circle on the left and a large blue striped square on the right")
    t = metrics.scene_targets(scene)
    left, right, top = POSITIONS.index("left"), POSITIONS.index("right"), POSITIONS.index("top")
    assert t["present"].tolist().count(1) == 2 and t["present"][top] == 0
    assert t["colour"][top] == metrics.IGNORE
    assert (t["colour"][left], t["colour"][right]) == (0, 2)  # red, blue


def test_probe_shapes_errors_and_learning():
    probe, losses = metrics.train_probe(steps=40, batch_size=16, progress=False)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    images = torch.stack([Shapes(size=64, length=4, seed=5)[i][0] for i in range(4)])
    logits = probe(images)
    assert logits["colour"].shape == (4, len(POSITIONS), 6)
    assert probe.features(images).shape == (4, 128)
    captions = [Shapes(size=64, length=4, seed=5)[i][1] for i in range(4)]
    scores = metrics.alignment(probe, images, captions)
    assert scores.shape == (4,) and ((0 <= scores) & (scores <= 1)).all()
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        probe(torch.zeros(1, 3, 32, 32))


def test_sharpness_and_downsample_error_tell_real_detail_from_upsampling_and_noise():
    from minimagen.cascade import upsample

    low = torch.stack([Shapes(size=64, length=4, seed=3, textures=("striped", "checkered"))[i][0] for i in range(4)])
    high = torch.stack([Shapes(size=256, length=4, seed=3, textures=("striped", "checkered"))[i][0]
                        for i in range(4)])
    bicubic = upsample(low, 256)
    # real detail: the 256 px render has sharper edges and textures than the 64 px one blown up
    assert (metrics.sharpness(high) > 2 * metrics.sharpness(bicubic)).all()
    # content: the render and the bicubic upsampling both come back to the 64 px image; noise does not
    assert metrics.downsample_error(high, low).max() < 0.1
    assert metrics.downsample_error(bicubic, low).max() < 0.1
    noisy = (high + torch.randn_like(high)).clamp(-1, 1)
    assert (metrics.downsample_error(torch.zeros_like(high), low) > 0.3).all()
    assert (metrics.sharpness(noisy) > metrics.sharpness(high)).all()  # noise is "sharp": keep both numbers
    with pytest.raises(ValueError, match="multiple"):
        metrics.downsample_error(torch.zeros(1, 3, 100, 100), torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        metrics.sharpness(torch.zeros(3, 64, 64))


def test_laplacian_is_zero_on_linear_ramps_and_keeps_shape():
    y, x = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    ramp = (0.1 * x + 0.2 * y).expand(2, 3, 6, 7)
    lap = metrics.laplacian(ramp)
    assert lap.shape == (2, 3, 4, 5)
    torch.testing.assert_close(lap, torch.zeros_like(lap), atol=1e-6, rtol=0)
    spike = torch.zeros(1, 1, 3, 3)
    spike[0, 0, 1, 1] = 1.0
    assert metrics.laplacian(spike).item() == -4.0
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        metrics.laplacian(torch.zeros(3, 4, 4))
