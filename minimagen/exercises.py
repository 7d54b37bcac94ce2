"""Checkers for the classroom exercises (``lessons/exercises/``): checks that teach.

Each ``check_...`` runs a student's function against the library's own reference, on random inputs and
on edge cases, and either returns a ``CheckResult`` that says what was verified or raises
``ExerciseFailed`` with a hint. A hint names the mistake (the percentile taken over the whole batch,
alpha_t where alpha_bar_t belongs, the (1 + w) convention, ...) without giving the solution: each
common mistake is recognised by computing what that mistake would return and comparing. Nothing here
prints reference code.

Students get the schedule as a ``ScheduleTables`` -- ``betas``, ``alphas``, ``alphas_cumprod`` and
nothing else -- so that they write the formulas instead of calling ``NoiseSchedule.q_sample``.

An exercise notebook's check cells are nbgrader "autograded test" cells: a check passes when the cell
runs without an error, which is how both nbgrader and ``minimagen exercises grade`` score them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from minimagen import checks
from minimagen.cascade import sr_inputs, upsample
from minimagen.diffusion import eps_from_v, prediction_of
from minimagen.evaluate import eval_prompts, sample_in_batches
from minimagen.guidance import cfg, guided_model_fn
from minimagen.metrics import alignment, sharpness
from minimagen.samplers import ddim_sample
from minimagen.schedules import NoiseSchedule
from minimagen.thresholding import dynamic_threshold, static_threshold

__all__ = [
    "ExerciseFailed", "CheckResult", "ScheduleTables",
    "check_q_sample", "check_snr", "check_q_posterior", "check_x0_from_eps", "check_x0_from_v",
    "check_ddim_step", "check_ddim_sampler", "check_cfg", "check_guided_output",
    "check_static_threshold", "check_dynamic_threshold", "check_sr_inputs",
    "DEFAULT_SAMPLER", "SamplerComparison", "check_sampler_settings", "sampler_settings",
]


class ExerciseFailed(AssertionError):
    """A check did not pass; the message is the hint."""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """A passed check: which exercise, and what was verified."""

    exercise: str
    verified: str

    def __str__(self) -> str:
        return f"PASS {self.exercise}: {self.verified}"

    __repr__ = __str__  # a check cell shows its result as this one line


@dataclasses.dataclass(frozen=True)
class ScheduleTables:
    """The three tables a student may use: beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod alpha_s (float64 [T]).

    The 0-based convention of ``minimagen.schedules``: ``alphas_cumprod[t]`` belongs to x_t, and the
    clean image x_0 of the paper sits one step before ``t = 0`` (its alpha_bar is 1).
    """

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    @classmethod
    def from_schedule(cls, schedule: NoiseSchedule) -> "ScheduleTables":
        return cls(schedule.betas.clone(), schedule.alphas.clone(), schedule.alphas_cumprod.clone())

    def to(self, device) -> "ScheduleTables":
        return ScheduleTables(self.betas.to(device), self.alphas.to(device), self.alphas_cumprod.to(device))


# -- the machinery shared by every checker --------------------------------------------------------------


def _fail(exercise: str, hint: str):
    raise ExerciseFailed(f"FAIL {exercise}: {hint}")


def _clone(value):
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, ScheduleTables):
        return ScheduleTables(value.betas.clone(), value.alphas.clone(), value.alphas_cumprod.clone())
    return value


def _same(a, b) -> bool:
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, ScheduleTables):
        return all(_same(getattr(a, f), getattr(b, f)) for f in ("betas", "alphas", "alphas_cumprod"))
    return True


def _call(exercise: str, fn: Callable, *args, size_hint: str | None = None):
    """Call the student's ``fn``; turn a stub, a crash or an in-place change of an input into a hint.

    ``size_hint`` replaces the general advice on shapes that do not broadcast."""
    if not callable(fn):
        _fail(exercise, f"expected a function, got {type(fn).__name__}")
    before = [_clone(a) for a in args]
    try:
        out = fn(*args)
    except NotImplementedError:
        _fail(exercise, "not written yet: the function still raises NotImplementedError. Replace the stub "
                        "with your code (the markdown above says what it must compute).")
    except ExerciseFailed:
        raise
    except Exception as error:  # the student's code crashed: say how, not where in the checker
        hint = ""
        if "must match the size" in str(error) or "broadcast" in str(error):
            hint = ". The shapes do not broadcast: " + (size_hint or (
                "a per-sample coefficient [B] must become [B, 1, 1, 1] before it multiplies an image batch "
                "[B, C, H, W]"))
        _fail(exercise, f"your function raised {type(error).__name__}: {error}{hint}")
    for original, after in zip(before, args):
        if not _same(original, after):
            _fail(exercise, "your function changed one of its inputs in place (an in-place op such as "
                            "clamp_, mul_, +=, or assigning into a slice). Return a new tensor and leave "
                            "the caller's tensors as they were.")
    return out


def _tensor_out(exercise: str, out, like: Tensor, what: str, *, dtype: torch.dtype | None = None,
                shape: Sequence[int] | None = None) -> Tensor:
    """Check type, shape, dtype, device and finiteness of one returned tensor."""
    if not isinstance(out, Tensor):
        _fail(exercise, f"{what} must be a torch.Tensor, got {type(out).__name__}")
    shape = tuple(like.shape) if shape is None else tuple(shape)
    if tuple(out.shape) != shape:
        _fail(exercise, f"{what} has shape {list(out.shape)}, expected {list(shape)}. Check how the per-sample "
                        f"coefficients broadcast: a [B] tensor must become [B, 1, 1, 1] before it multiplies "
                        f"an image batch.")
    dtype = like.dtype if dtype is None else dtype
    if out.dtype != dtype:
        _fail(exercise, f"{what} has dtype {out.dtype}, expected {dtype} (the dtype of the input). The schedule's "
                        f"tables are float64: cast the coefficients you take from them to the input's dtype, "
                        f"or float64 spreads into the result.")
    if out.device != like.device:
        _fail(exercise, f"{what} is on device {out.device}, expected {like.device} (the input's device)")
    if not bool(torch.isfinite(out).all()):
        _fail(exercise, f"{what} contains NaN or inf. Look for a division by a quantity that can be 0, "
                        f"or a square root of a negative number.")
    return out


def _close(a: Tensor, b: Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol))


PRECISION_HINT = ("{dtype} arithmetic loses digits here (1 - alpha_bar_t when alpha_bar_t is near 1, or a division "
                  "by a small sqrt(alpha_bar_t)). Compute the coefficients from the float64 tables and cast only "
                  "the coefficients to the input's dtype.")


def _diagnose(exercise: str, out: Tensor, expected: Tensor, mistakes: dict[str, Tensor], case: str,
              rtol: float = 1e-5, atol: float = 1e-6, precision_hint: bool = False) -> None:
    """Pass if ``out`` matches ``expected``; else name the first mistake whose output ``out`` matches.

    A float32 result is held to float32's precision (1e-4). With ``precision_hint`` (set by checkers that
    test float64 inputs first, so the formula itself is known to be right), a near miss in lower precision
    is blamed on round-off, not on the formula.
    """
    if out.dtype != torch.float64:
        rtol, atol = max(rtol, 1e-4), max(atol, 1e-4)
    if _close(out, expected, rtol, atol):
        return
    for hint, wrong in mistakes.items():
        if wrong is not None and _close(out, wrong, rtol, atol):
            _fail(exercise, f"{hint} (on {case})")
    diff = (out.double() - expected.double()).abs()
    relative = (diff / (expected.double().abs() + 1)).max().item()
    if precision_hint and out.dtype != torch.float64 and relative < 1e-2:
        _fail(exercise, f"close, but not exact on {case} (largest relative difference {relative:.3g}): "
                        + PRECISION_HINT.format(dtype=out.dtype))
    _fail(exercise, f"the result differs from the reference on {case}: largest difference {diff.max().item():.3g}. "
                    f"Compare your formula with the equation term by term.")


def _on_meta(value):
    if isinstance(value, Tensor):
        return value.to("meta")
    if isinstance(value, ScheduleTables):
        return value.to("meta")
    return value


def _check_device(exercise: str, fn: Callable, *args) -> None:
    """Run ``fn`` on tensors of another device (``meta``): a result left on the CPU, or a device clash,
    means the function made a tensor of its own without ``device=`` (it would fail on a GPU)."""
    try:
        out = fn(*(_on_meta(a) for a in args))
    except Exception as error:  # some ops have no meta kernel; only a device clash is the student's
        if "device" in str(error):
            _fail(exercise, "your function mixes devices: it makes a tensor or array of its own (torch.tensor, "
                            "torch.ones, numpy, ...) on the CPU while its inputs are elsewhere. Compute with the "
                            "input tensors, or create new ones with device=x.device.")
        return
    outs = out if isinstance(out, (tuple, list)) else out.values() if isinstance(out, dict) else [out]
    for o in outs:
        if isinstance(o, Tensor) and o.device.type != "meta":
            _fail(exercise, f"your function returns a tensor on {o.device} when its inputs are on another "
                            f"device: create tensors with device=x.device")


def _tables(T: int = 1000) -> tuple[NoiseSchedule, ScheduleTables]:
    schedule = NoiseSchedule.cosine(T, max_beta=0.2)
    return schedule, ScheduleTables.from_schedule(schedule)


def _t_cases(B: int, T: int, g: torch.Generator) -> list[tuple[str, Tensor]]:
    """Random timesteps, and the edge cases every exercise must get right: t = 0 and t = T - 1."""
    return [
        ("random timesteps", torch.randint(0, T, (B,), generator=g)),
        ("t = 0 (the first noising step)", torch.zeros(B, dtype=torch.long)),
        ("t = T - 1 (the noisiest step)", torch.full((B,), T - 1, dtype=torch.long)),
    ]


def _col(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] as [B, 1, ..., 1] in float64 (the checkers' own arithmetic is float64)."""
    return values[t].reshape(-1, *([1] * (like.ndim - 1)))


