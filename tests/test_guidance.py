"""Classifier-free guidance: Imagen eq. 2 and the doubled batch."""

import pytest
import torch

from minimagen.guidance import cfg, guided_model_fn
from minimagen.unet import UNet, UNetConfig


def test_cfg_is_imagens_extrapolation():
    c, u = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(cfg(c, u, 1.0), c)  # w = 1: no guidance
    torch.testing.assert_close(cfg(c, u, 0.0), u)  # w = 0: unconditional
    torch.testing.assert_close(cfg(c, u, 3.0), u + 3.0 * (c - u))
    with pytest.raises(ValueError, match="same shape"):
        cfg(c, u[:1], 2.0)


@pytest.fixture(scope="module")
def text_unet():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(image_size=16, channels=16, channel_mults=(1, 2), blocks_per_level=(1, 1),
                           self_attention_levels=(False, False), cross_attention_levels=(False, True),
                           text_dim=8, num_heads=2)).eval()
    with torch.no_grad():  # the output layer starts at zero; give it weights so eps depends on the text
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return unet


def test_doubled_batch_equals_two_separate_passes(text_unet):
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([5, 50, 500])
    text, mask = torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.bool)
    with torch.no_grad():
        eps_c = text_unet(x, t, text, mask)
        eps_u = text_unet(x, t)  # text=None is the null caption
        guided = guided_model_fn(text_unet, text, mask, w=4.0)(x, t)
    torch.testing.assert_close(guided, cfg(eps_c, eps_u, 4.0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(eps_c, eps_u)
    with torch.no_grad():
        two_passes = guided_model_fn(text_unet, text, mask, w=4.0, doubled=False)(x, t)
    torch.testing.assert_close(two_passes, guided, rtol=1e-4, atol=1e-5)


def test_w_one_is_a_single_conditional_pass(text_unet):
    calls = []
    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return text_unet(*args, **kwargs)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    text, mask = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool)
    guided_model_fn(counting, text, mask, w=1.0)(x, t)
    guided_model_fn(counting, text, mask, w=2.0)(x, t)
    assert calls == [2, 4]  # w = 1: batch B; w != 1: one doubled batch 2B


def test_guidance_weight_is_checked(text_unet):
    with pytest.raises(ValueError, match="w must be >= 0"):
        guided_model_fn(text_unet, None, None, w=-1.0)
    with pytest.raises(TypeError, match="w must be a number"):
        guided_model_fn(text_unet, None, None, w="3")


def test_a_v_unet_is_turned_into_eps_and_needs_its_schedule():
    from minimagen.diffusion import eps_from_v
    from minimagen.schedules import NoiseSchedule

    torch.manual_seed(0)
    unet = UNet(UNetConfig(image_size=16, channels=16, channel_mults=(1, 2), blocks_per_level=(1, 1),
                           self_attention_levels=(False, False), cross_attention_levels=(False, True),
                           text_dim=8, num_heads=2, prediction="v")).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    schedule = NoiseSchedule.cosine(1000)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    text, mask = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="predicts v"):
        guided_model_fn(unet, text, mask, w=2.0)
    with torch.no_grad():
        v_c, v_u = unet(x, t, text, mask), unet(x, t)
        for w in (1.0, 2.0):
            got = guided_model_fn(unet, text, mask, w=w, schedule=schedule)(x, t)
            want = eps_from_v(v_c if w == 1.0 else cfg(v_c, v_u, w), x, t, schedule)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_unknown_prediction_is_refused():
    with pytest.raises(ValueError, match="prediction must be 'eps' or 'v'"):
        UNetConfig(image_size=16, prediction="x0")
