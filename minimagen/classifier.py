"""Classifier guidance (Dhariwal & Nichol 2021, §4), for contrast with classifier-free guidance.

Before classifier-free guidance, a diffusion model was steered by a separate classifier p_phi(y | x_t)
trained on *noisy* images: the gradient of its log-probability pushes each step towards images the
classifier reads as y. In eps form (Dhariwal & Nichol eq. 14, "Algorithm 2"):

    eps_hat = eps(x_t) - s * sqrt(1 - alpha_bar_t) * grad_{x_t} log p_phi(y | x_t)

Its costs: an extra network trained on noisy images, a backward pass through it at every step, and labels
only (y is a fixed set of attributes, not free text). Lesson 06 sets it beside ``minimagen.guidance.cfg``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimagen import checks
from minimagen.checkpoint import load_reader, model_card, save_weights
from minimagen.data import HELD_OUT_SEED, POSITIONS, Shapes, parse_caption
from minimagen.diffusion import ModelFn, prediction_of
from minimagen.guidance import as_eps
from minimagen.metrics import HEADS, IGNORE, attribute_accuracy, fit_attribute_reader, probe_loss, scene_targets
from minimagen.unet import ResBlock, embedding_mlp, timestep_embedding



class NoisyClassifier(nn.Module):
    """Reads Shapes attributes per position from a noisy image x_t and its timestep t.

    The attribute probe's layout (present / colour / shape / size heads for each of the five positions),
    with time-conditioned ResNet blocks so that one network serves every noise level.
    """

    def __init__(self, width: int = 16, feature_dim: int = 128) -> None:
        super().__init__()
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
    total = 0.0
    for name in HEADS:
        logp = F.log_softmax(logits[name].float(), dim=-1)  # (B, positions, classes)
        known = targets[name] != IGNORE  # (B, positions)
        picked = logp.gather(-1, targets[name].clamp(min=0)[..., None])[..., 0]  # (B, positions)
        total = total + (picked * known).sum(1)
    return total


def caption_targets(captions: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The classifier's targets [B, positions] per head for Shapes captions."""
    per_caption = [scene_targets(parse_caption(c)) for c in captions]
    return {name: torch.stack([t[name] for t in per_caption]).to(device) for name in HEADS}


def classifier_guided_model_fn(unet: torch.nn.Module, classifier: NoisyClassifier, schedule, captions: list[str],
                               scale: float) -> ModelFn:
    """``model_fn(x_t, t) -> eps_hat`` for the samplers: the U-Net's *unconditional* eps (null text), pushed
    by ``scale`` times the classifier's gradient towards the captions' attributes (D&N eq. 14). A U-Net
    that predicts v has its v turned into eps first (``guidance.as_eps``), so the formula is the same.

    ``scale = 0`` is the unconditional model. The caption reaches the sample only through the classifier,
    so only what the classifier knows (colour, shape, size, position -- not texture) can be asked for.
    """
    checks.number("scale", scale, minimum=0, note="the classifier guidance scale")
    if not isinstance(captions, list) or not captions:
        raise ValueError("captions must be a non-empty list of Shapes captions")
    targets = caption_targets(captions)
    # The U-Net's unconditional prediction as eps (a v-predicting U-Net's v turned into eps with the schedule).
    unconditional = as_eps(lambda x, t: unet(x, t), prediction_of(unet), schedule)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x_t.shape[0] != len(captions):
            raise ValueError(f"x_t has {x_t.shape[0]} images for {len(captions)} captions")
        eps = unconditional(x_t, t)  # text=None: the null embedding, i.e. eps(x_t, no caption)
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
    def batch_loss(classifier, x0, targets, generator):
        t = torch.randint(schedule.T, (len(x0),), generator=generator)
        x_t = schedule.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
        return probe_loss(classifier(x_t, t), targets)

    with torch.random.fork_rng(devices=[]):  # the initial weights, without touching the caller's global RNG
        torch.manual_seed(seed)
        classifier = NoisyClassifier(width=width)
    losses = fit_attribute_reader(classifier, batch_loss, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                  desc="classifier", progress=progress)
    return classifier.eval(), losses


@torch.no_grad()
def classifier_accuracy(classifier: NoisyClassifier, schedule, n: int = 500, seed: int = HELD_OUT_SEED,
                        levels: tuple[int, ...] = (0, 250, 500, 750, 900)) -> dict[str, dict[str, float]]:
    """The classifier's accuracy per head on ``n`` held-out scenes noised to each timestep in ``levels``
    (the same noise at every level), keyed "t=<level>" and rounded to 4 digits."""
    held_out = Shapes(size=64, length=n, seed=seed)
    x0 = torch.stack([held_out[i][0] for i in range(n)])
    scenes = [held_out.scene(i) for i in range(n)]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    accuracy = {}
    for level in levels:
        t = torch.full((n,), min(level, schedule.T - 1))
        row = attribute_accuracy(lambda x: classifier(x, t), schedule.q_sample(x0, t, noise), scenes)
        accuracy[f"t={int(t[0])}"] = {name: round(value, 4) for name, value in row.items()}
    return accuracy


def save_noisy_classifier(classifier: NoisyClassifier, path, schedule_spec: dict, *, losses: list[float],
                          training: dict, accuracy: dict, eval_n: int) -> None:
    """Ship a classifier (``minimagen classifier``): fp16 safetensors and a card with its schedule (which
    must be the base model's), its training run and its held-out ``accuracy`` on ``eval_n`` scenes per level."""
    config = {"kind": "NoisyClassifier", "width": classifier.width, "feature_dim": classifier.feature_dim}
    card = model_card(
        "classifier", config, sum(p.numel() for p in classifier.parameters()), losses=losses, training=training,
        schedule=schedule_spec, held_out_accuracy=accuracy, held_out_images=eval_n, held_out_seed=HELD_OUT_SEED,
    )
    save_weights(classifier, path, config, card=card, extra={"stage": "classifier", "schedule": schedule_spec})


def load_noisy_classifier(path) -> tuple[NoisyClassifier, dict]:
    """Load a classifier written by ``minimagen classifier``: ``(classifier in eval mode, header)``."""
    return load_reader(path, "NoisyClassifier",
                       lambda c: NoisyClassifier(width=c["width"], feature_dim=c["feature_dim"]))
