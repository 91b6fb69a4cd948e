"""The approximate online methods as strategies: the online `step` path and the
whole-sequence `loss` path agree, float32 / float64, batched and unbatched, under
`jit` and `vmap`, and bad input gives a clear error."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import rnnode as rn

M, K, T = 2, 2, 6


def make(cell: str, key, dtype=jnp.float64) -> rn.Model:
    k1, k2 = jr.split(key)
    if cell == "elman":
        model = rn.Model(rn.ElmanRNN(4, M, key=k1), None, rn.Linear(4, K, key=k2))
    elif cell == "ctrnn":  # learnt time constants: a parameter outside the layer
        dyn = rn.CTRNN(4, M, tau=[1.0, 2.0, 0.5, 1.5], learn_tau=True, key=k1)
        model = rn.Model(dyn, rn.Euler(0.3), rn.Linear(4, K, key=k2))
    elif cell == "lstm":
        model = rn.Model(rn.LSTM(3, M, key=k1), None, rn.Linear(3, K, key=k2))
    elif cell == "gru":
        model = rn.Model(rn.GRU(3, M, key=k1), None, rn.Linear(3, K, key=k2))
    else:
        raise AssertionError(cell)
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_array(a) else a, model)


METHODS = {
    "snap1": rn.SnAp(order=1),
    "snap2": rn.SnAp(order=2),
    "uoro": rn.UORO(seed=3),
    "kf": rn.KFRTRL(seed=4),
    "rflo": rn.RFLO(),
    "rflo_random": rn.RFLO(feedback="random", seed=2),
    "eprop": rn.EProp(),
    "eprop_random": rn.EProp(feedback="random"),
}
CASES = [  # every method once, every cell once (each case compiles three times)
    ("elman", "snap2"),
    ("elman", "uoro"),
    ("elman", "rflo_random"),
    ("ctrnn", "kf"),
    ("lstm", "eprop"),
    ("gru", "snap1"),
]


def flat(g):
    return jnp.concatenate([a.ravel() for a in jax.tree.leaves(g)])


def online_sum(method, model, xs, ys, key):
    """Σ_t of `step`'s losses and gradients over one sequence (one `jit`)."""

    @eqx.filter_jit
    def run(model, xs, ys):
        state = method.init(model, key=key)
        xs_next = jnp.concatenate([xs[1:], xs[-1:]])

        def body(state, data):
            x, xn, y = data
            state, value, g = method.step(model, state, x, y, weight=1.0 / T, x_next=xn)
            return state, (value, g)

        _, (values, gs) = jax.lax.scan(body, state, (xs, xs_next, ys))
        return jnp.sum(values), jax.tree.map(lambda g: jnp.sum(g, axis=0), gs)

    return run(model, xs, ys)


@pytest.mark.parametrize("cell,name", CASES)
def test_step_path_equals_sequence_path(cell, name, getkey):
    method = METHODS[name]
    model = make(cell, getkey())
    xs, ys = jr.normal(getkey(), (T, M)), jr.normal(getkey(), (T, K))
    seed_key = jr.PRNGKey(getattr(method, "seed", 0))
    value, grads = eqx.filter_value_and_grad(
        lambda m: rn.sequence_loss(m, xs, ys, gradient=method)
    )(model)
    v_online, g_online = online_sum(method, model, xs, ys, seed_key)
    ref = eqx.filter_grad(lambda m: rn.sequence_loss(m, xs, ys))(model)
    assert jnp.allclose(v_online, value, rtol=1e-12)
    np.testing.assert_allclose(flat(g_online), flat(grads), rtol=1e-10, atol=1e-13)
    # the readout's gradient is exact for every method
    np.testing.assert_allclose(
        flat(grads.readout), flat(ref.readout), rtol=1e-10, atol=1e-13
    )


@pytest.mark.parametrize("name", ["uoro", "eprop_random"])
def test_float32_batched_jit_vmap(name, getkey):
    method = METHODS[name]
    model = make("elman", getkey(), jnp.float32)
    model64 = jax.tree.map(
        lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, model
    )
    B = 3
    xs = jr.normal(getkey(), (T, B, M), jnp.float32)
    ys = jr.normal(getkey(), (T, B, K), jnp.float32)

    def grad(model, xs, ys):
        return eqx.filter_grad(lambda m: rn.sequence_loss(m, xs, ys, gradient=method))(
            model
        )

    g = eqx.filter_jit(grad)(model, xs, ys)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g))
    # float32 agrees with float64 to float32 precision
    g64 = grad(model64, xs.astype(jnp.float64), ys.astype(jnp.float64))
    np.testing.assert_allclose(flat(g), flat(g64), rtol=1e-4, atol=1e-5)
    # the online step runs in float32, under vmap over a batch of streams
    states = jax.vmap(lambda k: method.init(model, key=k))(jr.split(getkey(), B))
    step = eqx.filter_jit(
        eqx.filter_vmap(
            lambda s, x, y: method.step(model, s, x, y), in_axes=(eqx.if_array(0), 0, 0)
        )
    )
    states, values, gs = step(states, xs[0], ys[0])
    assert values.shape == (B,) and values.dtype == jnp.float32
    assert states.h.dtype == jnp.float32
    assert gs.dynamics.W.shape == (B, 4, 4) and gs.dynamics.W.dtype == jnp.float32


