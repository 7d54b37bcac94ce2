"""Static and dynamic thresholding of x0_hat (Imagen §2.3): exact values and invariants."""

import functools

import pytest
import torch

from minimagen.thresholding import dynamic_threshold, resolve_threshold, static_threshold


def test_static_threshold_exact_values():
    x0 = torch.tensor([[-3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 1.5]])
    expected = torch.tensor([[-1.0, -1.0, -0.25, 0.0, 0.5, 1.0, 1.0]])
    assert torch.equal(static_threshold(x0), expected)


def test_dynamic_threshold_exact_values():
    x0 = torch.tensor([[0.5, -2.0, 1.0, 4.0]])  # one sample; sorted |x0| = 0.5, 1, 2, 4
    # percentile 1.0: s = max |x0| = 4, nothing is clipped, everything is divided by 4
    torch.testing.assert_close(dynamic_threshold(x0, percentile=1.0), x0 / 4)
    # percentile 0.5: rank 0.5 * 3 = 1.5, halfway between 1 and 2 -> s = 1.5
    expected = torch.tensor([[0.5, -1.5, 1.0, 1.5]]) / 1.5
    torch.testing.assert_close(dynamic_threshold(x0, percentile=0.5), expected)
    # percentile 0.25: rank 0.75 between 0.5 and 1 -> 0.875 < 1, so s = 1: a plain clip to [-1, 1]
    torch.testing.assert_close(dynamic_threshold(x0, percentile=0.25), static_threshold(x0))


def test_max_scale_caps_s():
    x0 = torch.tensor([[0.5, -2.0, 1.0, 4.0]])  # percentile 1.0 gives s = 4
    # capped at 2: divided by 2 after clipping to [-2, 2]
    expected = torch.tensor([[0.25, -1.0, 0.5, 1.0]])
    torch.testing.assert_close(dynamic_threshold(x0, percentile=1.0, max_scale=2.0), expected)
    # a cap above s changes nothing; a cap of 1 is static thresholding
    torch.testing.assert_close(dynamic_threshold(x0, percentile=1.0, max_scale=10.0), x0 / 4)
    torch.testing.assert_close(dynamic_threshold(x0, percentile=1.0, max_scale=1.0), static_threshold(x0))
    with pytest.raises(ValueError, match="max_scale must be >= 1"):
        dynamic_threshold(x0, max_scale=0.5)


def test_dynamic_threshold_is_identity_inside_the_range():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    assert torch.equal(dynamic_threshold(x0), x0)


def test_dynamic_threshold_output_range_and_shape():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 3, 16, 16, generator=g) * 4
    out = dynamic_threshold(x0)
    assert out.shape == x0.shape and out.dtype == x0.dtype
    assert out.abs().max() <= 1.0
    # percentile < 1 clips a few pixels to exactly +-1 but far fewer than static clipping saturates
    saturated_dynamic = (out.abs() == 1).float().mean()
    saturated_static = (static_threshold(x0).abs() == 1).float().mean()
    assert saturated_dynamic < 0.01 < saturated_static


def test_dynamic_threshold_matches_torch_quantile():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 3, 10, 10, generator=g, dtype=torch.float64) * 3
    for p in (0.9, 0.995, 0.3):
        s = torch.quantile(x0.abs().reshape(3, -1), p, dim=1).clamp(min=1).view(3, 1, 1, 1)
        torch.testing.assert_close(dynamic_threshold(x0, p), torch.maximum(torch.minimum(x0, s), -s) / s)


def test_dynamic_threshold_is_per_sample():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 3, 6, 6, generator=g) * torch.tensor([0.1, 1.0, 3.0, 10.0]).view(4, 1, 1, 1)
    batched = dynamic_threshold(x0)
    one_by_one = torch.cat([dynamic_threshold(x0[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, one_by_one)


def test_percentile_one_is_max_abs_scaling():
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(6, 3, 5, 5, generator=g) * torch.linspace(0.1, 5, 6).view(6, 1, 1, 1)
    s = x0.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    torch.testing.assert_close(dynamic_threshold(x0, percentile=1.0), x0 / s)


def test_half_precision_keeps_dtype():
    x0 = (torch.arange(24, dtype=torch.float32).view(2, 3, 2, 2) / 4 - 3).half()
    out = dynamic_threshold(x0, percentile=1.0)
    assert out.dtype == torch.float16 and out.abs().max() <= 1


def test_resolve_threshold():
    assert resolve_threshold(None) is None
    assert resolve_threshold("none") is None
    assert resolve_threshold("static") is static_threshold
    assert resolve_threshold("dynamic") is dynamic_threshold
    custom = functools.partial(dynamic_threshold, percentile=0.9)
    assert resolve_threshold(custom) is custom


@pytest.mark.parametrize("percentile", [0.0, -0.1, 1.5, "0.9", True])
def test_bad_percentile(percentile):
    with pytest.raises(ValueError, match="percentile"):
        dynamic_threshold(torch.zeros(1, 3, 2, 2), percentile)


def test_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        resolve_threshold("dinamic")
    with pytest.raises(TypeError, match="threshold"):
        resolve_threshold(0.995)
    with pytest.raises(TypeError, match="x0"):
        dynamic_threshold([1.0, 2.0])
    with pytest.raises(TypeError, match="x0"):
        static_threshold([1.0, 2.0])
    with pytest.raises(ValueError, match="x0"):
        dynamic_threshold(torch.tensor([1, 2]))


def test_dynamic_threshold_specs():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 3, 8, 8, generator=g) * 3
    torch.testing.assert_close(resolve_threshold("dynamic:p=0.9")(x0), dynamic_threshold(x0, 0.9))
    torch.testing.assert_close(resolve_threshold("dynamic:max_s=2")(x0), dynamic_threshold(x0, 0.995, 2.0))
    torch.testing.assert_close(resolve_threshold("dynamic:p=0.9:max_s=1.5")(x0), dynamic_threshold(x0, 0.9, 1.5))
    for bad, message in [("dynamic:q=0.9", "expected settings p="), ("dynamic:p=high", "p must be a number"),
                         ("dynamic:p=0.9:p=0.8", "at most once"), ("dynamic:p=1.5", "percentile"),
                         ("dynamic:max_s=0.5", "max_s|max_scale")]:
        with pytest.raises(ValueError, match=message):
            resolve_threshold(bad)


def test_recording_logs_the_raw_prediction_then_thresholds():
    from minimagen.thresholding import recording

    log = []
    f = recording("static", log)
    x0 = torch.tensor([[[[0.5, -3.0, 2.0, 0.0]]], [[[1.5, 0.2, 0.1, 0.0]]]])  # (2, 1, 1, 4)
    out = f(x0)
    torch.testing.assert_close(out, x0.clamp(-1, 1))  # thresholded as asked
    assert log[0]["outside"] == pytest.approx(3 / 8)  # read before the clip
    s_each = [torch.quantile(x0[b].abs().flatten(), 0.995).item() for b in range(2)]
    assert log[0]["s"] == pytest.approx(min(s_each))  # torch's median of two values is the lower one
    untouched = recording(None, log)(x0)
    assert untouched is x0 and len(log) == 2
    with pytest.raises(TypeError, match="log"):
        recording("static", ())
    with pytest.raises(ValueError, match="percentile"):
        recording("static", [], percentile=1.5)
