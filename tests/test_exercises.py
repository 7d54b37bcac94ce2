"""The exercise checkers: the shipped solutions pass, a blank stub fails kindly, and each common mistake
(written here as a wrong variant) gets the hint that names it."""

import math
import pathlib

import nbformat
import pytest
import torch

from minimagen import exercises as E
from minimagen.cascade import upsample
from minimagen.grading import BEGIN, END, strip_solutions
from minimagen.samplers import ddim_timesteps

EXERCISES = pathlib.Path(__file__).resolve().parents[1] / "lessons" / "exercises"


def _solution_cells(notebook: str) -> list[str]:
    nb = nbformat.read(EXERCISES / notebook, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]


def _namespace(notebook: str, student: bool = False) -> dict:
    """The functions a notebook's solution cells define (or, with ``student``, their stubbed versions)."""
    ns = {"torch": torch, "math": math, "upsample": upsample, "ddim_timesteps": ddim_timesteps}
    for source in _solution_cells(notebook):
        exec(strip_solutions(source, "see the lesson") if student else source, ns)
    return ns


CHECKS = [
    ("e01_forward_process.ipynb", "q_sample", E.check_q_sample),
    ("e01_forward_process.ipynb", "snr", E.check_snr),
    ("e02_posterior.ipynb", "q_posterior", E.check_q_posterior),
    ("e03_predict_x0.ipynb", "x0_from_eps", E.check_x0_from_eps),
    ("e03_predict_x0.ipynb", "x0_from_v", E.check_x0_from_v),
    ("e04_ddim.ipynb", "ddim_step", E.check_ddim_step),
    ("e04_ddim.ipynb", "ddim_sampler", E.check_ddim_sampler),
    ("e05_guidance.ipynb", "cfg", E.check_cfg),
    ("e06_thresholding.ipynb", "static_threshold", E.check_static_threshold),
    ("e06_thresholding.ipynb", "dynamic_threshold", E.check_dynamic_threshold),
    ("e07_noise_augmentation.ipynb", "sr_inputs", E.check_sr_inputs),
]


@pytest.mark.parametrize("notebook, name, checker", CHECKS, ids=[c[1] for c in CHECKS])
def test_the_notebook_solution_passes_and_says_what_it_verified(notebook, name, checker):
    result = checker(_namespace(notebook)[name])
    assert isinstance(result, E.CheckResult) and result.exercise == name
    assert str(result) == repr(result) == f"PASS {name}: {result.verified}" and len(result.verified) > 20


@pytest.mark.parametrize("notebook, name, checker", CHECKS, ids=[c[1] for c in CHECKS])
def test_the_blank_stub_fails_with_a_friendly_message(notebook, name, checker):
    stub = _namespace(notebook, student=True)[name]
    with pytest.raises(NotImplementedError, match=f"write {name}\\(\\): see the lesson"):
        stub(*([None] * stub.__code__.co_argcount))
    with pytest.raises(E.ExerciseFailed, match="not written yet"):
        checker(stub)


# -- the listed mistakes, each as a wrong variant ------------------------------------------------------------


def _col(table, t):
    return table[t].reshape(-1, 1, 1, 1)