def test_stochastic_key_lives_in_the_state(getkey):
    model = make("elman", getkey())
    xs, ys = jr.normal(getkey(), (T, M)), jr.normal(getkey(), (T, K))
    uoro = rn.UORO()
    s0 = uoro.init(model, key=jr.PRNGKey(7))
    s1, _, g1 = uoro.step(model, s0, xs[0], ys[0])
    s2, _, g2 = uoro.step(model, s1, xs[1], ys[1])
    assert not jnp.array_equal(s1.key, s0.key)
    # resuming from a saved state repeats the run bit for bit
    s2b, _, g2b = uoro.step(model, jax.tree.map(jnp.copy, s1), xs[1], ys[1])
    assert jnp.array_equal(flat(g2), flat(g2b)) and jnp.array_equal(s2.key, s2b.key)
    # another key, another estimate
    t1, _, h1 = uoro.step(model, uoro.init(model, key=jr.PRNGKey(8)), xs[0], ys[0])
    t2, _, h2 = uoro.step(model, t1, xs[1], ys[1])
    assert not jnp.allclose(flat(g2), flat(h2))
    # every method carries a key (for the dynamics' noise, and resets)
    assert rn.SnAp().init(model, key=jr.PRNGKey(0)).key.shape == (2,)


def test_rtrl_shares_the_online_interface(getkey):
    model = make("elman", getkey())
    for method in (rn.RTRL(), *METHODS.values()):
        assert isinstance(method, rn.AbstractOnlineGradient)
    state = rn.RTRL().init(model, key=jr.PRNGKey(0))
    assert isinstance(state, rn.OnlineState)


def test_errors(getkey):
    model = make("lstm", getkey())
    rk4 = rn.Model(
        rn.CTRNN(3, M, key=getkey()), rn.RK4(0.1), rn.Linear(3, K, key=getkey())
    )
    xs, ys = jnp.zeros((T, M)), jnp.zeros((T, K))
    with pytest.raises(ValueError, match=r"`SnAp\(order=0\)`: `order` must be 1 or 2"):
        rn.SnAp(order=0)
    with pytest.raises(ValueError, match=r"`RFLO\(feedback='mirror'\)`: choose"):
        rn.RFLO(feedback="mirror")
    with pytest.raises(ValueError, match=r"`UORO\(seed=1.5\)`: `seed` must be"):
        rn.UORO(seed=1.5)
    with pytest.raises(ValueError, match=r"`KFRTRL` is defined for .* got `LSTM`"):
        rn.sequence_loss(model, xs, ys, gradient=rn.KFRTRL())
    with pytest.raises(ValueError, match=r"`KFRTRL` is defined for .* got `LSTM`"):
        jax.grad(lambda m: rn.sequence_loss(m, xs, ys, gradient=rn.KFRTRL()))(model)
    with pytest.raises(ValueError, match=r"`RFLO` is defined for .* Use `EProp\(\)`"):
        rn.RFLO().init(model)
    with pytest.raises(ValueError, match=r"got `CTRNN` with `RK4`"):
        rn.SnAp().init(rk4)
    learnt = rn.Model(
        rn.GRU(3, M, key=getkey()),
        None,
        rn.Linear(3, K, key=getkey()),
        learn_initial_state=True,
    )
    with pytest.raises(ValueError, match="does not differentiate the initial state"):
        rn.UORO().init(learnt)
    with pytest.raises(ValueError, match="does not differentiate the initial state"):
        eqx.filter_grad(lambda m: rn.sequence_loss(m, xs, ys, gradient=rn.EProp()))(
            learnt
        )
    state = rn.SnAp().init(make("elman", getkey()))
    with pytest.raises(ValueError, match="needs the `OnlineState`"):
        rn.SnAp().step(model, rn.RTRL().init(model).h, xs[0], ys[0])
    with pytest.raises(ValueError, match=r"`x_t` must have shape \(2,\)"):
        rn.SnAp().step(make("elman", getkey()), state, jnp.zeros(3), ys[0])


def test_uoro_covers_any_step(getkey):
    """UORO needs only derivatives of the step: a CTRNN integrated by diffrax
    works, `J h̃` by VJPs there (a diffrax solve has no JVP), and with diffrax's
    Euler it gives the estimate of the same network stepped by `rn.Euler` (same
    seed: same signs), whose `J h̃` is a JVP."""
    dyn, readout = rn.CTRNN(3, M, key=getkey()), rn.Linear(3, K, key=getkey())
    xs, ys = jr.normal(getkey(), (4, M)), jr.normal(getkey(), (4, K))

    def grad(integrator):
        model = rn.Model(dyn, integrator, readout)
        return flat(
            eqx.filter_grad(lambda m: rn.sequence_loss(m, xs, ys, gradient=rn.UORO()))(
                model
            )
        )

    g = grad(rn.Diffrax(0.2, solver=diffrax.Euler()))
    np.testing.assert_allclose(g, grad(rn.Euler(0.2)), rtol=1e-10, atol=1e-13)
