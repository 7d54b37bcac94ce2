"""The shared argument checks: what they accept, and that each error names the argument and the value."""

import numpy as np
import pytest
import torch

from minimagen import checks


def test_integer_accepts_ints_in_range_and_numpy_ints():
    assert checks.integer("n", 3) == 3
    assert checks.integer("n", np.int64(3)) == 3 and type(checks.integer("n", np.int64(3))) is int
    assert checks.integer("seed", 0, 0) == 0
    assert checks.integer("steps", 25, 1, 25) == 25


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "3", None, 26])
def test_integer_refuses_with_the_argument_and_the_bound(value):
    with pytest.raises(ValueError, match=r"steps must be an int from 1 to 25 \(at most T\); got"):
        checks.integer("steps", value, 1, 25, note="at most T")


def test_number():
    assert checks.number("w", 3) == 3.0 and checks.number("w", torch.tensor(2.5)) == 2.5
    with pytest.raises(TypeError, match="w must be a number"):
        checks.number("w", "3")
    with pytest.raises(TypeError, match="w must be a number"):
        checks.number("w", True)
    with pytest.raises(ValueError, match="w must be >= 0; got -1.0"):
        checks.number("w", -1, minimum=0)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        checks.number("p", 1.5, 0, 1)
    with pytest.raises(ValueError, match="nan"):
        checks.number("w", float("nan"))
    with pytest.raises(ValueError, match="w must be >= 0"):
        checks.number("w", float("nan"), minimum=0)


def test_choice_tensor_and_shapes():
    assert checks.choice("mode", "static", ("static", "dynamic")) == "static"
    with pytest.raises(ValueError, match="mode must be one of 'static', 'dynamic'; got 'dinamic'"):
        checks.choice("mode", "dinamic", ("static", "dynamic"))
    x = torch.zeros(2, 3)
    assert checks.float_tensor("x", x) is x
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        checks.float_tensor("x", [1.0])
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        checks.float_tensor("x", torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"eps must have the shape of x \[2, 3\]; got \[3, 2\]"):
        checks.same_shape(x, "x", torch.zeros(3, 2), "eps")
    assert checks.batch_shape("shape", [1, 3, 8, 8]) == (1, 3, 8, 8)
    for bad in [(1, 3, 8), (1, 3, 8, 0), (1, 3, 8.0, 8), "1384"]:
        with pytest.raises(ValueError, match="shape must be a tuple of 4 positive ints"):
            checks.batch_shape("shape", bad)