def _expect(checker, wrong, *fragments):
    with pytest.raises(E.ExerciseFailed) as info:
        checker(wrong)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_q_sample_mistakes():
    def alpha_not_alpha_bar(x0, t, noise, tables):
        a = _col(tables.alphas, t)
        return (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(x0.dtype)

    def no_sqrt(x0, t, noise, tables):
        ab = _col(tables.alphas_cumprod, t)
        return (ab * x0 + (1 - ab) * noise).to(x0.dtype)

    def float64_result(x0, t, noise, tables):
        ab = _col(tables.alphas_cumprod, t)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise  # float64 tables spread into the result

    def flat_coefficients(x0, t, noise, tables):
        ab = tables.alphas_cumprod[t].to(x0.dtype)  # [B] against [B, C, H, W]: broadcasts wrongly or fails
        return ab.sqrt()[:, None, None] * x0 + (1 - ab).sqrt()[:, None, None] * noise

    def one_image_too_many(x0, t, noise, tables):
        ab = _col(tables.alphas_cumprod, t)
        out = ab.sqrt().to(x0.dtype) * x0 + (1 - ab).sqrt().to(x0.dtype) * noise
        return torch.cat([out, out[:1]])

    def in_place(x0, t, noise, tables):
        ab = _col(tables.alphas_cumprod, t)
        return x0.mul_(ab.sqrt().to(x0.dtype)).add_((1 - ab).sqrt().to(x0.dtype) * noise)

    def nan_at_the_end(x0, t, noise, tables):
        ab = _col(tables.alphas_cumprod, t)
        out = ab.sqrt().to(x0.dtype) * x0 + (1 - ab).sqrt().to(x0.dtype) * noise
        return out / (t.reshape(-1, 1, 1, 1) < 999)  # inf where t = T-1

    def cpu_tensor_of_its_own(x0, t, noise, tables):
        ones = torch.ones(len(t), 1, 1, 1, dtype=torch.float64)  # made on the CPU whatever x0's device
        ab = ones * _col(tables.alphas_cumprod, t)
        return ab.sqrt().to(x0.dtype) * x0 + (1 - ab).sqrt().to(x0.dtype) * noise


    _expect(E.check_q_sample, alpha_not_alpha_bar, "alpha_t", "alpha_bar_t")
    _expect(E.check_q_sample, no_sqrt, "square root is missing")
    _expect(E.check_q_sample, float64_result, "dtype")
    _expect(E.check_q_sample, flat_coefficients, "[B, 1, 1, 1]")
    _expect(E.check_q_sample, one_image_too_many, "has shape")
    _expect(E.check_q_sample, in_place, "in place")
    _expect(E.check_q_sample, nan_at_the_end, "NaN")
    _expect(E.check_q_sample, cpu_tensor_of_its_own, "device")


def test_q_posterior_mistakes():
    def posterior(ab_prev_of):
        def fn(x0, x_t, t, tables):
            b, a, ab = _col(tables.betas, t), _col(tables.alphas, t), _col(tables.alphas_cumprod, t)
            ab_prev = ab_prev_of(tables, t)
            mean = ab_prev.sqrt() * b / (1 - ab) * x0 + a.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
            return mean.to(x0.dtype), (b * (1 - ab_prev) / (1 - ab)).to(x0.dtype)
        return fn

    wrapped = posterior(lambda tables, t: _col(tables.alphas_cumprod, t - 1))  # t - 1 = -1 at t = 0
    same = posterior(lambda tables, t: _col(tables.alphas_cumprod, t))
    _expect(E.check_q_posterior, wrapped, "wraps around")
    _expect(E.check_q_posterior, same, "off by one")

    def alpha_bar_for_alpha(x0, x_t, t, tables):
        b, ab = _col(tables.betas, t), _col(tables.alphas_cumprod, t)
        ab_prev = torch.cat([tables.alphas_cumprod.new_ones(1), tables.alphas_cumprod[:-1]])[t].reshape(-1, 1, 1, 1)
        mean = ab_prev.sqrt() * b / (1 - ab) * x0 + ab.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
        return mean.to(x0.dtype), (b * (1 - ab_prev) / (1 - ab)).to(x0.dtype)

    _expect(E.check_q_posterior, alpha_bar_for_alpha, "alpha_bar_t where alpha_t belongs")

    def float32_arithmetic(x0, x_t, t, tables):
        # Right formula, but cast first: at t = 0, beta / (1 - alpha_bar) loses digits in float32.
        table = lambda v: v[t].reshape(-1, 1, 1, 1).to(x0.dtype)  # noqa: E731
        ab_all = tables.alphas_cumprod
        b, a, ab = table(tables.betas), table(tables.alphas), table(ab_all)
        ab_prev = table(torch.cat([ab_all.new_ones(1), ab_all[:-1]]))
        mean = ab_prev.sqrt() * b / (1 - ab) * x0 + a.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
        return mean, b * (1 - ab_prev) / (1 - ab)

    _expect(E.check_q_posterior, float32_arithmetic, "close, but not exact", "float64 tables")


def test_correct_variants_pass():
    # A float32 result computed in float32 is within float32's precision for eq. 4; a loop over the batch
    # and torch.where in place of clamp are the same functions.
    def cast_first(x0, t, noise, tables):
        ab = tables.alphas_cumprod.to(x0.dtype)[t].reshape(-1, 1, 1, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def per_image_loop(x0, p):
        out = []
        for image in x0:
            s = torch.quantile(image.abs().flatten().double(), p).clamp(min=1).to(x0.dtype)
            out.append(torch.where(image.abs() > s, image.sign() * s, image) / s)
        return torch.stack(out)

    E.check_q_sample(cast_first)
    E.check_dynamic_threshold(per_image_loop)


def test_sampler_mistakes_outside_the_formula():
    ns = _namespace("e04_ddim.ipynb")

    def unseeded(model_fn, shape, tables, steps, eta, generator):
        return ns["ddim_sampler"](model_fn, shape, tables, steps, eta, torch.Generator().manual_seed(torch.seed()))

    def clamped(model_fn, shape, tables, steps, eta, generator):
        return ns["ddim_sampler"](model_fn, shape, tables, steps, eta, generator).clamp(-1, 1)

    def integer_t(model_fn, shape, tables, steps, eta, generator):
        return ns["ddim_sampler"](lambda x, t: model_fn(x, int(t[0])), shape, tables, steps, eta, generator)

    _expect(E.check_ddim_sampler, unseeded, "same seed")
    _expect(E.check_ddim_sampler, clamped, "unclamped")
    _expect(E.check_ddim_sampler, integer_t, "LongTensor [B]")


def test_x0_mistakes():
    def eps_no_sqrt(x_t, t, eps, tables):
        ab = _col(tables.alphas_cumprod, t)
        return ((x_t - (1 - ab) * eps) / ab).to(x_t.dtype)

    def eps_alpha(x_t, t, eps, tables):
        a = _col(tables.alphas, t)
        return ((x_t - (1 - a).sqrt() * eps) / a.sqrt()).to(x_t.dtype)

    def v_swapped(x_t, t, v, tables):
        ab = _col(tables.alphas_cumprod, t)
        return ((1 - ab).sqrt().to(x_t.dtype) * x_t - ab.sqrt().to(x_t.dtype) * v)

    _expect(E.check_x0_from_eps, eps_no_sqrt, "square root is missing")
    _expect(E.check_x0_from_eps, eps_alpha, "alpha_t where alpha_bar_t belongs")
    _expect(E.check_x0_from_v, v_swapped, "swapped")


def test_ddim_mistakes():
    def step_with(sigma_of, direction_has_sigma=True):
        def fn(x_t, eps, ab, ab_prev, eta, noise):
            x0 = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            sigma = sigma_of(ab, ab_prev, eta)
            direction = math.sqrt(max(1 - ab_prev - (sigma**2 if direction_has_sigma else 0.0), 0.0))
            return math.sqrt(ab_prev) * x0 + direction * eps + sigma * noise
        return fn

    right = lambda ab, ab_prev, eta: eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)  # noqa: E731
    no_eta = lambda ab, ab_prev, eta: math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)  # noqa: E731
    one_factor = lambda ab, ab_prev, eta: eta * math.sqrt(1 - ab / ab_prev)  # noqa: E731
    _expect(E.check_ddim_step, step_with(no_eta), "sigma_t(eta) is wrong")
    _expect(E.check_ddim_step, step_with(one_factor), "sigma_t(eta) is wrong")
    _expect(E.check_ddim_step, step_with(right, direction_has_sigma=False), "sqrt(1 - alpha_bar_prev - sigma_t^2)")

    ns = _namespace("e04_ddim.ipynb")
    step = ns["ddim_step"]

    def last_step_to_alpha_bar_0(model_fn, shape, tables, steps, eta, generator):  # off by one at the end
        x = torch.randn(shape, generator=generator)
        visits = ddim_timesteps(tables.T, steps)
        ab = tables.alphas_cumprod.tolist()
        for i, s in enumerate(visits):
            ab_prev = ab[visits[i + 1]] if i + 1 < len(visits) else ab[0]
            sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab[s])) * math.sqrt(1 - ab[s] / ab_prev) if s else 0.0
            z = torch.randn(shape, generator=generator) if sigma > 0 else torch.zeros(shape)
            x = step(x, model_fn(x, torch.full((shape[0],), s)), ab[s], ab_prev, eta if s else 0.0, z)
        return x

    _expect(E.check_ddim_sampler, last_step_to_alpha_bar_0, "alpha_bar = 1")


