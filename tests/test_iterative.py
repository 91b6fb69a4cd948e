"""The iterative inverse `V A = a` by `V ← V (I - A) + a`, and `neumann_solve`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import rnnode
from rnnode import RESULTS, iterative_inverse, neumann_solve


def _contractive_matrix(key, n, rho=0.6):
    """`A = I - M` with `ρ(M) = rho`, so `V ← V (I - A) + a` converges."""
    M = jr.normal(key, (n, n))
    M = rho * M / np.max(np.abs(np.linalg.eigvals(np.asarray(M))))
    return jnp.eye(n) - M


def test_scalar_reciprocal():
    a = jnp.array([0.05, 0.5, 1.0, 1.5, 1.95])
    sol = jax.jit(jax.vmap(lambda s: iterative_inverse(s, return_info=True)))(a)
    np.testing.assert_allclose(sol.value, 1 / a, rtol=1e-10, atol=0)
    assert bool(jnp.all(sol.result == RESULTS.successful))
    assert np.all(np.asarray(sol.residual) <= 1e-11)
    # convergence rate |1 - a|: a = 1 is exact after one step, a = 1.95 is slow
    assert int(sol.num_steps[2]) == 1
    assert int(sol.num_steps[4]) > int(sol.num_steps[1]) > 1
    assert float(iterative_inverse(0.5)) == pytest.approx(2.0, rel=1e-10)


def test_matrix_inverse_and_rows(getkey):
    n = 6
    A = _contractive_matrix(getkey(), n)
    Ainv = jnp.linalg.inv(A)
    np.testing.assert_allclose(iterative_inverse(A), Ainv, rtol=0, atol=1e-10)
    a = jr.normal(getkey(), (n,))
    v = iterative_inverse(A, a)
    np.testing.assert_allclose(v, a @ Ainv, rtol=0, atol=1e-10)
    np.testing.assert_allclose(v @ A, a, rtol=0, atol=1e-10)
    rows = jr.normal(getkey(), (3, n))
    np.testing.assert_allclose(iterative_inverse(A, rows), rows @ Ainv, atol=1e-10)


def test_damping_extends_convergence():
    # |1 - 3| = 2: undamped diverges; with β = 0.5, |1 - 1.5| < 1 converges.
    assert float(iterative_inverse(3.0, damping=0.5)) == pytest.approx(1 / 3, rel=1e-10)
    A = 3.0 * jnp.eye(3) + 0.1 * jnp.ones((3, 3))
    np.testing.assert_allclose(
        iterative_inverse(A, damping=0.3), jnp.linalg.inv(A), atol=1e-10
    )


@pytest.mark.parametrize(
    "a, expected",
    [
        (3.0, RESULTS.diverged),  # |1 - a| = 2 > 1
        (-1.0, RESULTS.diverged),  # |1 - a| = 2 > 1
        (2.0, RESULTS.max_steps_reached),  # |1 - a| = 1: oscillates forever
        (0.0, RESULTS.max_steps_reached),  # |1 - a| = 1: grows linearly
    ],
)
def test_scalar_failure_reported(a, expected):
    sol = iterative_inverse(a, throw=False, return_info=True, max_steps=3000)
    assert bool(sol.result == expected)
    assert bool(jnp.isfinite(sol.value))
    with pytest.raises(eqx.EquinoxRuntimeError, match="spectral radius"):
        iterative_inverse(a, max_steps=3000)


def test_matrix_failure_reported(getkey):
    A = _contractive_matrix(getkey(), 5, rho=1.3)  # ρ(I - A) = 1.3
    sol = iterative_inverse(A, throw=False, return_info=True)
    assert not bool(sol.result == RESULTS.successful)
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    assert int(sol.num_steps) > 0
    with pytest.raises(eqx.EquinoxRuntimeError):
        iterative_inverse(A)


def test_gradients(getkey):
    # d(1/a)/da = -1/a², under vmap, grad(vmap) and jit
    a = jnp.array([0.3, 0.8, 1.6])
    g = jax.jit(jax.vmap(jax.grad(iterative_inverse)))(a)
    np.testing.assert_allclose(g, -1 / a**2, rtol=1e-9)
    g2 = jax.grad(lambda s: jnp.sum(jax.vmap(iterative_inverse)(s)))(a)
    np.testing.assert_allclose(g2, -1 / a**2, rtol=1e-9)
    # matrix: against jnp.linalg.inv
    A = _contractive_matrix(getkey(), 4)
    b = jr.normal(getkey(), (4,))
    f = lambda A, b: jnp.sum(jnp.sin(iterative_inverse(A, b)))
    f_ref = lambda A, b: jnp.sum(jnp.sin(b @ jnp.linalg.inv(A)))
    for g, r in zip(
        jax.grad(f, (0, 1))(A, b), jax.grad(f_ref, (0, 1))(A, b), strict=True
    ):
        np.testing.assert_allclose(g, r, atol=1e-10)


def test_neumann_solve(getkey):
    n = 5
    M = jnp.eye(n) - _contractive_matrix(getkey(), n, rho=0.7)
    a = {"u": jr.normal(getkey(), (n,))}
    sol = neumann_solve(lambda v: {"u": v["u"] @ M}, a)
    ref = a["u"] @ jnp.linalg.inv(jnp.eye(n) - M)
    np.testing.assert_allclose(sol.value["u"], ref, atol=1e-10)
    assert bool(sol.result == RESULTS.successful)
    bad = neumann_solve(lambda v: 1.5 * v, jnp.ones(3), throw=False)
    assert bool(bad.result == RESULTS.diverged)
    with pytest.raises(eqx.EquinoxRuntimeError, match="ρ\\(M\\)"):
        neumann_solve(lambda v: 1.5 * v, jnp.ones(3))


def test_input_validation():
    with pytest.raises(ValueError, match="square"):
        iterative_inverse(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        iterative_inverse(jnp.eye(3), jnp.ones(4))
    with pytest.raises(ValueError, match="damping"):
        iterative_inverse(0.5, damping=0.0)
    with pytest.raises(ValueError, match="max_steps"):
        iterative_inverse(0.5, max_steps=-1)
    assert rnnode.iterative_inverse is iterative_inverse