def _passed(exercise: str, verified: str) -> CheckResult:
    return CheckResult(exercise, verified)


# -- exercise 1: the forward process --------------------------------------------------------------------


def check_q_sample(fn: Callable) -> CheckResult:
    """``fn(x0, t, noise, tables) -> x_t`` must be DDPM eq. 4: sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""
    name = "q_sample"
    schedule, tables = _tables()
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float64, torch.float32):  # float64 first: then a float32 miss is round-off
        x0 = torch.rand(4, 3, 8, 8, generator=g, dtype=dtype) * 2 - 1
        noise = torch.randn(4, 3, 8, 8, generator=g, dtype=dtype)
        for case, t in _t_cases(4, schedule.T, g):
            out = _tensor_out(name, _call(name, fn, x0, t, noise, tables), x0, "x_t")
            ab, a = _col(tables.alphas_cumprod, t, x0), _col(tables.alphas, t, x0)
            ab_prev = _col(torch.cat([tables.alphas_cumprod.new_ones(1), tables.alphas_cumprod[:-1]]), t, x0)
            x, e = x0.double(), noise.double()
            _diagnose(name, out, schedule.q_sample(x0, t, noise), {
                "you used alpha_t (one step's 1 - beta_t) where alpha_bar_t (the product over all steps up "
                "to t) belongs": a.sqrt() * x + (1 - a).sqrt() * e,
                "a square root is missing: the coefficients of x0 and eps are the square roots of "
                "alpha_bar_t and 1 - alpha_bar_t": ab * x + (1 - ab) * e,
                "the two coefficients are swapped: x0 gets the signal coefficient, eps the noise one":
                    (1 - ab).sqrt() * x + ab.sqrt() * e,
                "the t index is off by one: alphas_cumprod[t] belongs to x_t in our 0-based convention":
                    ab_prev.sqrt() * x + (1 - ab_prev).sqrt() * e,
            }, f"{case}, {dtype}", precision_hint=True)
    _check_device(name, fn, x0, t, noise, tables)
    return _passed(name, "matches DDPM eq. 4 for float32 and float64 inputs at random t, t = 0 and t = T-1; "
                         "keeps the input's shape, dtype and device; leaves its inputs unchanged")


def check_snr(fn: Callable) -> CheckResult:
    """``fn(t, tables) -> [B]`` must be SNR(t) = alpha_bar_t / (1 - alpha_bar_t)."""
    name = "snr"
    schedule, tables = _tables()
    g = torch.Generator().manual_seed(2)
    for case, t in _t_cases(6, schedule.T, g):
        out = _call(name, fn, t, tables)
        if not isinstance(out, Tensor):
            _fail(name, f"SNR must be a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != (6,):
            _fail(name, f"SNR has shape {list(out.shape)}, expected [{len(t)}]: one number per timestep")
        if not out.dtype.is_floating_point or not bool(torch.isfinite(out).all()):
            _fail(name, "SNR must be finite floating-point numbers; look for a division by zero")
        ab, a = tables.alphas_cumprod[t], tables.alphas[t]
        ab_before = torch.roll(tables.alphas_cumprod, 1)[t]
        expected = schedule.snr(t)
        if out.dtype != torch.float64 and _close(out, expected, 1e-2, 0):
            _fail(name, f"close, but not exact on {case}: " + PRECISION_HINT.format(dtype=out.dtype))
        _diagnose(name, out, expected, {
            "the t index is off by one: alphas_cumprod[t] belongs to x_t": ab_before / (1 - ab_before),
            "this is the inverse: SNR is signal power over noise power, alpha_bar_t / (1 - alpha_bar_t)":
                (1 - ab) / ab,
            "you took the ratio of the coefficients, not of their squares (powers)": ab.sqrt() / (1 - ab).sqrt(),
            "you used alpha_t where alpha_bar_t belongs": a / (1 - a),
        }, case, rtol=1e-6, atol=0)
    return _passed(name, "matches alpha_bar_t / (1 - alpha_bar_t) at random t, t = 0 and t = T-1")


# -- exercise 2: the posterior --------------------------------------------------------------------------


def check_q_posterior(fn: Callable) -> CheckResult:
    """``fn(x0, x_t, t, tables) -> (mean, variance)``: DDPM eqs. 6-7 (the variance broadcastable to x)."""
    name = "q_posterior"
    schedule, tables = _tables()
    g = torch.Generator().manual_seed(3)
    ab_all = tables.alphas_cumprod
    prev_right = torch.cat([ab_all.new_ones(1), ab_all[:-1]])
    prev_wrapped = torch.roll(ab_all, 1)  # alpha_bar[t - 1] with Python's wrap-around at t = 0
    for dtype in (torch.float64, torch.float32):  # float64 first: then a float32 miss is round-off
        x0 = torch.rand(4, 3, 8, 8, generator=g, dtype=dtype) * 2 - 1
        x_t = torch.randn(4, 3, 8, 8, generator=g, dtype=dtype)
        for case, t in _t_cases(4, schedule.T, g):
            out = _call(name, fn, x0, x_t, t, tables)
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                _fail(name, "return two things: (mean, variance)")
            mean = _tensor_out(name, out[0], x0, "the mean")
            var = out[1]
            if not isinstance(var, Tensor):
                _fail(name, f"the variance must be a torch.Tensor, got {type(var).__name__}")
            try:
                var_full = torch.broadcast_to(var, x0.shape)
            except RuntimeError:
                _fail(name, f"the variance has shape {list(var.shape)}, which does not broadcast against the image "
                            f"batch {list(x0.shape)}; one value per sample is [B, 1, 1, 1]")
            var_full = _tensor_out(name, var_full, x0, "the variance")
            ref_mean, ref_var = schedule.q_posterior(x0, x_t, t)
            x, xt = x0.double(), x_t.double()
            b, a, ab = _col(tables.betas, t, x0), _col(tables.alphas, t, x0), _col(ab_all, t, x0)

            def mean_of(ab_prev, ab_t=ab, a_t=a, sqrt_prev=True, sqrt_a=True):
                c1 = (ab_prev.sqrt() if sqrt_prev else ab_prev) * b / (1 - ab_t)
                c2 = (1 - ab_prev) * (a_t.sqrt() if sqrt_a else a_t) / (1 - ab_t)
                return c1 * x + c2 * xt

            def var_of(ab_prev):
                return torch.broadcast_to(b * (1 - ab_prev) / (1 - ab), x0.shape)

            p_ok, p_wrap, p_same = _col(prev_right, t, x0), _col(prev_wrapped, t, x0), ab
            p_next = _col(torch.cat([ab_all[1:], ab_all[-1:]]), t, x0)
            off_by_one = ("alpha_bar_{t-1} and alpha_bar_t are off by one: alpha_bar_{t-1} is the table's entry "
                          "one step before t (and 1 before t = 0)")
            wrap = ("at t = 0, alpha_bar_{t-1} must be 1 (the clean data), but alphas_cumprod[t - 1] wraps "
                    "around to the last entry of the table")
            _diagnose(name, mean, ref_mean, {
                wrap: mean_of(p_wrap) if case.startswith("t = 0") else None,
                off_by_one: mean_of(p_same),
                off_by_one + " (you used the entry after t)": mean_of(p_next),
                "a square root is missing in the coefficient of x0: it is sqrt(alpha_bar_{t-1}) beta_t / "
                "(1 - alpha_bar_t)": mean_of(p_ok, sqrt_prev=False),
                "a square root is missing in the coefficient of x_t: it is sqrt(alpha_t) (1 - alpha_bar_{t-1}) / "
                "(1 - alpha_bar_t)": mean_of(p_ok, sqrt_a=False),
                "you used alpha_bar_t where alpha_t belongs, in the coefficient of x_t (one step's alpha, "
                "not the product)": mean_of(p_ok, a_t=ab),
                "the coefficients of x0 and x_t are swapped":
                    (1 - p_ok) * a.sqrt() / (1 - ab) * x + p_ok.sqrt() * b / (1 - ab) * xt,
            }, f"the mean, {case}, {dtype}", precision_hint=True)
            _diagnose(name, var_full, torch.broadcast_to(ref_var, x0.shape), {
                wrap: var_of(p_wrap) if case.startswith("t = 0") else None,
                off_by_one: var_of(p_same),
                "the variance is beta_t times (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t), not beta_t alone "
                "(that is DDPM's other choice of sigma_t^2, not the posterior's)": torch.broadcast_to(b, x0.shape),
            }, f"the variance, {case}, {dtype}", atol=1e-9, precision_hint=True)
    _check_device(name, fn, x0, x_t, t, tables)
    return _passed(name, "mean and variance match DDPM eqs. 6-7 at random t, at t = 0 (alpha_bar_{-1} = 1) and "
                         "t = T-1, in float32 and float64; inputs unchanged")


# -- exercise 3: x0 from eps and from v -----------------------------------------------------------------


def _x0_cases(name: str, fn: Callable, tables: ScheduleTables, seed: int):
    """x_t and a prediction (eps or v) in float64, then float32 (so a float32 miss is round-off), at random t,
    t = 0 and t = T-1; yields (case, x_t, t, prediction, the student's x0_hat)."""
    g = torch.Generator().manual_seed(seed)
    for dtype in (torch.float64, torch.float32):
        x_t = torch.randn(4, 3, 8, 8, generator=g, dtype=dtype)
        prediction = torch.randn(4, 3, 8, 8, generator=g, dtype=dtype)
        for case, t in _t_cases(4, tables.T, g):
            out = _tensor_out(name, _call(name, fn, x_t, t, prediction, tables), x_t, "x0_hat")
            yield f"{case}, {dtype}", x_t, t, prediction, out


def check_x0_from_eps(fn: Callable) -> CheckResult:
    """``fn(x_t, t, eps, tables) -> x0_hat``: DDPM eq. 4 solved for x0."""
    name = "x0_from_eps"
    schedule, tables = _tables()
    for case, x_t, t, eps, out in _x0_cases(name, fn, tables, seed=4):
        ab, a = _col(tables.alphas_cumprod, t, x_t), _col(tables.alphas, t, x_t)
        x, e = x_t.double(), eps.double()
        _diagnose(name, out, schedule.predict_x0(x_t, t, eps), {
            "a square root is missing: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)":
                (x - (1 - ab) * e) / ab,
            "you used alpha_t where alpha_bar_t belongs": (x - (1 - a).sqrt() * e) / a.sqrt(),
            "the noise must be subtracted from x_t, not added": (x + (1 - ab).sqrt() * e) / ab.sqrt(),
            "you removed the noise but did not divide by sqrt(alpha_bar_t), the signal's coefficient":
                x - (1 - ab).sqrt() * e,
            "the t index is off by one: alphas_cumprod[t] belongs to x_t":
                (x - (1 - _col(torch.roll(tables.alphas_cumprod, 1), t, x_t)).sqrt() * e)
                / _col(torch.roll(tables.alphas_cumprod, 1), t, x_t).sqrt(),
            "x0_hat is what the sampler thresholds later: return it unclipped": ((x - (1 - ab).sqrt() * e)
                                                                                 / ab.sqrt()).clamp(-1, 1),
        }, case, rtol=1e-4, precision_hint=True)
    _check_device(name, fn, x_t, t, eps, tables)
    return _passed(name, "matches (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) at random t, t = 0 and "
                         "t = T-1 (where it multiplies eps's error by ~200), in float32 and float64")


def check_x0_from_v(fn: Callable) -> CheckResult:
    """``fn(x_t, t, v, tables) -> x0_hat``: the x0 implied by a v-predicting U-Net's output (the exercise derives it)."""
    name = "x0_from_v"
    schedule, tables = _tables()
    for case, x_t, t, v, out in _x0_cases(name, fn, tables, seed=5):
        # in float64: the float32 round trip through eps multiplies rounding by 1/sqrt(alpha_bar) ~ 200
        xd, vd = x_t.double(), v.double()
        ref = schedule.predict_x0(xd, t, eps_from_v(vd, xd, t, schedule))
        ab, a = _col(tables.alphas_cumprod, t, x_t), _col(tables.alphas, t, x_t)
        x, vv = x_t.double(), v.double()
        _diagnose(name, out, ref, {
            "that is the noise, not x0: redo the substitution for x0 instead of eps":
                ab.sqrt() * vv + (1 - ab).sqrt() * x,
            "the coefficients of x_t and v are swapped":
                (1 - ab).sqrt() * x - ab.sqrt() * vv,
            "a sign is wrong: check the sign of v's term after the substitution":
                ab.sqrt() * x + (1 - ab).sqrt() * vv,
            "a square root is missing": ab * x - (1 - ab) * vv,
            "you used alpha_t where alpha_bar_t belongs": a.sqrt() * x - (1 - a).sqrt() * vv,
            "the t index is off by one: alphas_cumprod[t] belongs to x_t":
                _col(torch.roll(tables.alphas_cumprod, 1), t, x_t).sqrt() * x
                - (1 - _col(torch.roll(tables.alphas_cumprod, 1), t, x_t)).sqrt() * vv,
        }, case, rtol=1e-4, precision_hint=True)
    _check_device(name, fn, x_t, t, v, tables)
    return _passed(name, "matches the x0 implied by v at random t, t = 0 and t = T-1 (no blow-up at high noise), "
                         "in float32 and float64")


# -- exercise 4: DDIM -----------------------------------------------------------------------------------


def _sigma(ab: float, ab_prev: float, eta: float) -> float:
    return eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)


