"""RTRL: forward-sensitivity gradients against autodiff and finite differences, its
online interface, the sensitivity ODE under diffrax, and the seed's linear example."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from _gradcheck import check_gradients
from _zoo import K, M, zoo_model

import rnnode as rn

T = 12  # time steps (M inputs, K outputs: the zoo's)


STRUCTURED = ["ctrnn_euler", "elman", "lstm", "gru"]
GENERIC_ONLY = ["ctrnn_rk4", "linear_euler", "oscillator_heun"]


def _data(model, key, batch=()):
    kx, ky = jr.split(key)
    xs = jr.normal(kx, (T, *batch, model.input_size))
    ys = jr.normal(ky, (T, *batch, K))
    weights = jnp.linspace(0.5, 1.5, T) / T
    return xs, ys, weights


@pytest.mark.parametrize("name", STRUCTURED + GENERIC_ONLY)
def test_gradients_match_autodiff_and_finite_differences(name, getkey):
    model = zoo_model(name, getkey())
    xs, ys, weights = _data(model, getkey())
    strategies = [rn.RTRL(structured=False)]
    if name in STRUCTURED:
        # block=5 over T=12 steps: two whole blocks and a shorter last one
        strategies += [rn.RTRL(structured=True), rn.RTRL(block=5)]
    # central differences on entries above 1e-3 of the largest, for every method
    check_gradients(
        model,
        xs,
        ys,
        strategies,
        atol=1e-12,
        fd_from=1e-3,
        fd_all=True,
        weights=weights,
    )


def test_jit_vmap_grad_and_grad_of_batched_loss(getkey):
    model = zoo_model("ctrnn_euler", getkey())
    B = 3
    xs, ys, _ = _data(model, getkey(), batch=(B,))
    weights = jr.uniform(getkey(), (T, B))
    h0 = 0.2 * jr.normal(getkey(), (B, model.state_size))

    def one(gradient):
        def loss(m, x, y, w, h):
            return rn.sequence_loss(m, x, y, weights=w, h0=h, gradient=gradient)

        return loss

    def batched(gradient):
        def loss(m, h):
            return rn.sequence_loss(m, xs, ys, weights=weights, h0=h, gradient=gradient)

        return loss

    @jax.jit
    def run(model, h0):
        out = []
        for g in (rn.Autodiff(), rn.RTRL(), rn.RTRL(block=4)):
            per_seq = jax.vmap(eqx.filter_grad(one(g)), in_axes=(None, 1, 1, 1, 0))(
                model, xs, ys, weights, h0
            )
            both = jax.grad(batched(g), argnums=(0, 1))(model, h0)
            out.append((per_seq, both))
        return out

    ref, *others = run(model, h0)
    for got in others:
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize(
    "name, structured",
    [("gru", True), ("ctrnn_rk4", False), ("ctrnn_rate_sparse", True)],
)
def test_online_gradients_sum_to_the_sequence_gradient(name, structured, getkey):
    model = zoo_model(name, getkey())
    xs, ys, weights = _data(model, getkey())
    rtrl = rn.RTRL(structured=structured)
    x_next = jnp.concatenate([xs[1:], xs[-1:]])

    @eqx.filter_jit
    def online(model):
        def body(state, inp):
            x, xn, y, a = inp
            state, loss, grads = rtrl.step(model, state, x, y, weight=a, x_next=xn)
            return state, (loss, grads)

        state, (losses, grads) = jax.lax.scan(
            body, rtrl.init(model), (xs, x_next, ys, weights)
        )
        return state, jnp.sum(losses), jax.tree.map(lambda g: jnp.sum(g, 0), grads)

    state, loss, grads = online(model)
    ref_loss, ref = eqx.filter_value_and_grad(
        lambda m: rn.sequence_loss(m, xs, ys, weights=weights)
    )(model)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    assert jax.tree.structure(grads) == jax.tree.structure(
        eqx.filter(model, eqx.is_inexact_array)
    )
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(state.h, model.rollout(xs)[0][-1], rtol=1e-12)
    np.testing.assert_allclose(state.t, T * model.dt)


def test_online_learning_with_optax_updates_every_step(getkey):
    """Real-time recurrent learning: an optax update after every step, jitted."""
    model = zoo_model("elman", getkey())
    rtrl = rn.RTRL()
    opt = optax.sgd(0.05)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    ts = jnp.arange(300.0)
    xs = jnp.stack([jnp.sin(0.3 * ts), jnp.cos(0.3 * ts)], axis=1)
    ys = jnp.stack([jnp.sin(0.3 * (ts + 1)), jnp.cos(0.3 * (ts + 1))], axis=1)

    @jax.jit
    def run(params, opt_state, state):
        def body(carry, xy):
            params, opt_state, state = carry
            state, loss, grads = rtrl.step(eqx.combine(params, static), state, *xy)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, state), loss

        return jax.lax.scan(body, (params, opt_state, state), (xs, ys))

    _, losses = run(params, opt.init(params), rtrl.init(model))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-50:]) < 0.2 * np.mean(losses[:50])


def test_diffrax_sensitivity_ode_matches_autodiff(getkey):
    """The sensitivity ODE integrated alongside the state (adaptive Tsit5 at 1e-10)
    against forward-mode autodiff through the same solver."""
    k1, k2 = jr.split(getkey())

    def model_with(adjoint):
        integrator = rn.Diffrax(
            0.5,
            solver=diffrax.Tsit5(),
            stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
            adjoint=adjoint,
            interpolation="linear",
        )
        dyn = rn.CTRNN(3, M, learn_tau=True, key=k1)
        return rn.Model(dyn, integrator, rn.Linear(3, K, key=k2))

    model = model_with(diffrax.ForwardMode())
    xs, ys, weights = _data(model, getkey())
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(params, gradient):
        m = eqx.combine(params, static)
        return rn.sequence_loss(
            m, xs[:8], ys[:8], weights=weights[:8], gradient=gradient
        )

    @jax.jit
    def run(params):
        ref = jax.jacfwd(loss)(params, rn.Autodiff())
        return ref, jax.grad(loss)(params, rn.RTRL())

    g_ref, g = run(params)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-10)


def test_linear_example_reproduces_the_seed_pseudocode():
    """`dr/dt = -r + w + b + x` with Euler: `Δw = -Σ_t (r_t - y_t) p_t`,
    `p_{t+1} = p_t + dt (-p_t + 1)`, equals `-½ ∂/∂w Σ_t (r_t - y_t)²`.

    All constants are dyadic rationals, so every number below is exact in float64."""
    dt, w, b = 0.5, 0.25, -0.5
    xs = np.array([0.0, 0.5, 1.0, -0.5, 0.25, 0.0, 1.0, -1.0])
    ys = np.array([0.5, 0.0, 0.25, 1.0, -0.5, 0.75, 0.0, 0.5])

    r, p, dw = 0.0, 0.0, 0.0  # the pseudo-code, by hand
    for x, y in zip(xs, ys, strict=True):
        r, p = r + dt * (-r + w + b + x), p + dt * (-p + 1.0)
        dw -= (r - y) * p

    model = rn.Model(rn.LinearExample(w=w, b=b), rn.Euler(dt))
    loss = lambda m: rn.sequence_loss(
        m, xs[:, None], ys[:, None], weights=np.ones(len(xs)), gradient=rn.RTRL()
    )
    grads = eqx.filter_grad(loss)(model)
    assert -0.5 * float(grads.dynamics.w) == dw
    assert -0.5 * float(grads.dynamics.b) == dw  # ∂F/∂b = ∂F/∂w = 1

    rtrl = rn.RTRL()
    state = rtrl.init(model)
    for x, y in zip(xs, ys, strict=True):
        state, _, g = rtrl.step(model, state, np.array([x]), np.array([y]))
    assert float(state.trace.dynamics.w[0]) == p  # the sensitivity p_t itself


def _rtrl_temp_bytes(model, T, block=1):
    """Compiled working memory of the RTRL gradient of a length-`T` sequence."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(params, xs, ys):
        m = eqx.combine(params, static)
        return rn.sequence_loss(m, xs, ys, gradient=rn.RTRL(block=block))

    args = (params, jnp.zeros((T, M)), jnp.zeros((T, K)))
    compiled = jax.jit(jax.grad(loss)).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_does_not_grow_with_sequence_length(getkey):
    model = zoo_model("elman", getkey())
    assert _rtrl_temp_bytes(model, 10_000) <= 1.1 * _rtrl_temp_bytes(model, 10)
    # a last partial block (13 = 8 + 5) is filled up: no second compiled block
    assert _rtrl_temp_bytes(model, 10_000, block=8) <= 1.1 * _rtrl_temp_bytes(
        model, 13, block=8
    )


