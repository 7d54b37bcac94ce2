"""The training objective: predict the noise that was added (DDPM, Ho et al. 2020, §3.4).

Training step, for a batch of clean images x0:

    t   ~ Uniform{0, ..., T-1}                        (one timestep per sample)
    eps ~ N(0, I)
    x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps      (DDPM eq. 4)
    loss = || eps - eps_theta(x_t, t) ||^2                            (DDPM eq. 14, "L_simple")

DDPM found that this unweighted ε-prediction loss trains better than the variational bound; Imagen
trains all of its U-Nets with it.

A U-Net may instead predict v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x0 (Salimans & Ho 2022,
"Progressive distillation", §4; Imagen Video trains every stage this way). Both carry the same information
(eps = sqrt(alpha_bar_t) * v + sqrt(1 - alpha_bar_t) * x_t), but they weigh errors differently: with eps,
an error in the implied x0 costs alpha_bar_t / (1 - alpha_bar_t) times its square, which is ~3e-5 at the
last timestep, so an eps model never learns what x0 is at high noise; with v it costs 1 + that, never less
than 1. A super-resolution stage, whose low-res input tells it x0 even at t = T, needs the second.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from minimagen import checks
from minimagen.schedules import NoiseSchedule, _gather

__all__ = ["PREDICTIONS", "ModelFn", "draw_device", "sample_timesteps", "diffusion_loss", "v_target", "eps_from_v", "prediction_of"]

PREDICTIONS = ("eps", "v")  # what a U-Net's output means

ModelFn = Callable[[Tensor, Tensor], Tensor]


def draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where to draw random numbers: on ``generator``'s own device (a torch.Generator draws only there), else
    on ``device``. Drawing there and moving the result makes a CPU generator give the same numbers whether
    the model runs on the CPU or a GPU."""
    return generator.device if generator is not None else device


def sample_timesteps(
    batch_size: int,
    T: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw one timestep per sample, uniformly from {0, ..., T-1} (DDPM Algorithm 1, line 3).

    Returns:
        LongTensor [batch_size] on ``device`` (CPU by default).
    """
    checks.integer("batch_size", batch_size)
    checks.integer("T", T)
    device = torch.device(device) if device is not None else torch.device("cpu")
    t = torch.randint(0, T, (batch_size,), generator=generator, device=draw_device(generator, device))
    return t.to(device)


def prediction_of(model) -> str:
    """What ``model``'s output means: its ``config.prediction`` ("eps" or "v"); "eps" for a model without one."""
    return getattr(getattr(model, "config", None), "prediction", "eps")


def v_target(x0: Tensor, noise: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x0, the target of a v-predicting U-Net."""
    return (_gather(schedule.sqrt_alphas_cumprod, t, x0) * noise
            - _gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0)


def eps_from_v(v: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """The eps a v prediction implies: sqrt(alpha_bar_t) * v + sqrt(1 - alpha_bar_t) * x_t (exact, since
    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps and the two coefficients' squares sum to 1)."""
    return (_gather(schedule.sqrt_alphas_cumprod, t, x_t) * v
            + _gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t)


def diffusion_loss(
    model_fn: ModelFn,
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: Literal["mean", "none"] = "mean",
    prediction: str = "eps",
) -> Tensor:
    """The ε-prediction mean-squared error L_simple (DDPM eq. 14), or its v-prediction twin.

    Args:
        model_fn: ``model_fn(x_t, t) -> eps_hat`` of x_t's shape (a U-Net, or a closure over one and
            its conditioning).
        x0: clean images [B, C, H, W] (any [B, ...] works).
        schedule: the noise schedule that defines x_t.
        t: timesteps [B]; drawn uniformly with ``generator`` if None.
        noise: eps of x0's shape; drawn from N(0, I) with ``generator`` if None. When both are drawn,
            t is drawn first.
        generator: the source of randomness for t and noise.
        reduction: "mean" gives a scalar; "none" gives the per-sample loss [B] (each sample's mean
            over its pixels), e.g. to inspect the loss as a function of t.
        prediction: "eps" (``model_fn`` predicts the noise) or "v" (it predicts ``v_target``).

    Returns:
        scalar tensor, or [B] for reduction="none"; in float32 or wider.
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable as model_fn(x_t, t); got {type(model_fn).__name__}")
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a torch.Tensor; got {type(x0).__name__}")
    if x0.ndim < 1 or not x0.dtype.is_floating_point:
        raise ValueError(f"x0 must be a floating-point tensor [B, ...]; got dtype {x0.dtype}, "
                         f"shape {list(x0.shape)}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}; got {prediction!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
    B = x0.shape[0]
    if t is None:
        t = sample_timesteps(B, schedule.T, generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                            device=draw_device(generator, x0.device)).to(x0.device)

    x_t = schedule.q_sample(x0, t, noise)  # also checks a given t ([B], 0 <= t < T) and noise's shape
    eps_hat = model_fn(x_t, t)
    if not isinstance(eps_hat, Tensor) or eps_hat.shape != x0.shape:
        got = list(eps_hat.shape) if isinstance(eps_hat, Tensor) else type(eps_hat).__name__
        raise ValueError(f"model_fn must return eps of shape {list(x0.shape)} (the shape of x_t); got {got}")

    # Under mixed precision eps_hat may be float16; square the error in at least float32 so that
    # small errors late in training are not rounded to zero.
    dtype = torch.promote_types(eps_hat.dtype, torch.float32)
    target = noise if prediction == "eps" else v_target(x0, noise, t, schedule)
    sq_err = (eps_hat.to(dtype) - target.to(dtype)) ** 2  # [B, ...]
    per_sample = sq_err.reshape(B, -1).mean(dim=1)  # [B]
    return per_sample if reduction == "none" else per_sample.mean()