def _ddim_step_ref(x_t, eps, ab, ab_prev, eta, noise, sigma=None, direction=None):
    x0_hat = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    sigma = _sigma(ab, ab_prev, eta) if sigma is None else sigma
    direction = math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) if direction is None else direction
    return math.sqrt(ab_prev) * x0_hat + direction * eps + sigma * noise


def check_ddim_step(fn: Callable) -> CheckResult:
    """``fn(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise) -> x_prev``: DDIM eq. 12 with sigma_t(eta) of eq. 16."""
    name = "ddim_step"
    _, tables = _tables()
    g = torch.Generator().manual_seed(6)
    ab_all = tables.alphas_cumprod.tolist()
    cases = [("a middle step", ab_all[600], ab_all[580]), ("the first step", ab_all[999], ab_all[979]),
             ("the last step (to alpha_bar = 1)", ab_all[20], 1.0)]
    for eta in (0.0, 0.5, 1.0):
        for case, ab, ab_prev in cases:
            x_t = torch.randn(2, 3, 8, 8, generator=g)
            eps = torch.randn(2, 3, 8, 8, generator=g)
            z = torch.randn(2, 3, 8, 8, generator=g)
            out = _tensor_out(name, _call(name, fn, x_t, eps, ab, ab_prev, eta, z), x_t, "x_prev")
            x, e, zz = x_t.double(), eps.double(), z.double()
            s = _sigma(ab, ab_prev, eta)
            step = lambda **kw: _ddim_step_ref(x, e, ab, ab_prev, eta, zz, **kw)  # noqa: E731
            wrong_sigmas = {
                "sigma_t(eta) is wrong: eta multiplies the whole of DDIM eq. 16 (you left it out)":
                    _sigma(ab, ab_prev, 1.0),
                "sigma_t(eta) is wrong: eta enters eq. 16 once, not squared": _sigma(ab, ab_prev, eta**2),
                "sigma_t(eta) is wrong: the first factor is sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)); "
                "you inverted it": eta * math.sqrt((1 - ab) / (1 - ab_prev)) * math.sqrt(1 - ab / ab_prev)
                if ab_prev < 1 else None,
                "sigma_t(eta) is wrong: a square root is missing in eq. 16":
                    eta * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev),
                "sigma_t(eta) is wrong: it has two factors, sqrt((1 - alpha_bar_prev)/(1 - alpha_bar_t)) and "
                "sqrt(1 - alpha_bar_t/alpha_bar_prev); one is missing": eta * math.sqrt(1 - ab / ab_prev),
            }
            mistakes = {hint: step(sigma=value) for hint, value in wrong_sigmas.items()
                        if value is not None and abs(value - s) > 1e-9}
            swapped_x0 = (x - math.sqrt(1 - ab_prev) * e) / math.sqrt(ab_prev)
            mistakes.update({
                "the direction term's coefficient is sqrt(1 - alpha_bar_prev - sigma_t^2): leave room for the "
                "noise you add": step(direction=math.sqrt(1 - ab_prev)) if s > 0 else None,
                "alpha_bar_t and alpha_bar_prev are swapped": math.sqrt(ab) * swapped_x0 + math.sqrt(1 - ab) * e
                if ab_prev < 1 and eta == 0 else None,
                "with eta > 0 the step adds sigma_t times the given noise; yours adds none":
                    step(sigma=0.0, direction=math.sqrt(max(1 - ab_prev - s**2, 0.0))) if s > 0 else None,
                "you took the step without predicting x0 first: the first term is sqrt(alpha_bar_prev) times "
                "x0_hat, not times x_t": math.sqrt(ab_prev) * x + math.sqrt(max(1 - ab_prev - s**2, 0.0)) * e + s * zz,
            })
            _diagnose(name, out, step(), mistakes, f"{case}, eta = {eta}", rtol=1e-4, atol=1e-5)
    _check_device(name, fn, x_t, eps, ab, ab_prev, 0.5, z)
    return _passed(name, "matches DDIM eq. 12 with sigma_t(eta) of eq. 16 for eta = 0, 0.5, 1 on a middle, the "
                         "first and the last step")


