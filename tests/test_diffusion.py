"""The ε-prediction objective (DDPM eq. 14) and timestep sampling."""

import math

import pytest
import torch

from minimagen.diffusion import diffusion_loss, sample_timesteps
from minimagen.schedules import NoiseSchedule


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.cosine(100)


def _images(seed, shape=(8, 3, 8, 8), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=dtype) * 2 - 1


def test_sample_timesteps_shape_range_and_uniformity():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(20_000, 10, generator=g)
    assert t.shape == (20_000,) and t.dtype == torch.long
    assert t.min() == 0 and t.max() == 9
    counts = torch.bincount(t, minlength=10).double()
    # each count is Binomial(20000, 0.1): mean 2000, sd ~42
    assert ((counts - 2000).abs() < 5 * math.sqrt(20_000 * 0.1 * 0.9)).all()
    again = sample_timesteps(20_000, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_sample_timesteps_errors():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            sample_timesteps(bad, 10)
        with pytest.raises(ValueError, match="T must"):
            sample_timesteps(4, bad)


def test_oracle_model_has_zero_loss(schedule):
    x0 = _images(1, dtype=torch.float64)

    def oracle(x_t, t):  # knows x0, so it can solve eq. 4 for the noise exactly
        return schedule.predict_eps(x_t, t, x0)

    loss = diffusion_loss(oracle, x0, schedule, generator=torch.Generator().manual_seed(2))
    assert loss.shape == () and loss.item() < 1e-20


def test_zero_model_has_loss_one(schedule):
    # With eps_hat = 0 the loss is the mean of eps^2 over N standard normals: 1, with sd sqrt(2 / N).
    x0 = _images(3, shape=(16, 3, 32, 32))
    loss = diffusion_loss(lambda x_t, t: torch.zeros_like(x_t), x0, schedule,
                          generator=torch.Generator().manual_seed(4))
    assert abs(loss.item() - 1.0) < 5 * math.sqrt(2 / x0.numel())


def test_given_t_and_noise_are_used(schedule):
    x0 = _images(5)
    t = torch.arange(8) * 12
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(6))
    seen = {}

    def model(x_t, t_in):
        seen["x_t"], seen["t"] = x_t, t_in
        return torch.zeros_like(x_t)

    per_sample = diffusion_loss(model, x0, schedule, t=t, noise=noise, reduction="none")
    assert torch.equal(seen["t"], t)
    torch.testing.assert_close(seen["x_t"], schedule.q_sample(x0, t, noise))
    torch.testing.assert_close(per_sample, (noise**2).mean(dim=(1, 2, 3)))
    mean = diffusion_loss(model, x0, schedule, t=t, noise=noise)
    torch.testing.assert_close(mean, per_sample.mean())
    assert per_sample.shape == (8,)


def test_generator_determinism_and_gradient(schedule):
    x0 = _images(7)
    weight = torch.nn.Parameter(torch.tensor(0.5))

    def model(x_t, t):
        return weight * x_t

    a = diffusion_loss(model, x0, schedule, generator=torch.Generator().manual_seed(8))
    b = diffusion_loss(model, x0, schedule, generator=torch.Generator().manual_seed(8))
    c = diffusion_loss(model, x0, schedule, generator=torch.Generator().manual_seed(9))
    assert a.item() == b.item() != c.item()
    a.backward()
    assert weight.grad is not None and weight.grad.abs() > 0


def test_diffusion_loss_errors(schedule):
    x0 = _images(10)
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    with pytest.raises(ValueError, match=r"\bt\b"):
        diffusion_loss(zero, x0, schedule, t=torch.full((8,), 100))
    with pytest.raises(ValueError, match=r"\bt\b"):
        diffusion_loss(zero, x0, schedule, t=torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="noise"):
        diffusion_loss(zero, x0, schedule, noise=torch.zeros(8, 3, 8, 7))
    with pytest.raises(ValueError, match="reduction"):
        diffusion_loss(zero, x0, schedule, reduction="sum")
    with pytest.raises(ValueError, match="model_fn"):
        diffusion_loss(lambda x_t, t: x_t[:, :1], x0, schedule)
    with pytest.raises(TypeError, match="model_fn"):
        diffusion_loss(None, x0, schedule)
    with pytest.raises(TypeError, match="x0"):
        diffusion_loss(zero, x0.tolist(), schedule)


def test_v_target_and_eps_from_v_invert_each_other(schedule):
    from minimagen.diffusion import eps_from_v, v_target

    x0, eps = _images(1), torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 1, 10, 40, 60, 90, 98, 99])
    x_t = schedule.q_sample(x0, t, eps)
    v = v_target(x0, eps, t, schedule)
    torch.testing.assert_close(eps_from_v(v, x_t, t, schedule), eps, rtol=1e-5, atol=1e-5)
    # v is eps at t -> 0 (alpha_bar -> 1) and -x0 at high noise
    ab = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1).float()
    torch.testing.assert_close(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)


def test_v_prediction_loss(schedule):
    from minimagen.diffusion import v_target

    x0, t = _images(3), torch.full((8,), 50)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    oracle = lambda x_t, t_: v_target(x0, eps, t_, schedule)  # noqa: E731
    assert diffusion_loss(oracle, x0, schedule, t=t, noise=eps, prediction="v").item() < 1e-10
    # an eps oracle is wrong as a v model: the loss is the mean square of the difference
    eps_oracle = lambda x_t, t_: eps  # noqa: E731
    expected = (eps - v_target(x0, eps, t, schedule)).square().mean()
    torch.testing.assert_close(diffusion_loss(eps_oracle, x0, schedule, t=t, noise=eps, prediction="v"), expected)
    with pytest.raises(ValueError, match="prediction must be one of"):
        diffusion_loss(oracle, x0, schedule, t=t, noise=eps, prediction="x0")