@pytest.mark.parametrize(
    "integrator",
    [
        rn.Heun(0.2, interpolation="linear"),
        rn.RK4(0.2),
        rn.Diffrax(0.2, interpolation="linear"),
    ],
    ids=["heun_linear", "rk4", "diffrax_linear"],
)
def test_memory_does_not_grow_with_sequence_length_any_integrator(integrator, getkey):
    """Each step's `(t, x, x_next)` is built inside the loop: no length-`T`
    arrays of times or next inputs (which linear interpolation and `Diffrax`
    read), whatever the integrator."""
    k1, k2 = jr.split(getkey())
    model = rn.Model(rn.CTRNN(4, M, key=k1), integrator, rn.Linear(4, K, key=k2))
    assert _rtrl_temp_bytes(model, 10_000) == _rtrl_temp_bytes(model, 10)


def test_unrolled_scan(getkey, monkeypatch):
    """Large sensitivities are scanned two steps at a time; an odd length too."""
    import rnnode.gradients._rtrl_sequence as rtrl_module

    monkeypatch.setattr(rtrl_module, "_UNROLL_MIN_SIZE", 0)
    model = zoo_model("elman", getkey())
    xs, ys, weights = _data(model, getkey())

    @eqx.filter_jit
    def run(model):
        return [
            eqx.filter_grad(
                lambda m: rn.sequence_loss(
                    m, xs[:7], ys[:7], weights=weights[:7], gradient=g
                )
            )(model)
            for g in (rn.Autodiff(), rn.RTRL())
        ]

    ref, got = run(model)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-13)


