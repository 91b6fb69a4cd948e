"""Integrators against analytic solutions and their convergence orders; the diffrax
bridge against scipy's solve_ivp."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import rnnode as rn

OMEGA = 1.7
A, B = 0.8, -0.3  # x(t) = A cos(ωt) + B sin(ωt)


def _harmonic_error(integrator_cls, dt, t_end=2.0):
    osc = rn.DampedOscillator(mass=1.0, damping=0.0, stiffness=OMEGA**2)
    model = rn.Model(osc, integrator_cls(dt=dt))
    steps = round(t_end / dt)
    h0 = jnp.array([A, B * OMEGA])
    hs, _ = jax.jit(lambda xs: model.rollout(xs, h0=h0))(jnp.zeros((steps, 1)))
    t = dt * steps
    exact = np.array(
        [
            A * np.cos(OMEGA * t) + B * np.sin(OMEGA * t),
            -A * OMEGA * np.sin(OMEGA * t) + B * OMEGA * np.cos(OMEGA * t),
        ]
    )
    return float(np.max(np.abs(np.asarray(hs[-1]) - exact)))


@pytest.mark.parametrize(
    "integrator_cls, order", [(rn.Euler, 1), (rn.Heun, 2), (rn.RK4, 4)]
)
def test_convergence_order_harmonic(integrator_cls, order):
    dts = [0.04, 0.02, 0.01]
    errors = [_harmonic_error(integrator_cls, dt) for dt in dts]
    slopes = np.diff(np.log(errors)) / np.diff(np.log(dts))
    assert np.all(np.abs(slopes - order) < 0.15), (errors, slopes)


def test_rk4_is_accurate_at_small_step():
    assert _harmonic_error(rn.RK4, 0.01) < 1e-8


def _oscillator_reference(m, gamma, k, y0, forces, dt):
    """Interval by interval with solve_ivp: zero-order hold of the force."""
    ys, y = [], np.asarray(y0, dtype=float)
    for i, f in enumerate(forces):
        sol = scipy.integrate.solve_ivp(
            lambda t, y, f=f: [y[1], (f - gamma * y[1] - k * y[0]) / m],
            (i * dt, (i + 1) * dt),
            y,
            method="DOP853",
            rtol=1e-12,
            atol=1e-12,
        )
        y = sol.y[:, -1]
        ys.append(y)
    return np.stack(ys)


def test_diffrax_bridge_matches_solve_ivp():
    m, gamma, k, dt = 1.3, 0.4, 2.1, 0.25
    forces = np.cos(1.1 * dt * np.arange(40))
    osc = rn.DampedOscillator(mass=m, damping=gamma, stiffness=k)
    integrator = rn.Diffrax(
        dt,
        solver=diffrax.Tsit5(),
        stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-11),
    )
    model = rn.Model(osc, integrator)
    y0 = np.array([0.5, -0.2])
    hs, _ = model.rollout(jnp.asarray(forces)[:, None], h0=jnp.asarray(y0))
    ref = _oscillator_reference(m, gamma, k, y0, forces, dt)
    np.testing.assert_allclose(np.asarray(hs), ref, rtol=0, atol=1e-8)


def test_linear_interpolation_is_used_between_samples():
    # dr/dt = -r + x(t) with x linear in t: r(t) has a closed form.
    field = rn.LinearExample(0.0, 0.0)
    dt = 0.5
    xs = jnp.asarray(np.arange(6, dtype=float))[:, None]  # x(t) = t / dt
    integ = rn.Diffrax(
        dt,
        stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-11),
        interpolation="linear",
    )
    hs, _ = rn.Model(field, integ).rollout(xs, h0=jnp.zeros(1))
    t = dt * np.arange(1, 6)
    # r' = -r + t/dt, r(0)=0  =>  r = (t - 1 + e^{-t}) / dt
    exact = (t - 1 + np.exp(-t)) / dt
    np.testing.assert_allclose(np.asarray(hs[:5, 0]), exact, atol=1e-8)


@pytest.mark.parametrize("cls", [rn.Euler, rn.Heun, rn.RK4, rn.Diffrax])
@pytest.mark.parametrize("dt", [-0.1, 0.0, float("nan")])
def test_bad_dt_raises(cls, dt):
    with pytest.raises(ValueError, match="dt"):
        cls(dt=dt)


def test_bad_interpolation_raises():
    with pytest.raises(ValueError, match="interpolation"):
        rn.Euler(dt=0.1, interpolation="cubic")
