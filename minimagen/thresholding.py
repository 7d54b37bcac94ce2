"""Thresholding of the predicted x0 during sampling (Imagen, Saharia et al. 2022, §2.3).

At every sampling step the model's noise prediction implies an estimate x0_hat of the clean image
(``NoiseSchedule.predict_x0``). Training images live in [-1, 1], but x0_hat need not: with a large
classifier-free guidance weight it overshoots, and since each step builds on the last, the error
compounds into saturated, over-exposed samples. Thresholding pulls x0_hat back into range before the
sampler takes its step:

- none: leave x0_hat alone;
- static: clip it to [-1, 1] (what DDPM's reference sampler does);
- dynamic: per sample, rescale by a high percentile of |x0_hat| (Imagen's contribution, below).
"""

from __future__ import annotations

from typing import Callable, Literal, Union

import torch
from torch import Tensor

from minimagen import checks

__all__ = ["static_threshold", "dynamic_threshold", "resolve_threshold", "recording", "Threshold"]

# What samplers accept as ``threshold=``; "none" is an alias of None so a sweep can loop over strings, and
# "dynamic:p=0.9:max_s=2" (see ``resolve_threshold``) names a dynamic threshold with its settings.
Threshold = Union[None, Literal["none", "static", "dynamic"], Callable[[Tensor], Tensor]]


def static_threshold(x0: Tensor) -> Tensor:
    """Static thresholding (Imagen §2.3): clip every pixel of x0_hat to [-1, 1].

    Keeps x0_hat in the data's range, but pixels beyond it all land on exactly +-1, so with large
    guidance weights whole regions saturate.
    """
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a torch.Tensor; got {type(x0).__name__}")
    return x0.clamp(-1.0, 1.0)


def _quantile_per_sample(a: Tensor, q: float) -> Tensor:
    """The q-quantile of each row of ``a`` [B, N] -> [B], interpolating linearly between order statistics.

    Computes what ``torch.quantile(a, q, dim=1)`` computes; that function refuses inputs of more than
    2**24 elements (a batch of a few 1024x1024 images), so we pick the order statistics ourselves.
    """
    n = a.shape[1]
    pos = q * (n - 1)  # fractional rank, 0-based
    lo = int(pos)
    frac = pos - lo
    v_lo = a.kthvalue(lo + 1, dim=1).values  # [B]   (kthvalue counts from 1)
    v_hi = a.kthvalue(min(lo + 2, n), dim=1).values  # [B]
    return v_lo + frac * (v_hi - v_lo)


def dynamic_threshold(x0: Tensor, percentile: float = 0.995, max_scale: float | None = None) -> Tensor:
    """Dynamic thresholding (Imagen §2.3).

    For each sample, let s be the ``percentile`` quantile of the absolute pixel values of x0_hat,
    and never less than 1:

        s = min(max_scale, max(1, quantile(|x0_hat|, percentile)))
        x0_thresholded = clip(x0_hat, -s, s) / s

    Where x0_hat is already inside [-1, 1] (s = 1) nothing changes. Where it overshoots, instead of
    flattening every overshooting pixel onto +-1 (static thresholding), the whole sample is divided
    by s so that it fits again; only the few pixels beyond the percentile are clipped. Pushing
    saturated pixels back inward at every step is what, in Imagen's account, lets the sampler use
    large guidance weights and still produce photorealistic, well-aligned images. Imagen uses a
    high percentile (our default 99.5%).

    ``max_scale`` caps s (no cap by default, as in Imagen): with a cap of, say, 1.5, a sample whose
    x0_hat reaches far beyond [-1, 1] is divided by at most 1.5 and clipped beyond that, which sits between
    dynamic thresholding (no cap) and static thresholding (``max_scale=1``). DeepFloyd IF samples with a cap.

    Args:
        x0: predicted clean images [B, ...] (any trailing shape; the quantile is over each sample).
        percentile: in (0, 1]; 1.0 rescales each sample by its largest |pixel| (when above 1).
        max_scale: None, or a cap >= 1 on s.

    Returns:
        tensor of x0's shape and dtype, in [-1, 1].
    """
    checks.float_tensor("x0", x0)
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not (0 < percentile <= 1):
        raise ValueError(f"percentile must be a number in (0, 1]; got {percentile!r}")
    if max_scale is not None:
        checks.number("max_scale", max_scale, minimum=1.0, note="the cap on s")
    if x0.numel() == 0:
        return x0.clone()
    B = x0.shape[0]
    # Order statistics in at least float32: half precision has too few digits to rank pixels finely.
    work_dtype = torch.promote_types(x0.dtype, torch.float32)
    abs_flat = x0.detach().abs().reshape(B, -1).to(work_dtype)  # [B, N]
    s = _quantile_per_sample(abs_flat, float(percentile)).clamp(min=1.0, max=max_scale)  # [B]
    s = s.to(x0.dtype).reshape(B, *([1] * (x0.ndim - 1)))  # [B, 1, ..., 1]
    return torch.clamp(x0, -s, s) / s


