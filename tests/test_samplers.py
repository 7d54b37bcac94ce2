"""DDPM and DDIM sampling loops.

The strongest checks use data whose exact ε-predictor is known: every pixel x0 ~ N(mu, s^2). Then
x_t ~ N(sqrt(ab) mu, ab s^2 + 1 - ab) and

    E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab),

so a correct sampler driven by it must return samples of mean ~mu and std ~s. Because every step is
then affine in x_t, the exact mean and variance a sampler's output should have (including its
discretisation error) follow from a scalar recursion written out below from the papers' equations;
the samples must match that to within sampling error.
"""

import math

import pytest
import torch

from minimagen.samplers import ddim_sample, ddim_timesteps, ddpm_sample
from minimagen.schedules import NoiseSchedule
from minimagen.thresholding import dynamic_threshold

MU, S = 0.5, 0.2  # the data distribution N(MU, S^2), per pixel
SHAPE = (4096, 1, 2, 2)  # 16384 independent samples
N = math.prod(SHAPE)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tensors here are tiny; on a busy 2-core machine splitting every op over 2 threads made the
    # 1000-step loop ~10x slower than running it on one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gaussian_oracle(schedule, mu=MU, s=S):
    def model_fn(x_t, t):
        ab = schedule.alphas_cumprod[t].to(x_t.dtype).view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / (ab * s**2 + 1 - ab)
    return model_fn


def wiggly_model(T):
    """A nonlinear, t-dependent stand-in for a U-Net."""
    def model_fn(x_t, t):
        return torch.tanh(x_t * (1 + t.view(-1, 1, 1, 1) / T)) + 0.1 * torch.sin(3 * x_t)
    return model_fn


def ddpm_moments(schedule, mu=MU, s=S):
    """Exact mean and std of ddpm_sample's output for the Gaussian oracle (x_T ~ N(0, 1)).

    Each step is x' = c1 x0_hat + c2 x + sqrt(beta_tilde) z (DDPM eqs. 6-7) with
    x0_hat = mu + g (x - sqrt(ab) mu), g = sqrt(ab) s^2 / (ab s^2 + 1 - ab).
    """
    m, V = 0.0, 1.0
    betas = schedule.betas.tolist()
    ab_all = schedule.alphas_cumprod.tolist()
    for t in reversed(range(schedule.T)):
        beta, ab = betas[t], ab_all[t]
        ab_prev = ab_all[t - 1] if t > 0 else 1.0
        g = math.sqrt(ab) * s**2 / (ab * s**2 + 1 - ab)
        c1 = math.sqrt(ab_prev) * beta / (1 - ab)
        c2 = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        beta_tilde = (1 - ab_prev) * beta / (1 - ab)
        m = c1 * (mu + g * (m - math.sqrt(ab) * mu)) + c2 * m
        V = (c1 * g + c2) ** 2 * V + beta_tilde
    return m, math.sqrt(V)


def ddim_moments(schedule, timesteps, eta, mu=MU, s=S):
    """Exact mean and std of ddim_sample's output for the Gaussian oracle (DDIM eqs. 12 and 16)."""
    m, V = 0.0, 1.0
    ab_all = schedule.alphas_cumprod.tolist()
    for i, t in enumerate(timesteps):
        ab = ab_all[t]
        ab_next = ab_all[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        v = ab * s**2 + 1 - ab
        g = math.sqrt(ab) * s**2 / v  # d x0_hat / d x
        h = math.sqrt(1 - ab) / v  # d eps_hat / d x
        sigma2 = eta**2 * (1 - ab_next) / (1 - ab) * (1 - ab / ab_next)
        direction = math.sqrt(max(1 - ab_next - sigma2, 0.0))
        deviation = m - math.sqrt(ab) * mu
        m = math.sqrt(ab_next) * (mu + g * deviation) + direction * h * deviation
        V = (math.sqrt(ab_next) * g + direction * h) ** 2 * V + sigma2
    return m, math.sqrt(V)


def assert_moments(x, mean, std, label):
    # standard errors of a sample mean and a sample std of N Gaussians
    se_mean, se_std = std / math.sqrt(N), std / math.sqrt(2 * N)
    assert abs(x.mean().item() - mean) < 5 * se_mean, (label, x.mean().item(), mean)
    assert abs(x.std().item() - std) < 5 * se_std, (label, x.std().item(), std)


@pytest.fixture(scope="module")
def linear1000():
    return NoiseSchedule.linear(1000)


@pytest.fixture(scope="module")
def cosine50():
    return NoiseSchedule.cosine(50)


# -- sampling from a known distribution ------------------------------------------------------------

def test_ddpm_reproduces_gaussian_data(linear1000):
    x = ddpm_sample(gaussian_oracle(linear1000), SHAPE, linear1000,
                    generator=torch.Generator().manual_seed(0), progress=False)
    assert x.shape == SHAPE and x.dtype == torch.float32
    mean, std = ddpm_moments(linear1000)
    # 1000 steps: the sampler's own bias is under 2% of S ...
    assert abs(mean - MU) < 1e-3 and abs(std - S) < 0.02 * S
    # ... and the samples match its exact output distribution to within sampling error.
    assert_moments(x, mean, std, "ddpm")
    assert abs(x.mean().item() - MU) < 0.01 and abs(x.std().item() - S) < 0.05 * S


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_reproduces_gaussian_data(linear1000, eta):
    steps = 100
    x = ddim_sample(gaussian_oracle(linear1000), SHAPE, linear1000, steps=steps, eta=eta,
                    generator=torch.Generator().manual_seed(1), progress=False)
    mean, std = ddim_moments(linear1000, ddim_timesteps(1000, steps), eta)
    assert_moments(x, mean, std, f"ddim eta={eta}")
    # With 100 of 1000 steps DDIM underestimates the spread: by ~6% of S for eta = 0, ~13% for eta = 1
    # (this data's std is small next to the noise, so most of the work happens in the last steps).
    assert abs(x.mean().item() - MU) < 0.01
    assert abs(x.std().item() - S) < (0.1 if eta == 0 else 0.2) * S


def test_ddim_with_all_steps_and_eta_1_is_ddpm(cosine50):
    model = wiggly_model(50)
    for threshold in (None, "dynamic"):
        ddpm = ddpm_sample(model, (4, 3, 8, 8), cosine50, threshold=threshold,
                           generator=torch.Generator().manual_seed(2), progress=False)
        ddim = ddim_sample(model, (4, 3, 8, 8), cosine50, steps=50, eta=1.0, threshold=threshold,
                           generator=torch.Generator().manual_seed(2), progress=False)
        torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-4)