def test_cfg_mistakes():
    _expect(E.check_cfg, lambda c, u, w: (1 + w) * c - w * u, "(1 + w)")
    _expect(E.check_cfg, lambda c, u, w: w * u + (1 - w) * c, "swapped")


def test_thresholding_mistakes():
    def dynamic(per_sample=True, floor=True, clip=True):
        def fn(x0, p):
            B = x0.shape[0]
            if per_sample:
                s = torch.quantile(x0.abs().reshape(B, -1).float(), p, dim=1).reshape(B, 1, 1, 1)
            else:
                s = torch.quantile(x0.abs().reshape(-1).float(), p)
            s = s.clamp(min=1) if floor else s
            s = s.to(x0.dtype)
            return (torch.maximum(torch.minimum(x0, s), -s) if clip else x0) / s
        return fn

    _expect(E.check_dynamic_threshold, dynamic(per_sample=False), "whole batch")
    _expect(E.check_dynamic_threshold, dynamic(floor=False), "floor")
    _expect(E.check_dynamic_threshold, dynamic(clip=False), "without clipping")

    def clamp_in_place(x0):
        return x0.clamp_(-1, 1)

    _expect(E.check_static_threshold, clamp_in_place, "in place")


def test_sr_inputs_mistakes():
    def noised(lowres, size, aug_level, tables, noise):
        up = upsample(lowres, size)
        ab = _col(tables.alphas_cumprod, aug_level)
        return (ab.sqrt() * up + (1 - ab).sqrt() * noise).to(up.dtype)

    def level_not_passed(lowres, size, aug_level, tables, noise):
        return {"lowres": noised(lowres, size, aug_level, tables, noise), "aug_level": None}

    def level_not_used(lowres, size, aug_level, tables, noise):
        return {"lowres": upsample(lowres, size), "aug_level": aug_level}

    _expect(E.check_sr_inputs, level_not_passed, "did not pass the level")
    _expect(E.check_sr_inputs, level_not_used, "did not noise the input")


