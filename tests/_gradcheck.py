"""The gradient checks shared by the tests: every strategy against `jax.grad`
through `lax.scan` (`Autodiff()`) and central finite differences, and the
measures of how far two gradients are apart."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.flatten_util import ravel_pytree

import rnnode as rn


def flat(tree) -> np.ndarray:
    """All leaves of a pytree as one flat NumPy vector."""
    leaves = jax.tree.leaves(tree)
    return np.concatenate([np.ravel(np.asarray(x)) for x in leaves])


def rel(a, b) -> float:
    """The max-norm difference of two pytrees relative to the max-norm of `b`
    (entries of `b` may be exactly zero)."""
    fa, fb = flat(a), flat(b)
    return float(np.max(np.abs(fa - fb)) / max(np.max(np.abs(fb)), 1e-300))


def cosine(a, b) -> float:
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def flat_loss(model, xs, ys, gradient, **kwargs):
    """The loss as a function of the flat parameter vector, and that vector."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat_params, unravel = ravel_pytree(params)

    def f(flat_params):
        m = eqx.combine(unravel(flat_params), static)
        return rn.sequence_loss(m, xs, ys, gradient=gradient, **kwargs)

    return f, flat_params


def check_gradients(
    model,
    xs,
    ys,
    strategies,
    *,
    rtol=1e-9,
    atol=1e-11,
    num_fd=3,
    fd_from=1e-2,
    fd_all=False,
    **kwargs,
):
    """Assert that every strategy gives `Autodiff()`'s loss and gradient (to
    `rtol`, and `atol` times the largest entry), and that these match central
    differences on `num_fd` entries whose gradient is above `fd_from` times the
    largest (each strategy's too with `fd_all`). One compilation: the finite
    differences reuse the compiled function.

    **Returns:** the reference gradient (flat) and each strategy's (flat).
    """
    f_ref, x0 = flat_loss(model, xs, ys, rn.Autodiff(), **kwargs)
    fs = [flat_loss(model, xs, ys, s, **kwargs)[0] for s in strategies]

    @jax.jit
    def run(x):
        return jax.value_and_grad(f_ref)(x), [jax.value_and_grad(f)(x) for f in fs]

    (loss, g_ref), results = run(x0)
    for strategy, (value, g) in zip(strategies, results, strict=True):
        np.testing.assert_allclose(value, loss, rtol=1e-12, err_msg=repr(strategy))
        np.testing.assert_allclose(
            g,
            g_ref,
            rtol=rtol,
            atol=atol * np.abs(g_ref).max(),
            err_msg=repr(strategy),
        )
    f_jit = lambda x: run(x)[0][0]
    big = np.flatnonzero(np.abs(g_ref) > fd_from * np.abs(g_ref).max())
    rng = np.random.default_rng(0)
    grads = [g_ref] + ([g for _, g in results] if fd_all else [])
    for i in rng.choice(big, size=min(num_fd, big.size), replace=False):
        e = jnp.zeros_like(x0).at[i].set(1e-5)
        fd = (f_jit(x0 + e) - f_jit(x0 - e)) / 2e-5
        for g in grads:
            np.testing.assert_allclose(g[i], fd, rtol=1e-6, atol=1e-9)
    return g_ref, [g for _, g in results]


def fd_rel_errors(f, params, grads, key, num=5, eps=1e-6):
    """Central differences of `f` (jitted, taking `params`) at a few randomly chosen
    entries of `params`, compared with each of `grads`: max error relative to the
    largest gradient entry among those chosen. (NumPy bookkeeping: no new
    compilations besides `f`.)"""
    leaves, treedef = jax.tree.flatten(params)
    leaves = [np.asarray(x) for x in leaves]
    sizes = np.cumsum([0] + [x.size for x in leaves])
    idx = np.random.default_rng(int(jr.randint(key, (), 0, 2**30))).choice(
        sizes[-1], min(num, sizes[-1]), replace=False
    )

    def shifted(i, delta):
        k = int(np.searchsorted(sizes, i, side="right") - 1)
        new = [x.copy() for x in leaves]
        new[k].flat[i - sizes[k]] += delta
        return jax.tree.unflatten(treedef, new)

    fd = np.array([(f(shifted(i, eps)) - f(shifted(i, -eps))) / (2 * eps) for i in idx])
    errors = []
    for grad in grads:
        g = flat(grad)[idx]
        errors.append(float(np.max(np.abs(fd - g)) / np.max(np.abs(g))))
    return errors