def test_ddpm_matches_algorithm_2_written_out():
    # DDPM Algorithm 2 with eq. 11 and sigma_t^2 = beta_tilde_t, on a 5-step schedule.
    schedule = NoiseSchedule(torch.tensor([0.05, 0.1, 0.2, 0.3, 0.4], dtype=torch.float64))
    model = wiggly_model(5)
    shape = (3, 3, 4, 4)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g)
    for t in reversed(range(5)):
        alpha, beta = 1 - schedule.betas[t].item(), schedule.betas[t].item()
        ab = schedule.alphas_cumprod[t].item()
        ab_prev = schedule.alphas_cumprod[t - 1].item() if t > 0 else 1.0
        z = torch.randn(shape, generator=g) if t > 0 else torch.zeros(shape)
        sigma = math.sqrt((1 - ab_prev) / (1 - ab) * beta)
        eps = model(x, torch.full((3,), t))
        x = (x - beta / math.sqrt(1 - ab) * eps) / math.sqrt(alpha) + sigma * z
    out = ddpm_sample(model, shape, schedule, generator=torch.Generator().manual_seed(3), progress=False)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)


# -- determinism -----------------------------------------------------------------------------------

def test_same_seed_same_samples(cosine50):
    model = wiggly_model(50)
    for sample, kwargs in ((ddpm_sample, {}), (ddim_sample, {"steps": 10, "eta": 0.5})):
        a, b, c = (sample(model, (2, 3, 8, 8), cosine50, generator=torch.Generator().manual_seed(seed),
                          progress=False, **kwargs) for seed in (4, 4, 5))
        assert torch.equal(a, b) and not torch.allclose(a, c)


def test_ddim_eta0_is_a_deterministic_affine_map_for_gaussian_data(linear1000):
    # For Gaussian data every DDIM step with eta = 0 is affine in x_t, so x_T -> x0 is an affine map
    # whose slope and intercept are the std and mean of ddim_moments.
    x_T = torch.linspace(-3, 3, 13, dtype=torch.float64).view(13, 1, 1, 1)
    model = gaussian_oracle(linear1000)
    out = ddim_sample(model, x_T.shape, linear1000, steps=20, x_T=x_T, progress=False)
    again = ddim_sample(model, x_T.shape, linear1000, steps=20, x_T=x_T, progress=False,
                        generator=torch.Generator().manual_seed(6))  # a generator changes nothing
    assert torch.equal(out, again)
    mean, std = ddim_moments(linear1000, ddim_timesteps(1000, 20), 0.0)
    torch.testing.assert_close(out, mean + std * x_T, rtol=0, atol=1e-9)


def test_ddim_eta0_map_is_smooth(linear1000):
    # A nonlinear model near the Gaussian oracle (a raw nonlinear function is a poor eps-predictor:
    # x0_hat would amplify its errors by sqrt(1 / alpha_bar - 1) ~ 150 at the first step).
    oracle = gaussian_oracle(linear1000)

    def model(x_t, t):
        return oracle(x_t, t) + 0.1 * torch.tanh(3 * x_t)

    g = torch.Generator().manual_seed(7)
    x_T = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    direction = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)

    def f(x):
        return ddim_sample(model, x.shape, linear1000, steps=10, x_T=x, progress=False)

    base = f(x_T)
    # difference quotients converge as h shrinks: the map is differentiable, not merely continuous
    q1 = (f(x_T + 1e-3 * direction) - base) / 1e-3
    q2 = (f(x_T + 5e-4 * direction) - base) / 5e-4
    assert q1.abs().max() < 10
    torch.testing.assert_close(q1, q2, rtol=1e-2, atol=1e-3)