def test_a_hint_never_shows_reference_code():
    message = _expect(E.check_cfg, lambda c, u, w: (1 + w) * c - w * u, "(1 + w)")
    assert "def " not in message and "return" not in message


def test_sampler_settings_are_checked_before_any_sampling():
    # Bad settings fail at once with a hint naming the field (no model is needed to find out).
    with pytest.raises(E.ExerciseFailed, match="steps must be an int from 1 to 3"):
        E.check_sampler_settings(lambda: {"guidance": 3.0, "threshold": "static", "steps": 25, "eta": 0.0}, None, None)
    with pytest.raises(E.ExerciseFailed, match="missing"):
        E.check_sampler_settings(lambda: {"guidance": 3.0}, None, None)
    with pytest.raises(E.ExerciseFailed, match="threshold must be"):
        E.check_sampler_settings(lambda: {"guidance": 3.0, "threshold": "clip", "steps": 3, "eta": 0.0}, None, None)
    for bad, hint in [({"guidance": float("inf"), "threshold": "static", "steps": 3, "eta": 0.0}, "finite number"),
                      ({"guidance": 1.0, "threshold": "static", "steps": True, "eta": 0.0}, "steps must be an int"),
                      ({"guidance": 1.0, "threshold": "static", "steps": 3, "eta": 1.5}, "eta must be"),
                      ({"guidance": 1.0, "threshold": "dynamic:max_s=2", "steps": 3, "eta": 0.0}, "three named"),
                      ([1.0, "static", 3, 0.0], "return a dict")]:
        with pytest.raises(E.ExerciseFailed, match=hint):
            E.check_sampler_settings(lambda bad=bad: bad, None, None)

    def stub():
        raise NotImplementedError

    with pytest.raises(E.ExerciseFailed, match="not written yet"):
        E.check_sampler_settings(stub, None, None)
    with pytest.raises(E.ExerciseFailed, match="n must be an int >= 32"):
        E.check_sampler_settings(lambda: dict(E.DEFAULT_SAMPLER, steps=3), None, None, n=16)
    # The instructor's arguments are validated before the student's settings.
    for kwargs, hint in [({"tolerance": float("nan")}, "tolerance"), ({"tolerance": -0.01}, "tolerance"),
                         ({"grain_tolerance": 1.0}, "grain_tolerance"), ({"max_steps": 0}, "max_steps")]:
        with pytest.raises(ValueError, match=hint):
            E.check_sampler_settings(stub, None, None, **kwargs)
    assert E.sampler_settings(lambda: {"guidance": 1, "threshold": "static", "steps": 3, "eta": 0}) == {
        "guidance": 1.0, "threshold": "static", "steps": 3, "eta": 0.0}


