"""Classifier-free guidance (Ho & Salimans 2021), as Imagen uses it (Imagen §2.2).

A text-conditional U-Net trained with its caption dropped for ~10% of examples learns both
eps(x_t, c) and eps(x_t, null). At sampling the two are extrapolated:

    eps_hat = w * eps(x_t, c) + (1 - w) * eps(x_t, null)          (Imagen eq. 2)

so w = 1 is the plain conditional model and w > 1 pushes samples towards the caption.

For contrast, ``minimagen.classifier`` holds classifier guidance (Dhariwal & Nichol 2021), what CFG
replaced: a separate classifier trained on noisy images steers an unconditional model.
"""

from __future__ import annotations

import torch

from minimagen import checks
from minimagen.diffusion import ModelFn, eps_from_v, prediction_of



def cfg(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Imagen eq. 2: ``w * eps_cond + (1 - w) * eps_uncond`` (w = 1 means no guidance)."""
    if eps_cond.shape != eps_uncond.shape:
        raise ValueError(
            f"eps_cond and eps_uncond must have the same shape, got {tuple(eps_cond.shape)} "
            f"and {tuple(eps_uncond.shape)}"
        )
    return w * eps_cond + (1.0 - w) * eps_uncond


def guided_model_fn(
    unet: torch.nn.Module,
    text: torch.Tensor | None,
    text_mask: torch.Tensor | None,
    w: float = 1.0,
    schedule=None,
    doubled: bool = True,
    **unet_kwargs,
) -> ModelFn:
    """Close over text and guidance weight: returns ``model_fn(x_t, t) -> eps_hat`` for the samplers.

    With ``w != 1`` the conditional and the null-text halves run as one doubled batch (one forward
    pass per step, as Imagen does); ``doubled=False`` runs them as two passes, the same numbers more slowly
    (``bench/bench_train_paths.py`` measures the difference). ``unet_kwargs`` (e.g. ``lowres``, ``aug_level`` for a
    super-resolution stage) are passed to every call and doubled along with ``x_t``.

    A U-Net that predicts v (``unet.config.prediction == "v"``) needs its ``schedule``: guidance is
    applied to v (a linear map of eps at fixed x_t and t, so the result is the same) and turned into eps.
    """
    checks.number("w", w, minimum=0, note="the guidance weight; w = 1 means no guidance")

    prediction = prediction_of(unet)
    if prediction == "v" and schedule is None:
        raise ValueError("this U-Net predicts v (config.prediction == 'v'): pass schedule= so that "
                         "guided_model_fn can turn v into eps")

    def conditional(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x_t, t, text, text_mask, **unet_kwargs)

    if w == 1.0 or text is None:
        return as_eps(conditional, prediction, schedule)

    if not doubled:
        def two_passes(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            null = torch.ones(x_t.shape[0], dtype=torch.bool, device=x_t.device)
            return cfg(conditional(x_t, t), unet(x_t, t, text, text_mask, text_drop=null, **unet_kwargs), w)
        return as_eps(two_passes, prediction, schedule)

    def one_batch(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x_t.shape[0]
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x_t.device)
        kwargs = {k: torch.cat([v, v]) for k, v in unet_kwargs.items()}
        eps = unet(
            torch.cat([x_t, x_t]),  # (2B, C, H, W): conditional half, then null-text half
            torch.cat([t, t]),
            torch.cat([text, text]),
            torch.cat([text_mask, text_mask]),
            text_drop=drop,
            **kwargs,
        )
        eps_cond, eps_uncond = eps.chunk(2)  # (B, C, H, W) each
        return cfg(eps_cond, eps_uncond, w)

    return as_eps(one_batch, prediction, schedule)


def as_eps(model_fn: ModelFn, prediction: str, schedule) -> ModelFn:
    """``model_fn`` itself for an eps U-Net; for a v U-Net, a wrapper that returns the implied eps."""
    if prediction == "eps":
        return model_fn

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return eps_from_v(model_fn(x_t, t), x_t, t, schedule)

    return eps_fn