# -- thresholding ----------------------------------------------------------------------------------

def test_thresholding_keeps_samples_in_range(cosine50):
    # An oracle for data centred at 3 pushes every x0_hat far outside [-1, 1].
    model = gaussian_oracle(cosine50, mu=3.0, s=0.2)
    shape = (16, 3, 4, 4)
    plain = ddpm_sample(model, shape, cosine50, generator=torch.Generator().manual_seed(8), progress=False)
    assert plain.mean() > 2.5
    for threshold in ("static", "dynamic", dynamic_threshold):
        for out in (
            ddpm_sample(model, shape, cosine50, threshold=threshold,
                        generator=torch.Generator().manual_seed(8), progress=False),
            ddim_sample(model, shape, cosine50, steps=10, eta=0.5, threshold=threshold,
                        generator=torch.Generator().manual_seed(8), progress=False),
        ):
            assert out.abs().max() <= 1.0 + 1e-6, threshold


# -- how the model is called -----------------------------------------------------------------------

def test_model_sees_long_timesteps_in_order(cosine50):
    for sample, kwargs, expected in (
        (ddpm_sample, {}, list(range(49, -1, -1))),
        (ddim_sample, {"steps": 7}, ddim_timesteps(50, 7)),
    ):
        seen = []

        def model(x_t, t):
            assert t.dtype == torch.long and t.shape == (3,) and t.device == x_t.device
            assert (t == t[0]).all()
            seen.append(int(t[0]))
            return torch.zeros_like(x_t)

        steps_seen = []
        sample(model, (3, 1, 2, 2), cosine50, generator=torch.Generator().manual_seed(9), progress=False,
               callback=lambda i, t, x_t, x0_hat: steps_seen.append((i, t)), **kwargs)
        assert seen == expected
        assert steps_seen == list(enumerate(expected))


def test_ddim_timesteps():
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    assert ddim_timesteps(10, 4) == [9, 6, 3, 0]
    assert ddim_timesteps(1000, 1) == [999]
    for T, steps in ((1000, 50), (1000, 999), (37, 5), (2, 2)):
        ts = ddim_timesteps(T, steps)
        gaps = [a - b for a, b in zip(ts, ts[1:])]
        assert len(ts) == steps and ts[0] == T - 1 and ts[-1] == 0
        assert min(gaps) >= 1 and max(gaps) - min(gaps) <= 1  # distinct and evenly spaced


def test_progress_bar(cosine50, capsys):
    model = wiggly_model(50)
    ddim_sample(model, (1, 3, 2, 2), cosine50, steps=3, generator=torch.Generator().manual_seed(0))
    assert "DDIM sampling" in capsys.readouterr().err
    ddpm_sample(model, (1, 3, 2, 2), cosine50, generator=torch.Generator().manual_seed(0), progress=False)
    assert capsys.readouterr().err == ""


# -- argument errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"steps": 51}, ValueError, "steps"),
    ({"steps": 0}, ValueError, "steps"),
    ({"steps": 2.5}, ValueError, "steps"),
    ({"eta": -0.1}, ValueError, "eta"),
    ({"eta": 1.5}, ValueError, "eta"),
    ({"threshold": "dinamic"}, ValueError, "threshold"),
    ({"threshold": 0.995}, TypeError, "threshold"),
])
def test_ddim_argument_errors(cosine50, kwargs, error, match):
    with pytest.raises(error, match=match):
        ddim_sample(wiggly_model(50), (1, 3, 2, 2), cosine50, progress=False, **kwargs)


@pytest.mark.parametrize("sample", [ddpm_sample, ddim_sample])
def test_shape_errors(cosine50, sample):
    model = wiggly_model(50)
    for shape in ((1, 3, 2), (1, 3, 2, 0), (1, 3, 2.0, 2), (True, 3, 2, 2), "1x3x2x2"):
        with pytest.raises(ValueError, match="shape"):
            sample(model, shape, cosine50, progress=False)
    with pytest.raises(ValueError, match="x_T"):
        sample(model, (1, 3, 2, 2), cosine50, x_T=torch.zeros(1, 3, 2, 3), progress=False)
    with pytest.raises(ValueError, match="threshold"):
        sample(model, (1, 3, 2, 2), cosine50, threshold="clip", progress=False)
    with pytest.raises(ValueError, match="model_fn"):
        sample(lambda x_t, t: x_t[:, :1], (1, 3, 2, 2), cosine50, progress=False)
    with pytest.raises(TypeError, match="model_fn"):
        sample(None, (1, 3, 2, 2), cosine50, progress=False)