def _dynamic_from_spec(spec: str) -> Callable[[Tensor], Tensor]:
    """``"dynamic:p=0.9"``, ``"dynamic:max_s=2"`` or ``"dynamic:p=0.9:max_s=2"`` -> that dynamic threshold."""
    settings = {}
    for part in spec.split(":")[1:]:
        key, _, value = part.partition("=")
        if key not in ("p", "max_s") or key in settings:
            raise ValueError(f"threshold {spec!r}: expected settings p=<percentile> and max_s=<cap on s>, "
                             f"each at most once, got {part!r}")
        try:
            settings[key] = float(value)
        except ValueError:
            raise ValueError(f"threshold {spec!r}: {key} must be a number, got {value!r}") from None
    percentile, max_scale = settings.get("p", 0.995), settings.get("max_s")
    dynamic_threshold(torch.zeros(1, 1), percentile, max_scale)  # checks the settings now, not mid-sampling

    def threshold(x0: Tensor) -> Tensor:
        return dynamic_threshold(x0, percentile, max_scale)

    return threshold


def resolve_threshold(threshold: Threshold) -> Callable[[Tensor], Tensor] | None:
    """Turn a sampler's ``threshold=`` argument into a function of x0_hat, or None for no thresholding.

    Accepts None or "none", "static", "dynamic" (with the default percentile), a dynamic threshold with its
    settings spelled out, ``"dynamic:p=0.9"`` (the percentile), ``"dynamic:max_s=2"`` (a cap on s) or both,
    ``"dynamic:p=0.9:max_s=2"`` (a sweep can label its rows with these strings), or any callable
    ``f(x0_hat) -> x0_hat``, e.g. ``functools.partial(dynamic_threshold, percentile=0.9)``.
    """
    if threshold is None:
        return None
    if isinstance(threshold, str):
        if threshold.startswith("dynamic:"):
            return _dynamic_from_spec(threshold)
        choices = {"none": None, "static": static_threshold, "dynamic": dynamic_threshold}
        if threshold not in choices:
            raise ValueError(f"threshold must be None, 'none', 'static', 'dynamic', 'dynamic:p=<percentile>"
                             f"[:max_s=<cap>]' or a callable; got {threshold!r}")
        return choices[threshold]
    if callable(threshold):
        return threshold
    raise TypeError(f"threshold must be None, a string or a callable; got {type(threshold).__name__}")


def recording(threshold: Threshold, log: list, percentile: float = 0.995) -> Callable[[Tensor], Tensor]:
    """``threshold`` (anything ``resolve_threshold`` takes) that first appends what it is given to ``log``.

    A sampler thresholds x0_hat once per step, so after sampling ``log`` holds one entry per step, read
    *before* thresholding: ``{"s": the median over the batch of the ``percentile`` quantile of |x0_hat|
    (what dynamic thresholding would divide by, before its floor of 1), "outside": the fraction of
    x0_hat's values beyond [-1, 1]}``. It shows how far, and at which steps, a prediction overshoots.
    """
    checks.number("percentile", percentile, 0.0, 1.0)
    if not isinstance(log, list):
        raise TypeError(f"log must be a list to append to; got {type(log).__name__}")
    apply = resolve_threshold(threshold)

    def record(x0_hat: Tensor) -> Tensor:
        flat = x0_hat.detach().abs().flatten(1).float()
        log.append({"s": _quantile_per_sample(flat, float(percentile)).median().item(),
                    "outside": (flat > 1).float().mean().item()})
        return x0_hat if apply is None else apply(x0_hat)

    return record
