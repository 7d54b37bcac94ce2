"""Classifier-free guidance (Ho & Salimans 2021), as Imagen uses it (Imagen §2.2).

A text-conditional U-Net trained with its caption dropped for ~10% of examples learns both
eps(x_t, c) and eps(x_t, null). At sampling the two are extrapolated:

    eps_hat = w * eps(x_t, c) + (1 - w) * eps(x_t, null)          (Imagen eq. 2)

so w = 1 is the plain conditional model and w > 1 pushes samples towards the caption.

For contrast, the second half of the module is classifier guidance (Dhariwal & Nichol 2021), what CFG
replaced: a separate classifier trained on noisy images steers an unconditional model.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimagen.data import POSITIONS

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
    **unet_kwargs,
) -> ModelFn:
    """Close over text and guidance weight: returns ``model_fn(x_t, t) -> eps_hat`` for the samplers.

    With ``w != 1`` the conditional and the null-text halves run as one doubled batch (one forward
    pass per step, as Imagen does). ``unet_kwargs`` (e.g. ``lowres``, ``aug_level`` for a
    super-resolution stage) are passed to every call and doubled along with ``x_t``.

    A U-Net that predicts v (``unet.config.prediction == "v"``) needs its ``schedule``: guidance is
    applied to v (a linear map of eps at fixed x_t and t, so the result is the same) and turned into eps.
    """
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise TypeError(f"w must be a number (the guidance weight), got {type(w).__name__}")
    if w < 0:
        raise ValueError(f"w must be >= 0 (w = 1 means no guidance), got {w}")

    from minimagen.diffusion import prediction_of

    prediction = prediction_of(unet)
    if prediction == "v" and schedule is None:
        raise ValueError("this U-Net predicts v (config.prediction == 'v'): pass schedule= so that "
                         "guided_model_fn can turn v into eps")

    def conditional(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x_t, t, text, text_mask, **unet_kwargs)

    if w == 1.0 or text is None:
        return as_eps(conditional, prediction, schedule)

    def doubled(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
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

    return as_eps(doubled, prediction, schedule)


def as_eps(model_fn: ModelFn, prediction: str, schedule) -> ModelFn:
    """``model_fn`` itself for an eps U-Net; for a v U-Net, a wrapper that returns the implied eps."""
    if prediction == "eps":
        return model_fn
    from minimagen.diffusion import eps_from_v

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return eps_from_v(model_fn(x_t, t), x_t, t, schedule)

    return eps_fn


# -- classifier guidance, for contrast (Dhariwal & Nichol 2021, §4) ----------------------------------------
#
# Before classifier-free guidance, a diffusion model was steered by a separate classifier p_phi(y | x_t)
# trained on *noisy* images: the gradient of its log-probability pushes each step towards images the
# classifier reads as y. In eps form (Dhariwal & Nichol eq. 14, "Algorithm 2"):
#
#     eps_hat = eps(x_t) - s * sqrt(1 - alpha_bar_t) * grad_{x_t} log p_phi(y | x_t)
#
# Its costs are the ones the seed names: an extra network trained on noisy images, a backward pass through
# it at every step, and labels only (y is a fixed set of attributes, not free text).


class NoisyClassifier(nn.Module):
    """Reads Shapes attributes per position from a noisy image x_t and its timestep t.

    The attribute probe's layout (present / colour / shape / size heads for each of the five positions),
    with time-conditioned ResNet blocks so that one network serves every noise level.
    """

    def __init__(self, width: int = 16, feature_dim: int = 128) -> None:
        super().__init__()
        from minimagen.metrics import HEADS
        from minimagen.unet import ResBlock, embedding_mlp

        self.width, self.feature_dim = width, feature_dim
        cond_dim = 4 * width
        self.time_mlp = embedding_mlp(width, cond_dim)
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        widths = (width, 2 * width, 4 * width, 4 * width)  # 64 -> 32 -> 16 -> 8 -> 4 px
        self.blocks = nn.ModuleList(ResBlock(a, b, cond_dim, groups=8, dropout=0.0)
                                    for a, b in zip((width,) + widths[:-1], widths))
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * 16, feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(POSITIONS) * k) for name, k in HEADS.items()})

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        from minimagen.unet import timestep_embedding

        if x_t.ndim != 4 or x_t.shape[1:] != (3, 64, 64):
            raise ValueError(f"the classifier reads [B, 3, 64, 64] images, got shape {list(x_t.shape)}")
        cond = self.time_mlp(timestep_embedding(t, self.width))  # (B, cond_dim)
        h = self.stem(x_t)  # (B, width, 64, 64)
        for block in self.blocks:
            h = F.avg_pool2d(block(h, cond), 2)  # halves H and W
        h = self.features(h)  # (B, feature_dim)
        return {name: head(h).view(len(h), len(POSITIONS), -1) for name, head in self.heads.items()}


def caption_log_prob(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(caption | x_t) per image [B]: the sum of the log-probabilities of every attribute the caption
    fixes (which positions hold an object; colour, shape and size of each object)."""
    from minimagen.metrics import HEADS, IGNORE

    total = 0.0
    for name in HEADS:
        logp = F.log_softmax(logits[name].float(), dim=-1)  # (B, positions, classes)
        known = targets[name] != IGNORE  # (B, positions)
        picked = logp.gather(-1, targets[name].clamp(min=0)[..., None])[..., 0]  # (B, positions)
        total = total + (picked * known).sum(1)
    return total


