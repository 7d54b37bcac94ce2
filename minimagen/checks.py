"""Argument checks at the library's boundary, written once.

Every public function checks its arguments before any work and raises a ``ValueError`` or ``TypeError``
that names the argument, says what was expected and shows what it got (STYLE.md, point 9), e.g.

    ValueError: T must be an int >= 1 (the number of diffusion steps); got 0

Each check returns the value it accepted, so a caller can write ``self.n = checks.integer("n", n)``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

__all__ = ["integer", "number", "choice", "float_tensor", "same_shape", "batch_shape"]


def _note(note: str) -> str:
    return f" ({note})" if note else ""


def integer(name: str, value: object, minimum: int = 1, maximum: int | None = None, note: str = "") -> int:
    """``value`` if it is an int in [minimum, maximum]; numpy ints are accepted, bools are not (True is a bug,
    not "one")."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        ok = False
    else:
        value = int(value.__index__())
        ok = value >= minimum and (maximum is None or value <= maximum)
    if not ok:
        bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ValueError(f"{name} must be an int {bound}{_note(note)}; got {value!r}")
    return value


def number(name: str, value: object, minimum: float | None = None, maximum: float | None = None,
           note: str = "") -> float:
    """``value`` as a float if it is a real number in [minimum, maximum] (nan is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, Tensor) and value.ndim == 0):
        raise TypeError(f"{name} must be a number{_note(note)}; got {type(value).__name__}")
    value = float(value)
    low_ok = value >= minimum if minimum is not None else value == value
    high_ok = value <= maximum if maximum is not None else value == value
    if not (low_ok and high_ok):
        if minimum is not None and maximum is not None:
            bound = f"in [{minimum:g}, {maximum:g}]"
        elif minimum is not None:
            bound = f">= {minimum:g}"
        elif maximum is not None:
            bound = f"<= {maximum:g}"
        else:
            bound = "a number, not nan"
        raise ValueError(f"{name} must be {bound}{_note(note)}; got {value!r}")
    return value


def choice(name: str, value: object, options: Iterable) -> object:
    """``value`` if it is one of ``options``."""
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}")
    return value


def float_tensor(name: str, value: object) -> Tensor:
    """``value`` if it is a floating-point tensor with a batch dimension [B, ...]."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.ndim < 1 or not value.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor [B, ...]; got dtype {value.dtype}, "
                         f"shape {list(value.shape)}")
    return value


def same_shape(a: Tensor, a_name: str, b: object, b_name: str) -> Tensor:
    """``b`` if it is a tensor of ``a``'s shape."""
    if not isinstance(b, Tensor):
        raise TypeError(f"{b_name} must be a torch.Tensor; got {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{b_name} must have the shape of {a_name} {list(a.shape)}; got {list(b.shape)}")
    return b


def batch_shape(name: str, shape: object) -> tuple[int, int, int, int]:
    """``shape`` as a tuple if it is 4 positive ints (B, C, H, W)."""
    ok = isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 4
    if ok:
        try:
            shape = tuple(integer(name, n) for n in shape)
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(f"{name} must be a tuple of 4 positive ints (B, C, H, W); got {shape!r}")
    return shape
