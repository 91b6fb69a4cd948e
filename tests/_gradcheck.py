"""Gradient checks shared by the LRU and stack tests: every strategy against
`jax.grad` through `lax.scan` (`Autodiff()`) and central finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import rnnode as rn


def flat_loss(model, xs, ys, gradient, **kwargs):
    """The loss as a function of the flat parameter vector, and that vector."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)

    def f(flat):
        m = eqx.combine(unravel(flat), static)
        return rn.sequence_loss(m, xs, ys, gradient=gradient, **kwargs)

    return f, flat


def check_gradients(model, xs, ys, strategies, *, rtol=1e-9, num_fd=3, **kwargs):
    """Assert that every strategy gives `Autodiff()`'s loss and gradient, and that
    these match central differences on `num_fd` entries with a sizeable gradient.

    **Returns:** the reference gradient (flat).
    """
    f_ref, flat = flat_loss(model, xs, ys, rn.Autodiff(), **kwargs)
    fs = [flat_loss(model, xs, ys, s, **kwargs)[0] for s in strategies]

    @jax.jit
    def run(flat):
        return jax.value_and_grad(f_ref)(flat), [
            jax.value_and_grad(f)(flat) for f in fs
        ]

    (loss, g_ref), results = run(flat)
    for strategy, (value, g) in zip(strategies, results, strict=True):
        np.testing.assert_allclose(value, loss, rtol=1e-12, err_msg=repr(strategy))
        np.testing.assert_allclose(
            g,
            g_ref,
            rtol=rtol,
            atol=1e-11 * np.abs(g_ref).max(),
            err_msg=repr(strategy),
        )
    f_jit = lambda flat: run(flat)[0][0]  # reuse the compiled function
    big = np.flatnonzero(np.abs(g_ref) > 1e-2 * np.abs(g_ref).max())
    rng = np.random.default_rng(0)
    for i in rng.choice(big, size=min(num_fd, big.size), replace=False):
        e = jnp.zeros_like(flat).at[i].set(1e-5)
        fd = (f_jit(flat + e) - f_jit(flat - e)) / 2e-5
        np.testing.assert_allclose(g_ref[i], fd, rtol=1e-6, atol=1e-9)
    return g_ref


def cosine(a, b) -> float:
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
