"""The neural-network ODE solver against closed-form solutions: the harmonic
oscillator `A cos(ω₀ t) + B sin(ω₀ t)` and the damped oscillator, as second-order
equations and as a first-order system; initial conditions hold exactly."""

import jax.numpy as jnp
import numpy as np
import pytest

import rnnode as rn

T_EVAL = np.linspace(0.0, 2 * np.pi, 2001)
GAMMA, OMEGA0 = 0.3, 1.0


def _damped_exact(t, x0=1.0, v0=0.0):
    # x'' + γ x' + ω₀² x = 0, underdamped.
    wd = np.sqrt(OMEGA0**2 - GAMMA**2 / 4)
    B = (v0 + GAMMA / 2 * x0) / wd
    return np.exp(-GAMMA * t / 2) * (x0 * np.cos(wd * t) + B * np.sin(wd * t))


def _damped_second_order(t, y, dy):
    return -GAMMA * dy - OMEGA0**2 * y


def test_harmonic_oscillator_second_order(key):
    A, B = 1.0, 0.5
    sol = rn.solve_ode_nn(
        lambda t, y, dy: -(OMEGA0**2) * y,
        (0.0, 2 * np.pi),
        A,
        order=2,
        v0=B * OMEGA0,
        key=key,
    )
    exact = A * np.cos(OMEGA0 * T_EVAL) + B * np.sin(OMEGA0 * T_EVAL)
    assert sol(T_EVAL).shape == T_EVAL.shape
    assert np.max(np.abs(sol(T_EVAL) - exact)) < 1e-3
    assert sol.residual < 1e-6 and sol.losses[-1] < sol.losses[0]
    # Initial conditions by construction, whatever the network.
    assert sol(0.0) == pytest.approx(A, abs=1e-15)
    assert sol.derivative(0.0) == pytest.approx(B * OMEGA0, abs=1e-14)
    np.testing.assert_allclose(
        sol.derivative(T_EVAL[::100]),
        -A * OMEGA0 * np.sin(T_EVAL[::100]) + B * OMEGA0 * np.cos(T_EVAL[::100]),
        atol=1e-3,
    )


def test_damped_oscillator_second_order(key):
    sol = rn.solve_ode_nn(
        _damped_second_order, (0.0, 2 * np.pi), 1.0, order=2, v0=0.0, key=key
    )
    assert np.max(np.abs(sol(T_EVAL) - _damped_exact(T_EVAL))) < 1e-3


def test_damped_oscillator_first_order_system(key):
    def f(t, y):
        return jnp.stack([y[1], _damped_second_order(t, y[0], y[1])])

    y0 = jnp.array([1.0, 0.0])
    sol = rn.solve_ode_nn(f, (0.0, 2 * np.pi), y0, key=key)
    y = sol(T_EVAL)
    assert y.shape == (T_EVAL.size, 2)
    np.testing.assert_array_equal(sol(0.0), y0)
    assert np.max(np.abs(y[:, 0] - _damped_exact(T_EVAL))) < 1e-3


def test_argument_errors(key):
    f = lambda t, y: -y
    with pytest.raises(ValueError, match="`order` must be 1 or 2"):
        rn.solve_ode_nn(f, (0, 1), 1.0, order=3, key=key)
    with pytest.raises(ValueError, match="`v0`.*required for `order=2`"):
        rn.solve_ode_nn(f, (0, 1), 1.0, order=2, key=key)
    with pytest.raises(ValueError, match="`v0`"):
        rn.solve_ode_nn(f, (0, 1), 1.0, v0=1.0, key=key)
    with pytest.raises(ValueError, match="`t_span`"):
        rn.solve_ode_nn(f, (1, 1), 1.0, key=key)
    with pytest.raises(ValueError, match="`num_points`"):
        rn.solve_ode_nn(f, (0, 1), 1.0, num_points=1, key=key)
    with pytest.raises(ValueError, match="`v0` must have"):
        rn.solve_ode_nn(
            lambda t, y, v: -y, (0, 1), jnp.ones(2), order=2, v0=1.0, key=key
        )
