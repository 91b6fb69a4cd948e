"""Sparse recurrence (`density=`) and the rate form of the CTRNN (`form="rate"`):
the modules, their structured Jacobians, and every gradient method on them."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from _gradcheck import check_gradients
from _zoo import sparse_model
from jax.flatten_util import ravel_pytree

import rnnode as rn
from rnnode.gradients._rtrl_structured import (
    add_immediate,
    recurrent_mask,
    structured_jacobians,
)

M, K, T = 2, 2, 9


STRUCTURED = ["ctrnn_sparse", "ctrnn_rate_sparse", "elman_sparse"]


def _data(key, batch=(3,)):
    k1, k2, k3 = jr.split(key, 3)
    xs = jr.normal(k1, (T, *batch, M))
    ys = jr.normal(k2, (T, *batch, K))
    ws = jr.uniform(k3, (T,), minval=0.5, maxval=1.5) / T
    return xs, ys, ws


def _off_mask(model):
    mask = recurrent_mask(model.dynamics)
    return None if mask is None else ~mask


# --------------------------------------------------------------------------------------
# The modules


def test_dense_default_is_todays_module(key):
    """`density=1` and `form="current"` are exactly the modules from before the
    options existed: same parameters from the same key, same vector field."""
    n, m = 5, 3
    ctrnn = rn.CTRNN(n, m, gain=1.5, key=key)
    wkey, ukey = jr.split(key)
    assert ctrnn.mask is None and ctrnn.form == "current"
    np.testing.assert_array_equal(ctrnn.W, 1.5 * jr.normal(wkey, (n, n)) / np.sqrt(n))
    np.testing.assert_array_equal(
        ctrnn.U, jr.uniform(ukey, (n, m), minval=-1 / np.sqrt(m), maxval=1 / np.sqrt(m))
    )
    r, x = jr.normal(wkey, (n,)), jr.normal(ukey, (m,))
    np.testing.assert_array_equal(
        ctrnn(0.0, r, x), -r + ctrnn.W @ jnp.tanh(r) + ctrnn.U @ x + ctrnn.b
    )
    elman = rn.ElmanRNN(n, m, key=key)
    assert elman.mask is None
    b = 1 / np.sqrt(n)
    np.testing.assert_array_equal(
        elman.W, jr.uniform(jr.split(key, 3)[0], (n, n), minval=-b, maxval=b)
    )
    for dyn, kw in ((ctrnn, dict(gain=1.5)), (elman, {})):
        same = type(dyn)(n, m, density=1.0, key=key, **kw)
        assert jax.tree.structure(same) == jax.tree.structure(dyn)
        for a, c in zip(jax.tree.leaves(same), jax.tree.leaves(dyn), strict=True):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("cls", [rn.CTRNN, rn.ElmanRNN])
def test_sparse_mask(cls, key):
    n, p = 20, 0.15
    dyn = cls(n, 2, density=p, key=key)
    mask = recurrent_mask(dyn)
    assert mask.shape == (n, n) and mask.dtype == bool
    np.testing.assert_array_equal(mask.sum(axis=1), round(p * n))  # in-degree 3
    assert np.all(np.asarray(dyn.W)[~mask] == 0)
    assert np.all(np.asarray(dyn.W)[mask] != 0)
    # the same key gives the same mask (equal and with the same hash: a static
    # field jit can key on); another key a different one
    again = cls(n, 2, density=p, key=key)
    assert again.mask == dyn.mask and hash(again.mask) == hash(dyn.mask)
    assert jax.tree.structure(again) == jax.tree.structure(dyn)
    assert cls(n, 2, density=p, key=jr.PRNGKey(1)).mask != dyn.mask
    assert dyn.mask.density == pytest.approx(3 / 20)
    # the step sees only the masked weights
    h, x = jr.normal(key, (n,)), jnp.ones(2)
    off = jnp.where(mask, 0.0, 100.0)
    wild = eqx.tree_at(lambda d: d.W, dyn, dyn.W + off)
    args = (h, x) if cls is rn.ElmanRNN else (0.0, h, x)
    np.testing.assert_array_equal(wild(*args), dyn(*args))
    # a single connection per unit at the smallest density
    assert recurrent_mask(cls(n, 2, density=1e-3, key=key)).sum() == n


def test_sparse_gain_keeps_its_meaning(key):
    """The nonzero weights are scaled by `1/√p`: the spectral radius of a random
    sparse `W` stays near `gain` (circular law), as for the dense one."""
    n = 200
    for p in (1.0, 0.2):
        W = rn.CTRNN(n, 1, gain=0.8, density=p, key=key).W
        radius = np.abs(np.linalg.eigvals(np.asarray(W))).max()
        assert radius == pytest.approx(0.8, rel=0.1)


def test_rate_form_vector_field(key):
    dyn = rn.CTRNN(4, 3, form="rate", tau=2.0, density=0.5, key=key)
    r, x = jr.normal(jr.PRNGKey(1), (4,)), jr.normal(jr.PRNGKey(2), (3,))
    W = np.where(recurrent_mask(dyn), dyn.W, 0)
    expected = (-r + np.tanh(W @ r + dyn.U @ x + dyn.b)) / 2.0
    np.testing.assert_allclose(dyn(0.0, r, x), expected, rtol=1e-14)
    np.testing.assert_array_equal(dyn.observe(r), r)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(density=0.0), "density"),
        (dict(density=1.5), "density"),
        (dict(density=True), "density"),
        (dict(density="half"), "density"),
        (dict(form="voltage"), "form"),
    ],
)
def test_invalid_options(kwargs, match, key):
    with pytest.raises(ValueError, match=match):
        rn.CTRNN(4, 2, key=key, **kwargs)
    if "density" in kwargs:
        with pytest.raises(ValueError, match=match):
            rn.ElmanRNN(4, 2, key=key, **kwargs)


def test_sparse_module_needs_a_concrete_key(key):
    with pytest.raises(ValueError, match="outside `jax.jit`"):
        jax.jit(lambda k: rn.ElmanRNN(4, 2, density=0.5, key=k).W)(key)


# --------------------------------------------------------------------------------------
# Structured Jacobians against jax.jacfwd


@pytest.mark.parametrize("name", STRUCTURED)
def test_structured_jacobians_match_jacfwd(name, getkey):
    model = sparse_model(name, getkey())
    dyn = model.dynamics
    h, x = 0.5 * jr.normal(getkey(), (dyn.state_size,)), jr.normal(getkey(), (M,))
    J, imm = structured_jacobians(model, h, 0.0, x, x)

    def step(dyn, h):
        return eqx.tree_at(lambda m: m.dynamics, model, dyn).step(h, 0.0, x, x)

    J_ref, imm_ref = jax.jacfwd(step, argnums=(1, 0))(dyn, h)
    np.testing.assert_allclose(J, J_ref, rtol=1e-12, atol=1e-14)
    off = _off_mask(model)
    for field, rows in imm.items():
        ref = getattr(imm_ref, field)
        dense = add_immediate(rows, jnp.zeros_like(ref))
        if field == "W" and off is not None:
            # off the mask the dense outer product holds sensitivities of missing
            # connections; jacfwd through `W ⊙ mask` has zeros there
            assert np.all(np.asarray(ref)[:, off] == 0)
            dense = jnp.where(off, 0.0, dense)
        np.testing.assert_allclose(dense, ref, rtol=1e-12, atol=1e-14, err_msg=field)


# --------------------------------------------------------------------------------------
# Every gradient method


# Every method on the sparse rate CTRNN; on the sparse Elman cell the methods whose
# code knows the cell (the current form's structured Jacobian with a mask is
# checked against jacfwd above; the masking after RTRL is the same for all cells).
METHODS = {
    "ctrnn_rate_sparse": {
        "bptt": rn.BPTT(),
        "bptt_ckpt": rn.BPTT(checkpoints=3),
        "rtrl_generic": rn.RTRL(structured=False),
        "rtrl": rn.RTRL(structured=True),
        "rtrl_block": rn.RTRL(block=4),
    },
    "elman_sparse": {"bptt": rn.BPTT(), "rtrl": rn.RTRL(structured=True)},
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradients_match_autodiff_and_finite_differences(name, getkey):
    model = sparse_model(name, getkey())
    xs, ys, ws = _data(getkey())
    methods = METHODS[name]
    g_ref, grads = check_gradients(
        model, xs, ys, list(methods.values()), atol=1e-12, fd_from=1e-3, weights=ws
    )
    # every gradient is zero exactly on the absent connections
    _, unravel = ravel_pytree(eqx.filter(model, eqx.is_inexact_array))
    off = _off_mask(model)
    for g in [g_ref, *grads]:
        W = np.asarray(unravel(g).dynamics.W)
        assert np.all(W[off] == 0) and np.any(W[~off] != 0)


def test_implicit_gradient_of_a_rate_network_equilibrium(getkey):
    """The equilibrium of `0 = -r + φ(W r + U x + b)` and its implicit gradient,
    against unrolled autodiff through the fixed-point iteration."""
    k1, k2 = jr.split(getkey())
    dyn = rn.CTRNN(5, 3, form="rate", gain=0.5, density=0.6, key=k1)
    model = rn.Model(dyn, rn.Euler(0.1), rn.Linear(5, 2, key=k2))
    x, y = jr.normal(getkey(), (4, 3)), jr.normal(getkey(), (4, 2))
    solver = rn.FixedPointIteration(max_steps=200)

    def loss(m, gradient):
        return rn.equilibrium_loss(m, x, y, gradient=gradient, solver=solver)

    r = rn.equilibrium(model, x, solver=solver)
    W = np.where(recurrent_mask(dyn), dyn.W, 0)
    np.testing.assert_allclose(r, jnp.tanh(r @ W.T + x @ dyn.U.T + dyn.b), atol=1e-10)
    g_imp = eqx.filter_jit(eqx.filter_grad(loss))(model, rn.Implicit())
    g_unr = eqx.filter_jit(eqx.filter_grad(loss))(model, rn.Unrolled())
    for a, b in zip(jax.tree.leaves(g_imp), jax.tree.leaves(g_unr), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-11)
    assert np.all(np.asarray(g_imp.dynamics.W)[~recurrent_mask(dyn)] == 0)


# --------------------------------------------------------------------------------------
# Training keeps the network sparse


@pytest.mark.parametrize(
    "optimiser, gradient",
    [
        (optax.adam(0.05), rn.BPTT()),
        (optax.adamw(0.05, weight_decay=0.1), rn.RTRL()),
    ],
)
def test_training_keeps_the_mask(optimiser, gradient, getkey):
    model = sparse_model("ctrnn_rate_sparse", getkey())
    xs, ys, ws = _data(getkey())
    off = _off_mask(model)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @jax.jit
    def train(params):
        def step(carry, _):
            params, opt_state = carry
            loss, g = jax.value_and_grad(
                lambda p: rn.sequence_loss(
                    eqx.combine(p, static), xs, ys, weights=ws, gradient=gradient
                )
            )(params)
            updates, opt_state = optimiser.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        carry = (params, optimiser.init(params))
        (params, _), losses = jax.lax.scan(step, carry, None, length=5)
        return params, losses

    with jax.numpy_dtype_promotion("standard"):  # optax mixes in int32 counts
        new, losses = train(params)
    W0, W = np.asarray(params.dynamics.W), np.asarray(new.dynamics.W)
    assert np.all(W[off] == 0)
    assert np.all(W[~off] != W0[~off])  # the connections did learn
    assert losses[-1] < losses[0]


def test_online_methods_give_zero_gradients_off_the_mask(getkey):
    """The approximations of RTRL, as `gradient=`: every one leaves the missing
    connections alone (and learns the others)."""
    model = sparse_model("ctrnn_rate_sparse", getkey())
    xs, ys, ws = _data(getkey())
    off = _off_mask(model)
    methods = [rn.SnAp(order=1), rn.SnAp(order=2), rn.UORO(), rn.KFRTRL()]
    methods += [rn.RFLO(), rn.EProp(feedback="random")]

    @eqx.filter_jit
    def grads(model):
        return [
            eqx.filter_grad(
                lambda m: rn.sequence_loss(m, xs, ys, weights=ws, gradient=g)
            )(model).dynamics.W
            for g in methods
        ]

    for method, W in zip(methods, grads(model), strict=True):
        W = np.asarray(W)
        assert np.all(W[off] == 0), method
        assert np.all(np.isfinite(W)) and np.any(W[~off] != 0), method