def _toy_model(schedule: NoiseSchedule) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact eps of data ~ N(0.3, 0.5^2 I): a denoiser whose samples we can predict."""
    mu, sd = 0.3, 0.5

    def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
        if not isinstance(t, Tensor) or t.dtype != torch.long or tuple(t.shape) != (x_t.shape[0],):
            raise TypeError(f"model_fn takes t as a LongTensor [B] (one timestep per image, B = {x_t.shape[0]}), "
                            f"like a U-Net; got {t!r}")
        ab = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(x_t.dtype)
        var = ab * sd**2 + (1 - ab)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / var

    return model_fn


def check_ddim_sampler(fn: Callable) -> CheckResult:
    """``fn(model_fn, shape, tables, steps, eta, generator) -> x0`` must equal ``minimagen.samplers.ddim_sample``
    (no thresholding) draw for draw: x_T first, then one normal draw per step whose sigma_t > 0."""
    name = "ddim_sampler"
    schedule, tables = _tables()
    model_fn = _toy_model(schedule)
    shape = (3, 3, 8, 8)
    for steps, eta in ((10, 0.0), (1, 0.0), (25, 0.0), (7, 0.0), (25, 1.0), (7, 0.3)):
        ref = ddim_sample(model_fn, shape, schedule, steps=steps, eta=eta,
                          generator=torch.Generator().manual_seed(7), progress=False)
        out = _call(name, fn, model_fn, shape, tables, steps, eta, torch.Generator().manual_seed(7))
        out = _tensor_out(name, out, ref, "the samples")
        again = _call(name, fn, model_fn, shape, tables, steps, eta, torch.Generator().manual_seed(7))
        if not (isinstance(again, Tensor) and torch.equal(out, again)):
            _fail(name, "two runs with the same seed gave different samples: draw every random number from the "
                        "generator you were given (torch.randn(shape, generator=generator))")
        if _close(out, ref, 1e-4, 1e-4):
            continue
        hint = None
        if _close(out, ref.clamp(-1, 1), 1e-4, 1e-4):
            hint = "return the samples unclamped, as ddim_sample does: clamping for display is the caller's job"
        elif eta > 0:
            det = ddim_sample(model_fn, shape, schedule, steps=steps, eta=0.0,
                              generator=torch.Generator().manual_seed(7), progress=False)
            if _close(out, det, 1e-4, 1e-4):
                hint = "with eta > 0 your sampler adds no noise: draw z from the generator at each step with sigma_t > 0"
            else:
                hint = ("with eta > 0 the result differs although eta = 0 passed: draw the noise in the sampler's "
                        "order (x_T first, then one torch.randn per step with sigma_t > 0, none at the last step), "
                        "from the generator you were given")
        elif steps == 1:
            hint = "with steps = 1 the sampler makes one step from t = T-1 straight to alpha_bar = 1"
        else:
            hint = ("the samples differ at eta = 0: visit the timesteps of minimagen.samplers.ddim_timesteps "
                    "(T-1 first, 0 last), step each to the next visited one, and take the last step to "
                    "alpha_bar = 1 (not to alpha_bar_0); check_ddim_step should pass first")
        err = (out.double() - ref.double()).abs().max().item()
        _fail(name, f"{hint} (steps = {steps}, eta = {eta}; largest difference {err:.3g})")
    return _passed(name, "equals ddim_sample draw for draw at 10 and 1 deterministic steps, 25 ancestral "
                         "(eta = 1) steps and 7 steps at eta = 0.3, on an exact Gaussian denoiser")


# -- exercise 5: classifier-free guidance --------------------------------------------------------------


def check_cfg(fn: Callable) -> CheckResult:
    """``fn(eps_cond, eps_uncond, w)`` must be Imagen eq. 2: w * eps_cond + (1 - w) * eps_uncond."""
    name = "cfg"
    g = torch.Generator().manual_seed(8)
    for dtype in (torch.float32, torch.float64):
        c = torch.randn(4, 3, 8, 8, generator=g, dtype=dtype)
        u = torch.randn(4, 3, 8, 8, generator=g, dtype=dtype)
        for w in (3.0, 0.0, 7.5):
            out = _tensor_out(name, _call(name, fn, c, u, w), c, "the guided eps")
            cc, uu = c.double(), u.double()
            _diagnose(name, out, cfg(c, u, w), {
                "that is the (1 + w) convention of Ho & Salimans (eps_c + w (eps_c - eps_u)); Imagen writes "
                "w * eps_c + (1 - w) * eps_u, so that w = 1 means no guidance": (1 + w) * cc - w * uu,
                "the conditional and unconditional predictions are swapped: w weighs the conditional one":
                    w * uu + (1 - w) * cc,
                "the unconditional prediction is weighed by (1 - w) and added, not subtracted with weight w":
                    w * cc - (1 - w) * uu,
            }, f"w = {w}, {dtype}")
    out = _call(name, fn, c, u, 1.0)
    if isinstance(out, Tensor) and not _close(out, c):
        _fail(name, "at w = 1 the guided prediction must equal the conditional one (no guidance)")
    _check_device(name, fn, c, u, 3.0)
    return _passed(name, "matches Imagen eq. 2 for w = 0, 1, 3, 7.5 (w = 1 returns eps_cond), float32 and float64")


def check_guided_output(fn: Callable, unet: torch.nn.Module, encoder, schedule: NoiseSchedule,
                        prompts: Sequence[str] = ("a large red circle in the middle", "a small blue square at the top"),
                        ) -> CheckResult:
    """``fn(unet, x_t, t, text, mask, w)`` must return the guided U-Net output (eps or v, whatever the U-Net
    predicts): ``w * out(x_t, t, text) + (1 - w) * out(x_t, t, null)``, the null caption selected with
    ``text_drop``. Checked against ``minimagen.guidance.guided_model_fn`` on ``unet``."""
    name = "guided_output"
    text, mask = encoder.encode(list(prompts))
    B = len(prompts)
    g = torch.Generator().manual_seed(9)
    size = unet.config.image_size
    x_t = torch.randn(B, 3, size, size, generator=g)
    prediction = prediction_of(unet)
    with torch.no_grad():
        cond = unet(x_t, torch.full((B,), 500), text, mask)
        null = unet(x_t, torch.full((B,), 500), text, mask, text_drop=torch.ones(B, dtype=torch.bool))
        for w in (1.0, 3.0, 6.0):
            t = torch.tensor([500, 900][:B] + [100] * max(0, B - 2))
            out = _tensor_out(name, _call(name, fn, unet, x_t, t, text, mask, w), x_t, "the guided output")
            ref_eps = _guided_reference(unet, text, mask, w, schedule)(x_t, t)
            ref = ref_eps if prediction == "eps" else _eps_to_v(ref_eps, x_t, t, schedule)
            tt = torch.full((B,), 500)
            out500 = _call(name, fn, unet, x_t, tt, text, mask, w)
            _diagnose(name, out500, cfg(cond, null, w), {
                "the conditional and null-caption outputs are swapped": cfg(null, cond, w),
                "that is the (1 + w) convention; Imagen's is w * cond + (1 - w) * null": (1 + w) * cond - w * null,
                "both halves used the caption: select the null caption with text_drop=True for the unconditional "
                "half": cond if w != 1 else None,
                "both halves used the null caption: the conditional half needs text_drop False": null,
            }, f"w = {w}", rtol=1e-4, atol=1e-4)
            _diagnose(name, out, ref, {}, f"w = {w} at mixed timesteps", rtol=1e-4, atol=1e-4)
    return _passed(name, f"matches guided_model_fn on the given {prediction}-predicting U-Net for w = 1, 3, 6, "
                         f"with the null caption chosen by text_drop")


def _guided_reference(unet, text, mask, w, schedule):
    return guided_model_fn(unet, text, mask, w, schedule=schedule)


def _eps_to_v(eps: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    # v = (eps - sqrt(1 - alpha_bar) x_t) / sqrt(alpha_bar), the inverse of diffusion.eps_from_v
    ab = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(x_t.dtype)
    return (eps - (1 - ab).sqrt() * x_t) / ab.sqrt()


# -- exercise 6: thresholding ----------------------------------------------------------------------------


def check_static_threshold(fn: Callable) -> CheckResult:
    """``fn(x0) -> x0`` clipped to [-1, 1] (Imagen §2.3)."""
    name = "static_threshold"
    g = torch.Generator().manual_seed(10)
    for dtype in (torch.float32, torch.float64):
        x0 = torch.randn(4, 3, 8, 8, generator=g, dtype=dtype) * 2
        out = _tensor_out(name, _call(name, fn, x0), x0, "the thresholded x0")
        _diagnose(name, out, static_threshold(x0), {
            "you rescaled the sample instead of clipping it: that is dynamic thresholding's move":
                x0 / x0.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1),
            "only the upper side is clipped: clip to [-1, 1]": x0.clamp(max=1),
        }, str(dtype))
    _check_device(name, fn, x0)
    return _passed(name, "clips to [-1, 1] in float32 and float64 without changing its input")


def check_dynamic_threshold(fn: Callable) -> CheckResult:
    """``fn(x0, percentile) -> x0``: per sample s = max(1, quantile(|x0|, p)), then clip(x0, -s, s) / s."""
    name = "dynamic_threshold"
    g = torch.Generator().manual_seed(11)
    scales = torch.tensor([0.5, 1.5, 3.0, 8.0]).reshape(4, 1, 1, 1)
    cases = []
    for dtype in (torch.float32, torch.float64):
        x0 = (torch.randn(4, 3, 8, 8, generator=g) * scales).to(dtype)
        cases += [(f"samples of different scales, {dtype}", x0, 0.995), (f"p = 0.9, {dtype}", x0, 0.9)]
    zeros = torch.zeros(2, 3, 8, 8)
    zeros[1] = torch.randn(3, 8, 8, generator=g) * 4
    cases.append(("an all-zero sample beside a large one", zeros, 0.995))
    for case, x0, p in cases:
        out = _tensor_out(name, _call(name, fn, x0, p), x0, "the thresholded x0")
        x = x0.double()
        flat = x.abs().reshape(x.shape[0], -1)
        s = torch.quantile(flat, p, dim=1).reshape(-1, 1, 1, 1)
        s_floor = s.clamp(min=1)
        s_batch = torch.quantile(flat.reshape(-1), p).clamp(min=1)
        s_signed = torch.quantile(x.reshape(x.shape[0], -1), p, dim=1).reshape(-1, 1, 1, 1).clamp(min=1)
        _diagnose(name, out, dynamic_threshold(x0, p), {
            "the percentile is taken over the whole batch; Imagen takes it per sample, so each image gets "
            "its own s": torch.maximum(torch.minimum(x, s_batch), -s_batch) / s_batch,
            "s has no floor at 1: s = max(1, quantile(|x0|, p)), so a sample already inside [-1, 1] is left "
            "alone, not stretched": (torch.maximum(torch.minimum(x, s), -s) / s) if bool((s > 0).all()) else None,
            "you divide by s without clipping to [-s, s] first: the pixels beyond the percentile stay outside "
            "[-1, 1]": x / s_floor,
            "you clip to [-s, s] but do not divide by s: the result is not back inside [-1, 1]":
                torch.maximum(torch.minimum(x, s_floor), -s_floor),
            "the percentile must be of |x0| (absolute values), not of the signed pixels":
                torch.maximum(torch.minimum(x, s_signed), -s_signed) / s_signed,
            "you divided by the largest |pixel| (the 100th percentile), not by the p-quantile":
                x / flat.amax(dim=1).clamp(min=1).reshape(-1, 1, 1, 1),
            "your s is 1 for every sample, so this is static thresholding: the percentile is a fraction "
            "(0.995, not 99.5), and the floor is max(1, s), i.e. clamp(min=1), not clamp(max=1)": x.clamp(-1, 1),
        }, case, rtol=1e-4, atol=1e-5)
    _check_device(name, fn, cases[0][1], 0.995)
    return _passed(name, "matches Imagen §2.3 per sample (s floored at 1, clip then divide) at p = 0.995 and "
                         "0.9, on samples of different scales and on an all-zero sample")


# -- exercise 7: noise-conditioning augmentation -------------------------------------------------------


def check_sr_inputs(fn: Callable) -> CheckResult:
    """``fn(lowres, size, aug_level, tables, noise) -> {"lowres": ..., "aug_level": ...}``: the 64 px input upsampled
    to ``size``, corrupted with the forward process at ``aug_level`` (Imagen §2.4), and the level itself."""
    name = "sr_inputs"
    schedule, tables = _tables()
    g = torch.Generator().manual_seed(12)
    lowres = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(3, 3, 64, 64, generator=g)
    for case, level in (("levels 0, 50, 200", torch.tensor([0, 50, 200])),
                        ("level 999 (all noise)", torch.full((3,), 999))):
        out = _call(name, fn, lowres, 64, level, tables, noise,
                    size_hint="upsample lowres to the stage's size (upsample(lowres, size)) before adding the "
                              "noise, which is drawn at that size")
        if not isinstance(out, dict) or "lowres" not in out:
            _fail(name, "return a dict with the keys 'lowres' (the noised, upsampled image) and 'aug_level'")
        if out.get("aug_level") is None:
            _fail(name, "you noised the low-res input but did not pass the level on: the U-Net must be told "
                        "how noisy its input is (return it as 'aug_level')")
        ref = sr_inputs(lowres, 64, level, schedule, noise)
        got = _tensor_out(name, out["lowres"], ref["lowres"], "'lowres'")
        lvl = out["aug_level"]
        if not isinstance(lvl, Tensor) or lvl.shape != level.shape or not torch.equal(lvl.long(), level):
            _fail(name, "'aug_level' must be the levels the input was noised at, one integer per sample "
                        f"(got {lvl!r}); a U-Net told the wrong level learns to trust a noisy input")
        up = upsample(lowres, 64).double()
        ab = _col(tables.alphas_cumprod, level, up)
        small = torch.nn.functional.interpolate(noise, size=16, mode="area")
        noised_small = (ab.sqrt() * lowres.double() + (1 - ab).sqrt() * small.double())
        _diagnose(name, got, ref["lowres"], {
            "you passed the level but did not noise the input: corrupt it with q(x_t | x0) at that level":
                up if int(level.max()) > 0 else None,
            "you noised the image before upsampling it: the stage's noise is drawn at its own resolution, "
            "on the upsampled image": upsample(noised_small.float(), 64).double(),
            "you used alpha_t where alpha_bar_t belongs": _col(tables.alphas, level, up).sqrt() * up
                + (1 - _col(tables.alphas, level, up)).sqrt() * noise.double(),
            "a square root is missing in the forward process": ab * up + (1 - ab) * noise.double(),
        }, case, rtol=1e-4, atol=1e-5)
    _check_device(name, fn, lowres, 64, torch.tensor([0, 50, 200]), tables, noise)
    return _passed(name, "upsamples, noises with the forward process at each sample's level (0 to 999) and "
                         "passes the level on, as minimagen.cascade.sr_inputs does")



# -- exercise 8: the mini-project, graded by the probe -------------------------------------------------

# The reference sampler a student's few-step settings are measured against (25 DDIM steps, static
# thresholding, w = 3): what the project must match at a fraction of the cost.
DEFAULT_SAMPLER = {"guidance": 3.0, "threshold": "static", "steps": 25, "eta": 0.0}


def _check_settings(name: str, settings, max_steps: int) -> dict:
    if not isinstance(settings, dict):
        _fail(name, f"return a dict with the keys {sorted(DEFAULT_SAMPLER)}, got {type(settings).__name__}")
    missing, extra = set(DEFAULT_SAMPLER) - set(settings), set(settings) - set(DEFAULT_SAMPLER)
    if missing or extra:
        _fail(name, f"the settings need exactly the keys {sorted(DEFAULT_SAMPLER)}"
                    + (f"; missing {sorted(missing)}" if missing else "") + (f"; unknown {sorted(extra)}" if extra else ""))
    w, mode, steps, eta = (settings[k] for k in ("guidance", "threshold", "steps", "eta"))
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
        _fail(name, f"guidance must be a finite number >= 0 (1 = no guidance), got {w!r}")
    if mode not in ("none", "static", "dynamic"):
        _fail(name, f"threshold must be 'none', 'static' or 'dynamic' (the project keeps to the three named modes), "
                    f"got {mode!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= max_steps:
        _fail(name, f"steps must be an int from 1 to {max_steps} (the project's budget of U-Net calls per image), "
                    f"got {steps!r}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        _fail(name, f"eta must be a number in [0, 1], got {eta!r}")
    return {"guidance": float(w), "threshold": mode, "steps": steps, "eta": float(eta)}


def sampler_settings(choose: Callable[[], dict], max_steps: int = 3) -> dict:
    """The settings ``choose()`` returns, checked as ``check_sampler_settings`` checks them (keys, types,
    ranges, the step budget) before anything is sampled: a project cell can preview them safely."""
    checks.integer("max_steps", max_steps, 1, DEFAULT_SAMPLER["steps"])
    return _check_settings("sampler_settings", _call("sampler_settings", choose), max_steps)


@dataclasses.dataclass(frozen=True)
class SamplerComparison:
    """A few-step sampler against the reference on the same prompts and noise: the per-prompt alignment gain
    (mean and standard error, paired) and the ratio of the two samplers' high-frequency energy (grain: the
    mean over the images of ``metrics.sharpness``, edges included)."""

    gain: float
    gain_se: float
    grain_ratio: float

    @classmethod
    def of(cls, reference_scores: Tensor, scores: Tensor, reference_grain: Tensor, grain: Tensor):
        if not (reference_scores.shape == scores.shape and reference_scores.ndim == 1 and len(scores) >= 2):
            raise ValueError(f"scores must be two [n] tensors of the same n >= 2 (one per prompt), got shapes "
                             f"{list(reference_scores.shape)} and {list(scores.shape)}")
        reference_energy = reference_grain.double().mean().item()
        if not reference_energy > 0:
            raise ValueError(f"the reference's grain must be positive, got {reference_energy!r}: flat images?")
        diff = (scores - reference_scores).double()  # [n], paired: same prompt, same starting noise
        return cls(diff.mean().item(), diff.std().item() / len(diff) ** 0.5,
                   grain.double().mean().item() / reference_energy)

    def failures(self, tolerance: float, grain_tolerance: float) -> list[str]:
        """What rules the sampler out, in words: empty when it matches the reference. Written so that a NaN
        (a broken sampler) fails both tests rather than passing them."""
        out = []
        lower = self.gain - 2 * self.gain_se
        if not lower >= -tolerance:
            out.append(f"a loss of alignment larger than {tolerance:g} is not ruled out (gain {self.gain:+.3f} "
                       f"± {self.gain_se:.3f}; gain - 2 SE = {lower:+.3f}): lesson 07 shows how far a guided "
                       f"x0_hat overshoots at the first steps, and what each thresholding does with it")
        if not abs(self.grain_ratio - 1) <= grain_tolerance:
            band = f"allowed: {1 - grain_tolerance:.2f}x to {1 + grain_tolerance:.2f}x"
            if self.grain_ratio > 1:
                why = ("a few large steps leave noise in the image that the probe reads through; lesson 08 "
                       "shows what the size of a step and the fresh noise of eta > 0 leave behind, and lesson "
                       "07 how much larger a guided x0_hat is than an unguided one")
            else:
                why = "the images are smoother than the reference's: edges and textures are lost"
            out.append(f"the images carry {self.grain_ratio:.2f}x the reference's high-frequency energy ({band}): "
                       f"{why}")
        return out


def check_sampler_settings(choose: Callable[[], dict], imagen, probe, *, n: int = 64, max_steps: int = 3,
                           tolerance: float = 0.02, grain_tolerance: float = 0.15, seed: int = 0,
                           precision: str = "auto") -> CheckResult:
    """Do the settings ``choose()`` returns draw as well as ``DEFAULT_SAMPLER`` with at most ``max_steps``
    U-Net calls (sampling steps) per image instead of its 25?

    Both samplers draw the same ``n`` held-out prompts from the same starting noise, and two tests compare
    them:

    * alignment (``minimagen.metrics.alignment``), prompt by prompt: the mean per-prompt gain minus two
      standard errors must be at least ``-tolerance``, so that a loss larger than ``tolerance`` is ruled out;
    * grain: the mean over the images of their high-frequency energy (``minimagen.metrics.sharpness``, the
      mean |Laplacian|, edges included), divided by the reference's, must lie within 1 ± ``grain_tolerance``:
      too few steps leave noise in an image whose attributes the probe still reads.
    """
    name = "sampler_settings"
    checks.integer("max_steps", max_steps, 1, DEFAULT_SAMPLER["steps"])
    checks.number("tolerance", tolerance, 0.0, 1.0)
    checks.number("grain_tolerance", grain_tolerance, 0.0, 0.99)
    checks.integer("seed", seed, 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 32:
        _fail(name, f"n must be an int >= 32 (fewer prompts make the standard error itself unreliable, and the "
                    f"grain ratio has no error bar), got {n!r}")
    chosen = _check_settings(name, _call(name, choose), max_steps)
    captions, _ = eval_prompts(n)
    scores, grain = [], []
    for s in (DEFAULT_SAMPLER, chosen):
        images = sample_in_batches(imagen, captions, guidance=s["guidance"], threshold=s["threshold"],
                                   steps=s["steps"], eta=s["eta"], seed=seed, precision=precision).clamp(-1, 1)
        scores.append(alignment(probe, images, captions))
        grain.append(sharpness(images))
    result = SamplerComparison.of(scores[0], scores[1], grain[0], grain[1])
    summary = (f"alignment {scores[1].mean():.3f} against the reference's {scores[0].mean():.3f} on {n} held-out "
               f"prompts (gain {result.gain:+.3f} ± {result.gain_se:.3f}), grain {result.grain_ratio:.2f}x the "
               f"reference's, with {chosen['steps']} U-Net calls per image against {DEFAULT_SAMPLER['steps']}")
    problems = result.failures(tolerance, grain_tolerance)
    if problems:
        _fail(name, f"{summary}; " + "; and ".join(problems))
    return _passed(name, f"{summary}: a loss of alignment larger than {tolerance:g} is ruled out, and the grain is "
                         f"within ±{100 * grain_tolerance:g}%")