def test_errors(getkey):
    with pytest.raises(ValueError, match="structured"):
        rn.RTRL(structured="yes")
    osc = zoo_model("oscillator_heun", getkey())
    xs, ys, _ = _data(osc, getkey())
    with pytest.raises(ValueError, match="no structured Jacobian"):
        eqx.filter_grad(
            lambda m: rn.sequence_loss(m, xs, ys, gradient=rn.RTRL(structured=True))
        )(osc)
    dfx = rn.Model(rn.CTRNN(2, 1, key=getkey()), rn.Diffrax(0.5))
    with pytest.raises(ValueError, match="sensitivity ODE"):
        eqx.filter_grad(
            lambda m: rn.sequence_loss(
                m, xs, ys[..., :2], gradient=rn.RTRL(structured=True)
            )
        )(dfx)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            rn.RTRL(block=bad)
    with pytest.raises(ValueError, match="needs the structured path"):
        rn.RTRL(block=4, structured=False)
    with pytest.raises(ValueError, match="block=1"):  # no structure for Heun
        eqx.filter_grad(
            lambda m: rn.sequence_loss(m, xs, ys, gradient=rn.RTRL(block=4))
        )(osc)
    with pytest.raises(ValueError, match="inputs, targets or weights"):
        jax.grad(lambda x: rn.sequence_loss(osc, x, ys, gradient=rn.RTRL()))(xs)

    rtrl = rn.RTRL()
    elman = zoo_model("elman", getkey())
    with pytest.raises(ValueError, match="rnnode.Model"):
        rtrl.init(elman.dynamics)
    with pytest.raises(ValueError, match="h0"):
        rtrl.init(elman, h0=jnp.zeros(3))
    state = rtrl.init(elman)
    with pytest.raises(ValueError, match="x_t"):
        rtrl.step(elman, state, jnp.zeros(M + 1), jnp.zeros(K))
    with pytest.raises(ValueError, match="different model"):
        rtrl.step(osc, state, jnp.zeros(1), jnp.zeros(K))
