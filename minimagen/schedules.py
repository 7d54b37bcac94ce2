"""Noise schedules, the forward process and its posterior (DDPM, Ho et al. 2020).

Conventions (see DESIGN.md): timesteps are integer tensors ``t`` of shape ``[B]`` with ``0 <= t < T``.
``t = 0`` is the first noising step and ``alphas_cumprod[t]`` (written alpha_bar_t) belongs to ``x_t``,
as in DDPM's reference code and in ``diffusers``. The paper counts ``t = 1..T``; our ``t`` is the
paper's ``t - 1``, so the paper's ``x_0`` (clean data) is one step *before* our ``t = 0``.

All schedule buffers are float64: alpha_bar_t spans many orders of magnitude (down to ~1e-5 for the
linear schedule), and ``1 - alpha_bar_t`` near ``t = 0`` loses digits in float32. Coefficients are
gathered in float64 and only then cast to the dtype and device of the tensor they multiply.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from minimagen import checks

__all__ = ["linear_betas", "cosine_betas", "NoiseSchedule"]


def _check_T(T: int) -> None:
    checks.integer("T", T, note="the number of diffusion steps")


def linear_betas(T: int = 1000, start: float = 1e-4, end: float = 2e-2) -> Tensor:
    """The linear schedule of DDPM §4: beta_t rises linearly from ``start`` to ``end`` over T steps.

    DDPM uses T = 1000, beta_1 = 1e-4, beta_T = 0.02, so that alpha_bar_T ~ 4e-5 and x_T is almost
    pure noise. The endpoints are *not* rescaled with T: with far fewer steps (say T = 100) the same
    endpoints leave alpha_bar_{T-1} ~ 0.36, so x_T still shows the image; pick larger betas or use
    ``cosine_betas`` for short schedules.

    Returns:
        float64 tensor [T].
    """
    _check_T(T)
    if not (0.0 < start <= end < 1.0):
        raise ValueError(f"start and end must satisfy 0 < start <= end < 1; got start={start}, end={end}")
    return torch.linspace(start, end, T, dtype=torch.float64)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """The cosine schedule of Nichol & Dhariwal 2021 (Improved DDPM), eq. 17.

        alpha_bar(t) = f(t) / f(0),   f(t) = cos^2( (t/T + s) / (1 + s) * pi/2 )

    and beta_t = 1 - alpha_bar(t) / alpha_bar(t-1), clipped at ``max_beta`` (their §3.2) because
    f(T) = 0 would make the last beta exactly 1. The small offset ``s`` keeps beta near t = 0 from
    being too small to matter. In our 0-based indexing ``betas[i]`` is the step from continuous time
    i to i + 1, so (before clipping) ``alphas_cumprod[i] = f(i + 1) / f(0)``.

    The clip sets how much signal is left at the last step. With the paper's 0.999, alpha_bar[T-1] ~ 2e-9,
    so x0_hat = (x_t - sqrt(1 - alpha_bar) eps_hat) / sqrt(alpha_bar) at the first sampling step multiplies
    eps_hat's error by ~20,000. ``minimagen train`` uses 0.2: alpha_bar[T-1] ~ 3e-5, like the linear
    schedule's, and only the last ~10 of 1000 betas change.

    Returns:
        float64 tensor [T].
    """
    _check_T(T)
    if s < 0:
        raise ValueError(f"s must be >= 0 (the offset of Improved DDPM eq. 17); got {s}")
    if not (0.0 < max_beta < 1.0):
        raise ValueError(f"max_beta must be in (0, 1); got {max_beta}")
    steps = torch.arange(T + 1, dtype=torch.float64)  # continuous times 0, 1, ..., T
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2  # [T+1]
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]  # [T]
    return betas.clamp(max=max_beta)


def _check_t(t: Tensor, batch_size: int | None, T: int) -> None:
    """Raise at the boundary if ``t`` is not an integer tensor [B] with 0 <= t < T."""
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be an integer torch.Tensor of shape [B]; got {type(t).__name__}")
    if t.dtype == torch.bool or t.dtype.is_floating_point or t.dtype.is_complex:
        raise ValueError(f"t must be an integer tensor (timestep indices); got dtype {t.dtype}")
    if t.ndim != 1 or (batch_size is not None and t.shape[0] != batch_size):
        expected = "[B]" if batch_size is None else f"[{batch_size}] (the batch size of x)"
        raise ValueError(f"t must have shape {expected}; got {list(t.shape)}")
    if t.numel() > 0:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= T:
            raise ValueError(f"t must satisfy 0 <= t < T={T}; got values in [{lo}, {hi}]")




def _gather(values: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """``values[t]`` reshaped to [B, 1, ..., 1] so it broadcasts over x's trailing dims.

    The lookup happens on the schedule's device (float64 stays exact there); only the B gathered
    numbers are cast to x's dtype and moved to x's device.
    """
    coef = values[t.to(values.device)]  # [B]
    coef = coef.reshape(-1, *([1] * (x.ndim - 1)))  # [B, 1, ..., 1]
    return coef.to(device=x.device, dtype=x.dtype)


class NoiseSchedule:
    """A variance schedule beta_0..beta_{T-1} and everything DDPM derives from it.

    Attributes (float64 tensors [T] unless said otherwise):
        T: number of diffusion steps (int).
        betas: beta_t, the variance added at step t.
        alphas: alpha_t = 1 - beta_t.
        alphas_cumprod: alpha_bar_t = prod_{s <= t} alpha_s (DDPM §2, below eq. 4).
        alphas_cumprod_prev: alpha_bar_{t-1}, with alpha_bar_{-1} = 1 (clean data) first.
        posterior_variance: beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t (DDPM eq. 7).
        posterior_log_variance_clipped: log beta_tilde_t, with the t = 0 entry (where beta_tilde = 0)
            replaced by the t = 1 entry to avoid log(0), as in DDPM's reference code.
        posterior_mean_coef1, posterior_mean_coef2: the weights of x0 and x_t in mu_tilde (DDPM eq. 7).

    Use ``NoiseSchedule.linear(T)`` or ``NoiseSchedule.cosine(T)`` for the standard schedules.
    """

    # The tensors that ``to(device)`` moves.
    _BUFFERS = (
        "betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev",
        "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped",
        "posterior_mean_coef1", "posterior_mean_coef2",
    )

    def __init__(self, betas: Tensor):
        if not isinstance(betas, Tensor):
            raise TypeError(f"betas must be a torch.Tensor; got {type(betas).__name__}")
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor [T]; got shape {list(betas.shape)}")
        if not betas.dtype.is_floating_point:
            raise ValueError(f"betas must be a floating-point tensor; got dtype {betas.dtype}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"every beta must lie in (0, 1); got values in [{float(betas.min())}, {float(betas.max())}]"
            )
        betas = betas.detach().to(torch.float64)
        self.T: int = betas.shape[0]
        self.betas = betas
        self.alphas = 1 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])

        ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        # Forward process (DDPM eq. 4) and its inverse for x0.
        self.sqrt_alphas_cumprod = ab.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - ab).sqrt()
        self.sqrt_recip_alphas_cumprod = (1 / ab).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1 / ab - 1).sqrt()

        # Posterior q(x_{t-1} | x_t, x0) (DDPM eqs. 6-7).
        self.posterior_variance = betas * (1 - ab_prev) / (1 - ab)
        # beta_tilde_0 = 0 exactly (x_{-1} is the data itself). The sampler adds no noise there, so the
        # entry is only replaced to keep the log finite.
        clipped = self.posterior_variance.clone()
        clipped[0] = self.posterior_variance[1] if self.T > 1 else betas[0]
        self.posterior_log_variance_clipped = clipped.log()
        self.posterior_mean_coef1 = betas * ab_prev.sqrt() / (1 - ab)
        self.posterior_mean_coef2 = (1 - ab_prev) * self.alphas.sqrt() / (1 - ab)

    # -- constructors -------------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, start: float = 1e-4, end: float = 2e-2) -> "NoiseSchedule":
        """DDPM's linear schedule; see ``linear_betas``."""
        return cls(linear_betas(T, start, end))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17); see ``cosine_betas``."""
        return cls(cosine_betas(T, s, max_beta))

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """A copy with every buffer on ``device`` (the original is unchanged).

        Optional: the methods accept x and t on any device. Moving the schedule to x's device only
        saves a small transfer per call.
        """
        moved = copy.copy(self)
        for name in self._BUFFERS:
            setattr(moved, name, getattr(self, name).to(device))
        return moved

    def __repr__(self) -> str:
        ab = self.alphas_cumprod
        return (f"NoiseSchedule(T={self.T}, alpha_bar[0]={float(ab[0]):.6g}, "
                f"alpha_bar[T-1]={float(ab[-1]):.3g}, device={self.device})")

    # -- forward process ----------------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x0) in one shot (DDPM eq. 4):

            x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps,   eps = ``noise`` ~ N(0, I)

        The noise is an argument, not drawn here, so the caller owns the randomness (and can use the
        same eps as the regression target of the loss).
        """
        checks.float_tensor("x0", x0)
        _check_t(t, x0.shape[0], self.T)
        checks.same_shape(x0, "x0", noise, "noise")
        return (_gather(self.sqrt_alphas_cumprod, t, x0) * x0
                + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """The x0 implied by x_t and a noise prediction: DDPM eq. 4 solved for x0,

            x0_hat = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)
                   = sqrt(1 / alpha_bar_t) * x_t - sqrt(1 / alpha_bar_t - 1) * eps
        """
        checks.float_tensor("x_t", x_t)
        _check_t(t, x_t.shape[0], self.T)
        checks.same_shape(x_t, "x_t", eps, "eps")
        return (_gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    def predict_eps(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """The noise implied by x_t and an x0 (the inverse of ``predict_x0``; DDPM eq. 4 solved for eps):

            eps = (x_t - sqrt(alpha_bar_t) * x0) / sqrt(1 - alpha_bar_t)

        Samplers use it after thresholding x0_hat, so that eps and x0_hat describe the same x_t.
        """
        checks.float_tensor("x_t", x_t)
        _check_t(t, x_t.shape[0], self.T)
        checks.same_shape(x_t, "x_t", x0, "x0")
        return ((x_t - _gather(self.sqrt_alphas_cumprod, t, x_t) * x0)
                / _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t))

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of the posterior q(x_{t-1} | x_t, x0) (DDPM eqs. 6-7):

            mu_tilde   = sqrt(alpha_bar_{t-1}) * beta_t / (1 - alpha_bar_t) * x0
                         + sqrt(alpha_t) * (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t
            beta_tilde = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t

        At t = 0 the posterior is a point mass on x0 (mean x0, variance 0).

        Returns:
            mean with x's shape, and variance of shape [B, 1, ..., 1] (broadcastable to x).
        """
        checks.float_tensor("x_t", x_t)
        _check_t(t, x_t.shape[0], self.T)
        checks.same_shape(x_t, "x_t", x0, "x0")
        mean = (_gather(self.posterior_mean_coef1, t, x_t) * x0
                + _gather(self.posterior_mean_coef2, t, x_t) * x_t)
        variance = _gather(self.posterior_variance, t, x_t)  # [B, 1, ..., 1]
        return mean, variance

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio of x_t: SNR(t) = alpha_bar_t / (1 - alpha_bar_t), the squared ratio of
        the signal and noise coefficients in DDPM eq. 4 (the quantity Variational Diffusion Models,
        Kingma et al. 2021, parametrise schedules by).

        Returns:
            float64 tensor [B] on t's device.
        """
        _check_t(t, None, self.T)
        ab = self.alphas_cumprod[t.to(self.device)]  # [B]
        return (ab / (1 - ab)).to(t.device)


def schedule_from_spec(spec: dict) -> NoiseSchedule:
    """The schedule a model card records: ``{"kind": "cosine" | "linear", "T": ..., "max_beta": ...}``."""
    kind = spec.get("kind")
    if kind == "cosine":
        return NoiseSchedule.cosine(spec["T"], max_beta=spec.get("max_beta", 0.999))
    if kind == "linear":
        return NoiseSchedule.linear(spec["T"])
    raise ValueError(f"unknown schedule kind {kind!r}: expected 'cosine' or 'linear'")
