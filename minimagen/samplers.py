"""Sampling loops: ancestral DDPM (Ho et al. 2020) and DDIM (Song et al. 2021).

Both samplers take any ``model_fn(x_t, t) -> eps`` -- a U-Net, or a closure that adds text
conditioning and classifier-free guidance -- so that each idea can be tested on its own. Each step:

    eps    = model_fn(x_t, t)
    x0_hat = predict_x0(x_t, t, eps)        DDPM eq. 4 solved for x0
    x0_hat = threshold(x0_hat)              optional (Imagen §2.3)
    x_prev = step(x_t, x0_hat, ...)         DDPM posterior, or DDIM eq. 12

Randomness: x_T is drawn first (unless given), then one N(0, I) draw per step except the last, all
from ``generator`` and in the same order in both samplers. That is why ``ddim_sample(..., steps=T,
eta=1.0)`` reproduces ``ddpm_sample`` for the same seed: with eta = 1 on every step, DDIM's sigma_t
is exactly DDPM's posterior standard deviation (DDIM §4.1).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from minimagen import checks
from minimagen.diffusion import ModelFn, draw_device
from minimagen.schedules import NoiseSchedule
from minimagen.thresholding import Threshold, resolve_threshold

__all__ = ["ddpm_sample", "ddim_sample", "ddim_timesteps"]

# callback(i, t, x_t, x0_hat): step index i, timestep t, the state entering the step, and its
# (thresholded) x0 prediction; e.g. to plot how x0_hat sharpens during sampling.
Callback = Callable[[int, int, Tensor, Tensor], None]


def _check_model_fn(model_fn) -> None:
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable as model_fn(x_t, t) -> eps; got {type(model_fn).__name__}")


def _initial_noise(shape, x_T, generator, device) -> Tensor:
    """x_T as given (moved to ``device``), or a fresh N(0, I) draw from ``generator``."""
    if x_T is None:
        return _randn(shape, generator, device, torch.float32)
    if not isinstance(x_T, Tensor) or not x_T.dtype.is_floating_point:
        raise TypeError(f"x_T must be a floating-point torch.Tensor; got {type(x_T).__name__}")
    if tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must have shape {list(shape)} (the shape argument); got {list(x_T.shape)}")
    return x_T.to(device)


def _randn(shape, generator, device, dtype) -> Tensor:
    # Drawn on the generator's device and moved, so a seed gives the same samples on CPU and GPU.
    return torch.randn(shape, generator=generator, device=draw_device(generator, device), dtype=dtype).to(device)


def _resolve_device(device, x_T) -> torch.device:
    if device is not None:
        return torch.device(device)
    return x_T.device if isinstance(x_T, Tensor) else torch.device("cpu")


def _predict(model_fn, schedule, x_t, t, threshold_fn) -> tuple[Tensor, Tensor]:
    """eps and x0_hat at (x_t, t); when x0_hat is thresholded, eps is recomputed to match it."""
    eps = model_fn(x_t, t)
    if not isinstance(eps, Tensor) or eps.shape != x_t.shape:
        got = list(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__
        raise ValueError(f"model_fn must return eps of shape {list(x_t.shape)} (the shape of x_t); got {got}")
    x0_hat = schedule.predict_x0(x_t, t, eps)
    if threshold_fn is not None:
        x0_hat = threshold_fn(x0_hat)
        eps = schedule.predict_eps(x_t, t, x0_hat)
    return eps, x0_hat


@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn,
    shape: Sequence[int],
    schedule: NoiseSchedule,
    *,
    threshold: Threshold = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling (DDPM Algorithm 2), one model call per timestep t = T-1, ..., 0.

    Each step predicts x0_hat, optionally thresholds it, and samples from the posterior given it
    (DDPM eqs. 6-7):

        x_{t-1} ~ q(x_{t-1} | x_t, x0_hat) = N(mu_tilde(x_t, x0_hat), beta_tilde_t I)

    Without thresholding mu_tilde(x_t, x0_hat) equals DDPM eq. 11,
    1/sqrt(alpha_t) * (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps), with sigma_t^2 = beta_tilde_t. With
    it, this is how Imagen (§2.3) and DDPM's reference code apply clipping: through x0_hat.
    The last step (t = 0) adds no noise; its posterior mean is x0_hat itself, which is returned.

    Args:
        model_fn: ``model_fn(x_t, t) -> eps`` with t a LongTensor [B] on ``device``.
        shape: (B, C, H, W) of the samples.
        schedule: the noise schedule the model was trained with.
        threshold: None, "none", "static", "dynamic" or a callable on x0_hat (``resolve_threshold``).
        generator: source of x_T and of the per-step noise.
        x_T: the starting noise [shape]; drawn from ``generator`` if None. Its dtype sets the
            sampler's dtype (float32 otherwise).
        device: where to sample; defaults to x_T's device, else CPU.
        progress: show a tqdm progress bar.
        callback: called as ``callback(i, t, x_t, x0_hat)`` at every step.

    Returns:
        the samples x0 [shape], not clipped (clamp to [-1, 1] to display them).
    """
    _check_model_fn(model_fn)
    shape = checks.batch_shape("shape", shape)
    threshold_fn = resolve_threshold(threshold)
    device = _resolve_device(device, x_T)
    x_t = _initial_noise(shape, x_T, generator, device)

    for i, step in enumerate(tqdm(range(schedule.T - 1, -1, -1), desc="DDPM sampling", disable=not progress)):
        t = torch.full((shape[0],), step, dtype=torch.long, device=device)  # [B]
        _, x0_hat = _predict(model_fn, schedule, x_t, t, threshold_fn)
        if callback is not None:
            callback(i, step, x_t, x0_hat)
        mean, variance = schedule.q_posterior(x0_hat, x_t, t)  # [B, C, H, W], [B, 1, 1, 1]
        if step > 0:
            # sqrt(beta_tilde_t) equals the reference code's exp(0.5 * clipped log variance) for t > 0;
            # the clipping there only matters at t = 0, where no noise is added.
            x_t = mean + variance.sqrt() * _randn(shape, generator, device, x_t.dtype)
        else:
            x_t = mean
    return x_t


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """The ``steps`` timesteps a DDIM sampler visits, in the order visited: T-1 first, 0 last.

    They are the rounded points of an even grid from 0 to T-1, t_i = round(i * (T-1) / (steps-1)),
    i.e. the "linear" subsequence of DDIM §4.2 laid over our 0-based timesteps so that sampling starts
    from the noisiest x_{T-1} and ends with the step that predicts x0. Spacing is at least 1, so the
    timesteps are distinct; ``steps = T`` visits every timestep. ``steps = 1`` is the single step
    from T-1 straight to x0_hat.
    """
    checks.integer("steps", steps, 1, T, note=f"at most T={T}")
    if steps == 1:
        return [T - 1]
    # Integer round-half-up of i * (T-1) / (steps-1), exact for every T.
    ascending = [(i * (T - 1) + (steps - 1) // 2) // (steps - 1) for i in range(steps)]
    return ascending[::-1]


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    shape: Sequence[int],
    schedule: NoiseSchedule,
    *,
    steps: int = 50,
    eta: float = 0.0,
    threshold: Threshold = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    callback: Callback | None = None,
) -> Tensor:
    """DDIM sampling (Song et al. 2021) over ``steps`` timesteps chosen by ``ddim_timesteps``.

    From timestep t to the next visited one, t' < t (with alpha_bar_{t'} = 1 after the last step),
    DDIM eq. 12 reads

        x_{t'} = sqrt(alpha_bar_{t'}) * x0_hat                       "predicted x0"
                 + sqrt(1 - alpha_bar_{t'} - sigma_t^2) * eps        "direction pointing to x_t"
                 + sigma_t * z,                   z ~ N(0, I)        "random noise"

    with, DDIM eq. 16,

        sigma_t(eta) = eta * sqrt((1 - alpha_bar_{t'}) / (1 - alpha_bar_t))
                           * sqrt(1 - alpha_bar_t / alpha_bar_{t'})

    eta = 0 is the deterministic DDIM (no noise is drawn after x_T); eta = 1 over all T steps is
    DDPM ancestral sampling. When x0_hat is thresholded, eps is recomputed from it
    (``predict_eps``) so that both terms describe the same x_t.

    Args:
        steps: number of model calls, 1 <= steps <= T.
        eta: in [0, 1]; interpolates between deterministic DDIM (0) and DDPM-like noise (1).
        (others as in ``ddpm_sample``)

    Returns:
        the samples x0 [shape], not clipped.
    """
    _check_model_fn(model_fn)
    shape = checks.batch_shape("shape", shape)
    timesteps = ddim_timesteps(schedule.T, steps)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (0.0 <= eta <= 1.0):
        raise ValueError(f"eta must be a number in [0, 1]; got {eta!r}")
    threshold_fn = resolve_threshold(threshold)
    device = _resolve_device(device, x_T)
    x_t = _initial_noise(shape, x_T, generator, device)

    alpha_bar = schedule.alphas_cumprod.tolist()  # python floats are float64
    for i, step in enumerate(tqdm(timesteps, desc="DDIM sampling", disable=not progress)):
        t = torch.full((shape[0],), step, dtype=torch.long, device=device)  # [B]
        eps, x0_hat = _predict(model_fn, schedule, x_t, t, threshold_fn)
        if callback is not None:
            callback(i, step, x_t, x0_hat)
        ab = alpha_bar[step]
        ab_prev = alpha_bar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        # For eta <= 1, sigma^2 <= 1 - ab_prev; max() only absorbs rounding.
        direction = math.sqrt(max(1 - ab_prev - sigma**2, 0.0))
        x_t = math.sqrt(ab_prev) * x0_hat + direction * eps
        if sigma > 0:
            # sigma = 0 at the last step (alpha_bar_{t'} = 1), so with eta > 0 the draws follow
            # ddpm_sample's order, and eta = 0 uses no randomness after x_T.
            x_t = x_t + sigma * _randn(shape, generator, device, x_t.dtype)
    return x_t
