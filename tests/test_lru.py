"""The LRU: ring initialisation, the parallel scan against the sequential one,
gradients of every method (element-wise RTRL included), online exactness, errors."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _gradcheck import check_gradients, flat_loss
from _zoo import lru_model

import rnnode as rn

T, M, K = 15, 3, 2


def _data(key, batch=(4,)):
    kx, ky = jr.split(key)
    return jr.normal(kx, (T, *batch, M)), jr.normal(ky, (T, *batch, K))


def test_ring_initialisation(key):
    r_min, r_max, max_phase = 0.5, 0.9, math.pi / 10
    lru = rn.LRU(4000, 2, r_min=r_min, r_max=r_max, max_phase=max_phase, key=key)
    lam = lru.eigenvalues()
    modulus, phase = np.abs(lam), np.angle(lam)
    assert r_min <= modulus.min() < r_min + 0.01
    assert r_max - 0.01 < modulus.max() <= r_max
    assert 0 <= phase.min() < 0.01 * max_phase
    assert 0.99 * max_phase < phase.max() <= max_phase
    # |λ|² uniform on [r_min², r_max²]: its mean is the midpoint
    np.testing.assert_allclose(
        np.mean(modulus**2), (r_min**2 + r_max**2) / 2, atol=0.01
    )
    np.testing.assert_allclose(np.exp(lru.gamma_log), np.sqrt(1 - modulus**2))
    assert lru.state_size == 2 * 4000 + 2 and lru.observe_size == 2


def test_step_is_the_complex_recurrence(key):
    lru = rn.LRU(3, 2, key=key)
    h, x = np.arange(8.0) / 10, np.array([0.5, -1.0])
    p = {k: np.asarray(v) for k, v in vars(lru).items() if eqx.is_array(v)}
    hc = h[:3] + 1j * h[3:6]
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    new = lam * hc + np.exp(p["gamma_log"]) * ((p["B_re"] + 1j * p["B_im"]) @ x)
    out = np.asarray(lru(jnp.asarray(h), jnp.asarray(x)))
    np.testing.assert_allclose(out[:3] + 1j * out[3:6], new, rtol=1e-12)
    y = np.real((p["C_re"] + 1j * p["C_im"]) @ new) + p["D"] * x
    np.testing.assert_allclose(out[6:], y, rtol=1e-12)
    np.testing.assert_allclose(lru.observe(jnp.asarray(out)), y, rtol=1e-12)


def test_parallel_scan_matches_sequential(getkey):
    key = getkey()
    model, par = lru_model(key), lru_model(key, parallel=True)  # same parameters
    assert par.parallel and not model.parallel
    xs, ys = _data(getkey(), batch=(2,))
    h0 = jr.normal(getkey(), (2, model.state_size))
    rollout = eqx.filter_jit(lambda m, xs, h0=None: m.rollout(xs, h0=h0))
    hs, outs = rollout(model, xs, h0)
    hs_p, outs_p = rollout(par, xs, h0)
    np.testing.assert_allclose(hs_p, hs, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(outs_p, outs, rtol=1e-10, atol=1e-12)
    # BPTT through the parallel scan (jax.grad of Autodiff) against the sequential
    f, flat = flat_loss(model, xs, ys, rn.Autodiff())
    f_par, _ = flat_loss(par, xs, ys, rn.Autodiff())
    (v, g), (v_par, g_par) = jax.jit(
        lambda p: (jax.value_and_grad(f)(p), jax.value_and_grad(f_par)(p))
    )(flat)
    np.testing.assert_allclose(v_par, v, rtol=1e-12)
    np.testing.assert_allclose(g_par, g, rtol=1e-9, atol=1e-13)
    # a long sequence: the scan's rounding stays at float64 level
    xs = jr.normal(getkey(), (300, M))
    np.testing.assert_allclose(rollout(par, xs)[0], rollout(model, xs)[0], atol=1e-11)


@pytest.mark.parametrize("learn_initial_state", [False, True])
def test_gradients_of_every_method(learn_initial_state, getkey):
    model = lru_model(getkey(), learn_initial_state=learn_initial_state)
    xs, ys = _data(getkey(), batch=(2,))
    weights = jnp.linspace(0.5, 1.5, T) / T
    if learn_initial_state:  # RTRL falls back to its dense path for `∂h_t/∂h_0`
        strategies = [rn.RTRL()]
    else:
        strategies = [
            rn.BPTT(checkpoints=4),
            rn.RTRL(),  # element-wise
            rn.RTRL(structured=False),  # dense
            rn.LayerLocalRTRL(),  # exact for one layer
        ]
    check_gradients(model, xs, ys, strategies, weights=weights)


def test_online_rtrl_and_layer_local_are_exact(getkey):
    model = lru_model(getkey())
    xs, ys = _data(getkey(), batch=())
    g_ref = eqx.filter_grad(lambda m: rn.sequence_loss(m, xs, ys))(model)
    for method in (rn.RTRL(), rn.LayerLocalRTRL()):
        state, total, g_sum = method.init(model), 0.0, None

        @jax.jit
        def step(state, x, y, method=method):
            return method.step(model, state, x, y, weight=1.0 / T)

        for t in range(T):
            state, loss_t, g = step(state, xs[t], ys[t])
            total = total + loss_t
            g_sum = g if g_sum is None else jax.tree.map(jnp.add, g_sum, g)
        np.testing.assert_allclose(total, rn.sequence_loss(model, xs, ys), rtol=1e-12)
        for a, b in zip(jax.tree.leaves(g_sum), jax.tree.leaves(g_ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14)
    # the traces are O(n m): no (state, parameters) matrix
    sizes = [a.size for a in jax.tree.leaves(rn.RTRL().init(model).trace)]
    assert sum(sizes) == 4 + 4 + 4 * M


def test_rtrl_memory_does_not_grow_with_T(getkey):
    params, static = eqx.partition(lru_model(getkey()), eqx.is_inexact_array)

    def temp_bytes(T):
        def loss(params, xs, ys):
            m = eqx.combine(params, static)
            return rn.sequence_loss(m, xs, ys, gradient=rn.RTRL())

        args = (params, jnp.zeros((T, M)), jnp.zeros((T, K)))
        compiled = jax.jit(jax.grad(loss)).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(5000) <= 1.1 * temp_bytes(10)


def test_analysis_sees_the_diagonal_spectrum(getkey):
    model = lru_model(getkey())
    J = rn.analysis.step_jacobians(model, jr.normal(getkey(), (3, M)))
    eig = np.linalg.eigvals(np.asarray(J[0]))
    lam = np.asarray(model.dynamics.eigenvalues())
    expected = np.concatenate([lam, lam.conj(), np.zeros(M)])
    np.testing.assert_allclose(
        np.sort_complex(eig), np.sort_complex(expected), atol=1e-12
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"r_min": 0.9, "r_max": 0.9}, "r_min` must be smaller than `r_max"),
        ({"r_max": 1.0}, "r_max` must be < 1"),
        ({"r_min": -0.1}, "r_min` must be >= 0"),
        ({"max_phase": 0.0}, "max_phase` must be > 0"),
        ({"r_max": float("nan")}, "must be a finite number"),
    ],
)
def test_bad_arguments(kwargs, match, key):
    with pytest.raises(ValueError, match=match):
        rn.LRU(4, 2, key=key, **kwargs)


def test_layer_local_rejects_other_models(key):
    model = rn.Model(rn.GRU(3, 2, key=key), None, rn.Linear(3, 1, key=key))
    xs, ys = jnp.zeros((5, 2)), jnp.zeros((5, 1))
    with pytest.raises(ValueError, match="needs a `Model` of an `LRU`"):
        rn.sequence_loss(model, xs, ys, gradient=rn.LayerLocalRTRL())
    with pytest.raises(ValueError, match="does not train an initial state"):
        rn.LayerLocalRTRL().init(lru_model(key, learn_initial_state=True))
