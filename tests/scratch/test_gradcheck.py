"""The finite-difference checker itself: exact on known derivatives, and it catches a wrong one."""

import numpy as np

from cnnlab.scratch.gradcheck import numerical_gradient, relative_error


def test_numerical_gradient_of_known_functions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4))
    dout = rng.normal(size=(3, 4))
    numeric = numerical_gradient(lambda: np.sin(x) * x, x, dout)
    assert relative_error(dout * (np.cos(x) * x + np.sin(x)), numeric) < 1e-8
    before = x.copy()
    numerical_gradient(lambda: x**3, x, dout)
    assert np.array_equal(x, before)  # every entry restored


def test_relative_error_separates_right_from_wrong():
    a = np.array([1.0, -2.0, 3.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(a, a * (1 + 1e-9)) < 1e-8
    assert relative_error(a, -a) == 1.0
    assert relative_error(np.zeros(2), np.zeros(2)) == 0.0
