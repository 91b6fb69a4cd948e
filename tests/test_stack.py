"""Deep stacks: gradients of every method on mixed stacks, the layer-by-layer
parallel path, the layer-local online method (exact for one layer, its alignment
for two), and errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _gradcheck import check_gradients, cosine, flat, flat_loss
from _zoo import stack_model

import rnnode as rn

T, M, D, K = 10, 3, 4, 2  # time, inputs, width, outputs


def _data(key, batch=(2,)):
    kx, ky = jr.split(key)
    return jr.normal(kx, (T, *batch, M)), jr.normal(ky, (T, *batch, K))


@pytest.mark.parametrize(
    "kinds, mixing, norm",
    [
        (("lru", "ctrnn"), "glu", "pre"),
        (("lstm", "elman"), "mlp", "post"),
    ],
)
def test_gradients_of_every_method(kinds, mixing, norm, getkey):
    model = stack_model(getkey(), kinds, mixing=mixing, norm=norm)
    stack = model.dynamics
    sizes = [ly.core.state_size for ly in stack.layers]
    assert stack.state_size == sum(sizes) + D and stack.observe_size == D
    xs, ys = _data(getkey())
    check_gradients(model, xs, ys, [rn.BPTT(), rn.RTRL()])


def test_parallel_path_matches_stepping(getkey):
    key = getkey()
    model = stack_model(key, ("gru", "lru"))
    par = stack_model(key, ("gru", "lru"), parallel=True)
    assert par.parallel and not model.parallel
    xs, ys = _data(getkey())
    rollout = eqx.filter_jit(lambda m, xs: m.rollout(xs))
    np.testing.assert_allclose(rollout(par, xs)[0], rollout(model, xs)[0], atol=1e-12)
    f, flat = flat_loss(model, xs, ys, rn.Autodiff())
    f_par, _ = flat_loss(par, xs, ys, rn.Autodiff())
    g, g_par = jax.jit(lambda p: (jax.grad(f)(p), jax.grad(f_par)(p)))(flat)
    np.testing.assert_allclose(g_par, g, rtol=1e-9, atol=1e-14)


def _grads(model, xs, ys, gradient):
    return eqx.filter_jit(
        eqx.filter_grad(lambda m: rn.sequence_loss(m, xs, ys, gradient=gradient))
    )(model)


def test_layer_local_one_layer_exact_and_two_layers_aligned(getkey):
    xs, ys = _data(getkey())
    one = stack_model(getkey(), ("lru",))
    g, g_ll = (
        _grads(one, xs, ys, rn.Autodiff()),
        _grads(one, xs, ys, rn.LayerLocalRTRL()),
    )
    # the recurrence, its C and D, the mixing and the readout: exact
    for part in (
        lambda m: m.dynamics.layers[0].core,
        lambda m: m.dynamics.layers[0].mix_a,
        lambda m: m.dynamics.layers[0].mix_b,
        lambda m: m.readout,
    ):
        np.testing.assert_allclose(
            flat(part(g_ll)), flat(part(g)), rtol=1e-9, atol=1e-15
        )
    # below the recurrence (encoder, pre-norm): the one-step signal only
    assert not np.allclose(flat(g_ll.dynamics.encoder), flat(g.dynamics.encoder))
    two = stack_model(getkey(), ("lru", "lru"))
    g, g_ll = (
        _grads(two, xs, ys, rn.Autodiff()),
        _grads(two, xs, ys, rn.LayerLocalRTRL()),
    )
    # the top layer and the readout are exact; the whole gradient is well aligned
    top = lambda m: m.dynamics.layers[1].core
    np.testing.assert_allclose(flat(top(g_ll)), flat(top(g)), rtol=1e-9, atol=1e-15)
    c = cosine(flat(g_ll), flat(g))
    print(f"cosine(LayerLocalRTRL, exact), 2-layer LRU stack: {c:.4f}")
    assert 0.9 < c < 1 - 1e-6  # measured 0.99; approximate, not exact


def test_layer_local_online_sums_to_its_sequence_gradient(getkey):
    model = stack_model(getkey(), ("lru", "lru"))
    xs, ys = _data(getkey(), batch=())
    method = rn.LayerLocalRTRL()
    step = eqx.filter_jit(lambda s, x, y: method.step(model, s, x, y, weight=1.0 / T))
    state, g_sum = method.init(model), None
    for t in range(T):
        state, _, g = step(state, xs[t], ys[t])
        g_sum = g if g_sum is None else jax.tree.map(jnp.add, g_sum, g)
    g_seq = _grads(model, xs, ys, method)
    np.testing.assert_allclose(flat(g_sum), flat(g_seq), rtol=1e-10, atol=1e-15)


def test_errors(key):
    with pytest.raises(ValueError, match="at least one layer"):
        rn.Stack([], input_size=2, key=key)
    with pytest.raises(ValueError, match="layer 1 has `input_size=3`"):
        rn.Stack([rn.LRU(2, 4, key=key), rn.GRU(2, 3, key=key)], input_size=2, key=key)
    with pytest.raises(ValueError, match="pass `integrator="):
        rn.Stack([rn.CTRNN(2, 4, key=key)], input_size=2, key=key)
    with pytest.raises(ValueError, match="interpolation='constant'"):
        rn.Stack(
            [rn.CTRNN(2, 4, key=key)],
            input_size=2,
            integrator=rn.RK4(0.1, interpolation="linear"),
            key=key,
        )
    with pytest.raises(ValueError, match="choose `glu` or `mlp`"):
        rn.Stack([rn.LRU(2, 4, key=key)], input_size=2, mixing="relu", key=key)
    model = stack_model(key, ("lru", "gru"))
    with pytest.raises(ValueError, match=r"a `Stack` of \[LRU, GRU\]"):
        rn.LayerLocalRTRL().init(model)
