"""Classifier guidance: the noisy classifier's log-probability, its gradient steering eps, and the command."""

import json

import pytest
import torch

from minimagen import classifier as cg, cli
from minimagen.data import Shapes
from minimagen.schedules import schedule_from_spec

SPEC = {"kind": "cosine", "T": 1000, "max_beta": 0.2}


def test_caption_log_prob_prefers_the_right_caption():
    # Logits that put all mass on a scene's true attributes give log p ~ 0 for its caption, much less for another.
    shapes = Shapes(64, length=2, seed=3)
    captions = [shapes[0][1], shapes[1][1]]
    targets = cg.caption_targets(captions)
    logits = {name: torch.where(t[..., None] == torch.arange(6 if name == "colour" else 5 if name == "shape" else 2),
                                10.0, -10.0)[..., : {"present": 2, "colour": 6, "shape": 5, "size": 2}[name]]
              for name, t in targets.items()}
    own = cg.caption_log_prob(logits, targets)
    swapped = cg.caption_log_prob(logits, cg.caption_targets(captions[::-1]))
    assert torch.all(own > -1e-3) and torch.all(swapped < own - 10)


def test_classifier_guidance_moves_eps_along_the_gradient():
    torch.manual_seed(0)
    classifier = cg.NoisyClassifier(width=8, feature_dim=16).eval()
    schedule = schedule_from_spec(SPEC)

    class ZeroUNet(torch.nn.Module):
        def forward(self, x_t, t, text=None, text_mask=None):
            assert text is None  # the unconditional branch
            return torch.zeros_like(x_t)

    captions = ["a large red plain circle on the left", "a small blue striped square at the top"]
    x_t, t = torch.randn(2, 3, 64, 64), torch.tensor([500, 900])
    plain = cg.classifier_guided_model_fn(ZeroUNet(), classifier, schedule, captions, 0.0)(x_t, t)
    assert torch.equal(plain, torch.zeros_like(x_t))
    eps = cg.classifier_guided_model_fn(ZeroUNet(), classifier, schedule, captions, 2.0)(x_t, t)
    x = x_t.clone().requires_grad_(True)
    log_prob = cg.caption_log_prob(classifier(x, t), cg.caption_targets(captions)).sum()
    grad = torch.autograd.grad(log_prob, x)[0]
    sigma = schedule.sqrt_one_minus_alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(eps, -2.0 * sigma * grad)
    # A small step of x_t against eps raises the classifier's log-probability of the captions.
    with torch.no_grad():
        before = cg.caption_log_prob(classifier(x_t, t), cg.caption_targets(captions))
        after = cg.caption_log_prob(classifier(x_t - 1e-2 * eps / eps.norm(), t),
                                          cg.caption_targets(captions))
    assert torch.all(after > before)
    with pytest.raises(ValueError, match="scale must be"):
        cg.classifier_guided_model_fn(ZeroUNet(), classifier, schedule, captions, -1.0)
    with pytest.raises(ValueError, match="captions must be"):
        cg.classifier_guided_model_fn(ZeroUNet(), classifier, schedule, [], 1.0)


def test_classifier_guidance_reads_a_v_predicting_unet_as_eps():
    # A v U-Net that knows the true x0 and eps: unguided, the model_fn must return that eps, not v.
    from types import SimpleNamespace

    from minimagen.diffusion import v_target

    schedule = schedule_from_spec(SPEC)
    g = torch.Generator().manual_seed(0)
    x0, noise, t = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1, torch.randn(2, 3, 64, 64, generator=g), torch.tensor([10, 990])
    x_t = schedule.q_sample(x0, t, noise)

    class OracleV(torch.nn.Module):
        config = SimpleNamespace(prediction="v")

        def forward(self, x, t_, text=None, text_mask=None):
            return v_target(x0, noise, t_, schedule).to(x.dtype)

    classifier = cg.NoisyClassifier(width=8, feature_dim=16).eval()
    captions = ["a large red plain circle on the left", "a small blue striped square at the top"]
    eps = cg.classifier_guided_model_fn(OracleV(), classifier, schedule, captions, 0.0)(x_t, t)
    torch.testing.assert_close(eps, noise, atol=1e-4, rtol=1e-4)


def test_classifier_command_trains_measures_and_ships(tmp_path):
    out = tmp_path / "classifier.safetensors"
    accuracy = cli.main(["classifier", "--out", str(out), "--steps", "30", "--batch-size", "16", "--eval-n", "32",
                         "--quiet", "--threads", "1"])
    card = json.loads(out.with_suffix(".json").read_text())
    assert set(card["held_out_accuracy"]) == {"t=0", "t=250", "t=500", "t=750", "t=900"}
    assert card["schedule"] == SPEC and card["training"]["command"].startswith("minimagen classifier")
    classifier, header = cg.load_noisy_classifier(out)
    assert classifier(torch.zeros(1, 3, 64, 64), torch.tensor([3]))["colour"].shape == (1, 5, 6)
    # 30 steps already read "is there an object here" from clean images better than chance (50%).
    assert card["held_out_accuracy"]["t=0"]["present"] > 0.6
    with pytest.raises(ValueError, match="not a NoisyClassifier"):
        from minimagen.checkpoint import shipped_checkpoint
        cg.load_noisy_classifier(shipped_checkpoint("probe"))