def test_sampler_check_samples_both_settings_on_the_same_prompts_and_noise(monkeypatch):
    calls = []

    def fake_sample(imagen, captions, *, guidance, threshold, steps, eta, seed, precision):
        calls.append((tuple(captions), guidance, threshold, steps, eta, seed))
        return torch.full((len(captions), 3, 8, 8), 0.01 * steps)  # the reference (25 steps) first

    monkeypatch.setattr(E, "sample_in_batches", fake_sample)
    monkeypatch.setattr(E, "alignment", lambda probe, images, captions: torch.full((len(captions),), 0.9))
    grain = {25: 1.0, 3: 1.0, 2: 1.3}  # by the number of steps, read back from the fake images
    monkeypatch.setattr(E, "sharpness",
                        lambda images: torch.full((len(images),), grain[round(images[0, 0, 0, 0].item() * 100)]))
    result = E.check_sampler_settings(lambda: {"guidance": 1.0, "threshold": "static", "steps": 3, "eta": 0.0},
                                      None, None, n=32, seed=7)
    assert "grain 1.00x" in str(result) and "ruled out" in str(result)
    (ref_captions, *reference), (captions, *chosen) = calls
    assert ref_captions == captions and len(captions) == 32
    assert reference == [3.0, "static", 25, 0.0, 7] and chosen == [1.0, "static", 3, 0.0, 7]
    with pytest.raises(E.ExerciseFailed, match=r"1\.30x the reference's high-frequency energy"):
        E.check_sampler_settings(lambda: {"guidance": 1.0, "threshold": "static", "steps": 2, "eta": 0.0}, None, None)


def test_sampler_comparison_passes_a_match_and_names_each_failure():
    ref = torch.full((64,), 0.98)
    same = E.SamplerComparison.of(ref, ref.clone(), torch.full((64,), 0.03), torch.full((64,), 0.03))
    assert (same.gain, same.gain_se, same.grain_ratio) == (0.0, 0.0, 1.0) and same.failures(0.02, 0.15) == []
    # A loss of 0.01 on average, but one prompt in four loses 0.04: the interval still excludes -0.02 ...
    scores = ref - torch.tensor([0.04, 0.0, 0.0, 0.0]).repeat(16)
    small_loss = E.SamplerComparison.of(ref, scores, torch.ones(64), torch.ones(64))
    assert small_loss.gain == pytest.approx(-0.01) and small_loss.failures(0.02, 0.15) == []
    # ... but not a tolerance of 0.01; and grain 1.5x the reference's fails whatever the alignment.
    assert "not ruled out" in small_loss.failures(0.01, 0.15)[0]
    grainy = E.SamplerComparison.of(ref, ref.clone(), torch.ones(64), torch.full((64,), 1.5))
    [problem] = grainy.failures(0.02, 0.15)
    assert "1.50x the reference's high-frequency energy" in problem
    smooth = E.SamplerComparison.of(ref, ref.clone(), torch.ones(64), torch.full((64,), 0.8))
    [problem] = smooth.failures(0.02, 0.15)  # too smooth is as far from the reference as too grainy
    assert "smoother" in problem
    # On the boundaries the tests pass; a NaN (a broken sampler) fails both instead of slipping through.
    assert E.SamplerComparison(-0.01, 0.005, 1.15).failures(0.02, 0.15) == []
    assert len(E.SamplerComparison(float("nan"), float("nan"), float("nan")).failures(0.02, 0.15)) == 2
    with pytest.raises(ValueError, match="same n >= 2"):
        E.SamplerComparison.of(ref[:1], ref[:1], torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="grain must be positive"):
        E.SamplerComparison.of(ref, ref, torch.zeros(64), torch.ones(64))


def test_solution_markers_are_balanced_in_every_exercise():
    for path in sorted(EXERCISES.glob("*.ipynb")):
        for source in _solution_cells(path.name):
            assert source.count(BEGIN) == source.count(END) >= 1, path.name
