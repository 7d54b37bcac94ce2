"""Noise schedules and the forward process: closed forms, inverses and a brute-force posterior."""

import math

import pytest
import torch

from minimagen.schedules import NoiseSchedule, cosine_betas, linear_betas


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.linear(1000)


# -- betas -----------------------------------------------------------------------------------------

def test_linear_betas_shape_dtype_endpoints():
    betas = linear_betas(1000)
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(2e-2, rel=1e-12)
    assert (betas.diff() > 0).all()
    # evenly spaced
    torch.testing.assert_close(betas.diff(), torch.full((999,), (2e-2 - 1e-4) / 999, dtype=torch.float64))
    assert linear_betas(1).shape == (1,)


def test_cosine_alpha_bar_matches_closed_form():
    T, s = 1000, 0.008
    schedule = NoiseSchedule.cosine(T)

    def f(time):
        return math.cos((time / T + s) / (1 + s) * math.pi / 2) ** 2

    # alphas_cumprod[t] belongs to x_t, the state after continuous time t + 1 (Improved DDPM eq. 17).
    expected = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    # The last beta is clipped to 0.999 (f(T) = 0), so compare everything before it.
    torch.testing.assert_close(schedule.alphas_cumprod[:-1], expected[:-1], rtol=1e-10, atol=1e-13)
    betas = cosine_betas(T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert betas.max().item() == pytest.approx(0.999)
    assert (betas <= 0.999).all() and (betas > 0).all()


def test_schedule_buffers(schedule):
    T = schedule.T
    assert T == 1000
    for name in ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        value = getattr(schedule, name)
        assert value.shape == (T,) and value.dtype == torch.float64, name
    ab = schedule.alphas_cumprod
    # alpha_bar_t as a running product, written out
    running, expected = 1.0, []
    for beta in schedule.betas.tolist():
        running *= 1 - beta
        expected.append(running)
    torch.testing.assert_close(ab, torch.tensor(expected, dtype=torch.float64))
    assert (ab.diff() < 0).all(), "alpha_bar must decrease monotonically"
    assert 0 < ab[-1] < 1e-4 < ab[0] < 1
    assert schedule.alphas_cumprod_prev[0] == 1.0
    torch.testing.assert_close(schedule.alphas_cumprod_prev[1:], ab[:-1])
    assert schedule.posterior_variance[0] == 0.0
    assert torch.isfinite(schedule.posterior_log_variance_clipped).all()
    torch.testing.assert_close(schedule.posterior_log_variance_clipped[1:], schedule.posterior_variance[1:].log())


# -- forward process -------------------------------------------------------------------------------

def test_q_sample_statistics(schedule):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 100, 500, 999])
    x0 = torch.tensor([0.8, -0.5, 1.0, 0.3]).view(4, 1, 1, 1).expand(4, 1, 200, 200)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64).float()
    x_t = schedule.q_sample(x0, t, noise)  # [4, 1, 200, 200]
    n = 200 * 200
    for i in range(4):
        ab = schedule.alphas_cumprod[t[i]].item()
        samples = x_t[i].double().flatten()
        assert abs(samples.mean().item() - math.sqrt(ab) * x0[i, 0, 0, 0].item()) < 5 * math.sqrt((1 - ab) / n)
        # the variance of a sample variance of n Gaussians is 2 sigma^4 / (n - 1)
        assert abs(samples.var().item() - (1 - ab)) < 5 * (1 - ab) * math.sqrt(2 / n)