def caption_targets(captions: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The classifier's targets [B, positions] per head for Shapes captions."""
    from minimagen.data import parse_caption
    from minimagen.metrics import HEADS, scene_targets

    per_caption = [scene_targets(parse_caption(c)) for c in captions]
    return {name: torch.stack([t[name] for t in per_caption]).to(device) for name in HEADS}


def classifier_guided_model_fn(unet: torch.nn.Module, classifier: NoisyClassifier, schedule, captions: list[str],
                               scale: float) -> ModelFn:
    """``model_fn(x_t, t) -> eps_hat`` for the samplers: the U-Net's *unconditional* eps (null text), pushed
    by ``scale`` times the classifier's gradient towards the captions' attributes (D&N eq. 14).

    ``scale = 0`` is the unconditional model. The caption reaches the sample only through the classifier,
    so only what the classifier knows (colour, shape, size, position -- not texture) can be asked for.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise ValueError(f"scale must be a number >= 0 (the classifier guidance scale), got {scale!r}")
    if not isinstance(captions, list) or not captions:
        raise ValueError("captions must be a non-empty list of Shapes captions")
    targets = caption_targets(captions)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x_t.shape[0] != len(captions):
            raise ValueError(f"x_t has {x_t.shape[0]} images for {len(captions)} captions")
        eps = unet(x_t, t)  # text=None: the null embedding, i.e. eps(x_t, no caption)
        if scale == 0:
            return eps
        with torch.enable_grad():  # samplers run under no_grad; the guidance needs one gradient
            x = x_t.detach().requires_grad_(True)
            log_prob = caption_log_prob(classifier(x, t), {k: v.to(x.device) for k, v in targets.items()})
            grad = torch.autograd.grad(log_prob.sum(), x)[0]  # (B, 3, H, W): each image's own gradient
        sigma = schedule.sqrt_one_minus_alphas_cumprod.to(x_t.device, x_t.dtype)[t].view(-1, 1, 1, 1)
        return eps - scale * sigma * grad

    return model_fn


def train_noisy_classifier(schedule, steps: int = 3000, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
                           width: int = 16, progress: bool = True) -> tuple[NoisyClassifier, list[float]]:
    """Train a ``NoisyClassifier`` on x_t = q_sample(Shapes render, t, eps) at uniformly drawn t (AdamW,
    cosine learning-rate decay). Returns the classifier (eval mode) and its per-step loss."""
    from minimagen.metrics import fit_attribute_reader, probe_loss

    def batch_loss(classifier, x0, targets, generator):
        t = torch.randint(schedule.T, (len(x0),), generator=generator)
        x_t = schedule.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
        return probe_loss(classifier(x_t, t), targets)

    torch.manual_seed(seed)  # initial weights
    classifier = NoisyClassifier(width=width)
    losses = fit_attribute_reader(classifier, batch_loss, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                  desc="classifier", progress=progress)
    return classifier.eval(), losses


def load_noisy_classifier(path) -> tuple[NoisyClassifier, dict]:
    """Load a classifier written by ``minimagen classifier``: ``(classifier in eval mode, header)``."""
    from minimagen.checkpoint import load_state_strict, read_weights

    state, header = read_weights(path)
    config = header.get("config", {})
    if config.get("kind") != "NoisyClassifier":
        raise ValueError(f"checkpoint {str(path)!r} holds a {config.get('kind')!r}, not a NoisyClassifier")
    classifier = NoisyClassifier(width=config["width"], feature_dim=config["feature_dim"])
    load_state_strict(classifier, state, path)
    return classifier.eval(), header