def test_predict_x0_inverts_q_sample_and_predict_eps_inverts_both(schedule):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (8,), generator=g)
    t[0], t[1] = 0, 999
    x_t = schedule.q_sample(x0, t, eps)
    torch.testing.assert_close(schedule.predict_x0(x_t, t, eps), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(schedule.predict_eps(x_t, t, x0), eps, rtol=0, atol=1e-9)
    # and predict_eps(predict_x0(.)) is the identity for an arbitrary eps
    other = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(schedule.predict_eps(x_t, t, schedule.predict_x0(x_t, t, other)), other)


def test_outputs_follow_x_dtype_and_any_trailing_shape(schedule):
    t = torch.tensor([3, 700])
    for dtype in (torch.float16, torch.float32, torch.float64):
        x = torch.ones(2, 5, dtype=dtype)  # [B, D]: trailing dims of any number broadcast
        out = schedule.q_sample(x, t, torch.zeros_like(x))
        assert out.dtype == dtype and out.shape == (2, 5)
        mean, var = schedule.q_posterior(x, x, t)
        assert mean.dtype == dtype and var.shape == (2, 1)
        expected = schedule.alphas_cumprod[t].sqrt().to(dtype).view(2, 1).expand(2, 5)
        torch.testing.assert_close(out, expected)


def test_q_posterior_matches_bayes_rule(schedule):
    # Brute force for one scalar pixel: prior x_{t-1} | x0 ~ N(sqrt(ab_prev) x0, 1 - ab_prev) (eq. 4),
    # likelihood x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t) (eq. 2); multiply the Gaussians.
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([1, 2, 10, 250, 998, 999])
    B = t.shape[0]
    x0 = torch.randn(B, 1, 1, 1, generator=g, dtype=torch.float64)
    x_t = torch.randn(B, 1, 1, 1, generator=g, dtype=torch.float64)
    mean, var = schedule.q_posterior(x0, x_t, t)
    for i, step in enumerate(t.tolist()):
        beta = schedule.betas[step].item()
        ab_prev = schedule.alphas_cumprod[step - 1].item()
        prior_mean, prior_var = math.sqrt(ab_prev) * x0[i].item(), 1 - ab_prev
        # likelihood as a function of x_{t-1}: N(x_t / sqrt(alpha), beta / alpha)
        lik_mean, lik_var = x_t[i].item() / math.sqrt(1 - beta), beta / (1 - beta)
        post_var = 1 / (1 / prior_var + 1 / lik_var)
        post_mean = post_var * (prior_mean / prior_var + lik_mean / lik_var)
        assert mean[i].item() == pytest.approx(post_mean, rel=1e-9, abs=1e-12)
        assert var[i].item() == pytest.approx(post_var, rel=1e-9)


def test_q_posterior_at_t0_is_x0_and_eq11_holds(schedule):
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    x_t = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    mean, var = schedule.q_posterior(x0, x_t, torch.tensor([0, 0]))
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all()
    # With x0 predicted from eps, the posterior mean is DDPM eq. 11:
    # 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps).
    t = torch.tensor([5, 600])
    eps = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    mean, _ = schedule.q_posterior(schedule.predict_x0(x_t, t, eps), x_t, t)
    a = schedule.alphas[t].view(2, 1, 1, 1)
    b = schedule.betas[t].view(2, 1, 1, 1)
    ab = schedule.alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(mean, (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt())


def test_snr(schedule):
    t = torch.arange(1000)
    snr = schedule.snr(t)
    ab = schedule.alphas_cumprod
    torch.testing.assert_close(snr, ab / (1 - ab))
    assert snr.dtype == torch.float64 and (snr.diff() < 0).all()


def test_to_returns_a_copy(schedule):
    moved = schedule.to("cpu")
    assert moved is not schedule and moved.T == schedule.T
    torch.testing.assert_close(moved.alphas_cumprod, schedule.alphas_cumprod)
    assert "T=1000" in repr(schedule)


# -- validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_t, message", [
    (torch.tensor([0, 1000]), r"0 <= t < T=1000; got values in \[0, 1000\]"),
    (torch.tensor([-1, 5]), r"got values in \[-1, 5\]"),
    (torch.tensor([1.0, 2.0]), "integer"),
    (torch.tensor([1, 2, 3]), r"shape \[2\]"),
    (torch.tensor([[1, 2]]), "shape"),
])
def test_bad_t_raises_value_error_naming_t(schedule, bad_t, message):
    x = torch.zeros(2, 3, 4, 4)
    for call in (lambda: schedule.q_sample(x, bad_t, x), lambda: schedule.predict_x0(x, bad_t, x),
                 lambda: schedule.predict_eps(x, bad_t, x), lambda: schedule.q_posterior(x, x, bad_t)):
        with pytest.raises(ValueError, match=r"\bt\b") as info:
            call()
        assert info.match(message)


def test_other_bad_arguments(schedule):
    x, t = torch.zeros(2, 3, 4, 4), torch.tensor([1, 2])
    with pytest.raises(TypeError, match="t must be"):
        schedule.q_sample(x, [1, 2], x)
    with pytest.raises(ValueError, match="noise"):
        schedule.q_sample(x, t, torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="eps"):
        schedule.predict_x0(x, t, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="x0"):
        schedule.q_posterior(torch.zeros(1, 3, 4, 4), x, t)
    with pytest.raises(ValueError, match="x_t"):
        schedule.predict_x0(torch.zeros(2, 3, dtype=torch.long), t, torch.zeros(2, 3))


@pytest.mark.parametrize("betas", [
    torch.tensor([0.1, 0.0]), torch.tensor([0.1, 1.0]), torch.tensor([[0.1, 0.2]]),
    torch.tensor([1, 2]), torch.tensor([]),
])
def test_bad_betas(betas):
    with pytest.raises(ValueError, match="betas|beta"):
        NoiseSchedule(betas)


def test_bad_schedule_arguments():
    with pytest.raises(TypeError, match="betas"):
        NoiseSchedule([0.1, 0.2])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="T must be"):
            linear_betas(bad)
        with pytest.raises(ValueError, match="T must be"):
            cosine_betas(bad)
    with pytest.raises(ValueError, match="start and end"):
        linear_betas(10, start=0.02, end=1e-4)
    with pytest.raises(ValueError, match="start and end"):
        linear_betas(10, start=0.0)
    with pytest.raises(ValueError, match="max_beta"):
        cosine_betas(10, max_beta=1.0)
    with pytest.raises(ValueError, match="s must be"):
        cosine_betas(10, s=-0.1)
