"""BPTT: the explicit adjoint recursion against autodiff and finite differences,
under jit / vmap(grad) / grad(vmap), truncation, checkpointing, gradients with
respect to everything differentiable, the adjoint trajectory, and diffrax adjoints."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _gradcheck import fd_rel_errors, rel
from _zoo import K, M, zoo_model

import rnnode as rn

T, B = 13, 3  # time steps, batch (M inputs, K outputs: the zoo's)


CASES = [
    "ctrnn_euler",
    "ctrnn_rk4",
    "elman",
    "lstm",
    "gru",
    "linear_heun",
    "oscillator_rk4",
]


def _data(model, key, T=T, batch=(B,)):
    kx, ky, kw = jr.split(key, 3)
    xs = jr.normal(kx, (T, *batch, model.input_size))
    ys = jr.normal(ky, (T, *batch, K))
    ws = jr.uniform(kw, (T, *batch), minval=0.5, maxval=1.5) / T
    return xs, ys, ws


@pytest.mark.parametrize("name", CASES)
def test_matches_autodiff_and_fd(name, getkey):
    # T = 13 and 4 checkpoints: 4 segments of 4 steps after 3 masked padding steps.
    model = zoo_model(name, getkey())
    xs, ys, ws = _data(model, getkey())
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def batched(p, g):
        return rn.sequence_loss(eqx.combine(p, static), xs, ys, weights=ws, gradient=g)

    strategies = [rn.Autodiff(), rn.BPTT(), rn.BPTT(checkpoints=4)]
    run = jax.jit(
        lambda p: tuple(
            zip(*[jax.value_and_grad(batched)(p, g) for g in strategies], strict=True)
        )
    )
    values, grads = run(params)
    for v, g in zip(values[1:], grads[1:], strict=True):
        np.testing.assert_allclose(v, values[0], rtol=1e-12)
        assert rel(g, grads[0]) < 1e-10
    # (The finite differences reuse the compiled function: its first value.)
    errors = fd_rel_errors(lambda p: run(p)[0][0], params, grads[1:], getkey())
    assert max(errors) < 1e-6


def test_vmap_grad_and_grad_vmap(getkey):
    """The per-sequence custom VJP under `vmap(grad)` and `grad(vmap)`."""
    model = zoo_model("ctrnn_euler", getkey())
    xs, ys, ws = _data(model, getkey())
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def single(p, x, y, w, g):
        return rn.sequence_loss(eqx.combine(p, static), x, y, weights=w, gradient=g)

    def per_example(p, g):  # vmap(grad) of the unbatched loss
        return jax.vmap(jax.grad(single), in_axes=(None, 1, 1, 1, None))(
            p, xs, ys, ws, g
        )

    def grad_of_vmap(p, g):  # grad(vmap) of the unbatched loss
        per_seq = lambda p: jax.vmap(single, in_axes=(None, 1, 1, 1, None))(
            p, xs, ys, ws, g
        )
        return jax.grad(lambda p: jnp.mean(per_seq(p)))(p)

    @jax.jit
    def everything(p):
        return (
            per_example(p, rn.Autodiff()),
            per_example(p, rn.BPTT(checkpoints=4)),
            grad_of_vmap(p, rn.BPTT()),
        )

    vg_ref, vg, gv = everything(params)
    assert rel(vg, vg_ref) < 1e-10
    mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), vg_ref)
    assert rel(gv, mean) < 1e-10


def _truncated_reference(model, xs, ys, ws, k):
    """Autodiff of the recurrence with `stop_gradient` on the state entering every
    step `t + 1` with `t` a positive multiple of `k`; unbatched."""
    ts, x, x_next = model.step_inputs(xs)

    def body(h, inp):
        s, t, xt, xn, y, a = inp  # s = 1 … T
        h = jnp.where((s - 1) % k == 0, jax.lax.stop_gradient(h), h)
        h = model.step(h, t, xt, xn)
        return h, a * rn.mse(model.output(h), y)

    s = jnp.arange(1, xs.shape[0] + 1)
    # `h_0` itself is not cut: the condition `(s-1) % k == 0` at s = 1 would stop
    # it, so step 1 is taken outside the scan.
    h0 = model.init_state()
    h1 = model.step(h0, ts[0], x[0], x_next[0])
    l1 = ws[0] * rn.mse(model.output(h1), ys[0])
    _, ls = jax.lax.scan(body, h1, (s[1:], ts[1:], x[1:], x_next[1:], ys[1:], ws[1:]))
    return l1 + jnp.sum(ls)


@pytest.mark.parametrize("name", ["gru", "ctrnn_rate_sparse"])
def test_truncated_equals_stop_gradient(name, getkey):
    model = zoo_model(name, getkey())  # gru: a learnt initial state, the first chunk
    xs, ys, ws = _data(model, getkey(), batch=())
    params, static = eqx.partition(model, eqx.is_inexact_array)
    m = lambda p: eqx.combine(p, static)
    bptt = lambda p, g: rn.sequence_loss(m(p), xs, ys, weights=ws, gradient=g)

    @jax.jit
    def grads(p):
        refs = [
            jax.grad(lambda p: _truncated_reference(m(p), xs, ys, ws, k))(p)
            for k in (3, 5)
        ]
        got = [
            jax.grad(bptt)(p, g)
            for g in [rn.BPTT(truncate=3), rn.BPTT(truncate=5, checkpoints=4)]
        ]
        return refs, got

    (ref3, ref5), (got3, got5) = grads(params)
    assert rel(got3, ref3) < 1e-10
    assert rel(got5, ref5) < 1e-10
    assert rel(ref3, ref5) > 1e-3  # truncation matters here
    if model.learn_initial_state:
        assert np.max(np.abs(np.asarray(got3.initial_state))) > 0
    else:  # sparse: nothing reaches the missing connections
        mask = model.dynamics.mask.array
        assert np.all(np.asarray(got3.dynamics.W)[~mask] == 0)


def test_gradients_wrt_everything(getkey):
    """Initial states (passed), inputs (linearly interpolated: `x_next` is used too),
    float targets, time weights and an array the loss function closes over."""
    k1, k2 = jr.split(getkey())
    dyn = rn.CTRNN(4, M, gain=1.5, key=k1)
    model = rn.Model(dyn, rn.Heun(0.3, interpolation="linear"), rn.Linear(4, K, key=k2))
    xs, ys, ws = _data(model, getkey())
    h0 = 0.5 * jr.normal(getkey(), (B, model.state_size))
    scale = jnp.array([1.3, 0.7])

    def f(args, g):
        model, xs, ys, ws, h0, scale = args
        loss = lambda o, y: jnp.sum(scale * (o - y) ** 2)
        return rn.sequence_loss(model, xs, ys, loss=loss, weights=ws, h0=h0, gradient=g)

    @jax.jit
    def grads(args):
        return [
            eqx.filter_grad(f)(args, g) for g in [rn.Autodiff(), rn.BPTT(checkpoints=3)]
        ]

    ref, *got = grads((model, xs, ys, ws, h0, scale))
    for g in got:
        for a, b in zip(
            g, ref, strict=True
        ):  # each argument's gradient on its own scale
            assert rel(a, b) < 1e-10


def test_integer_targets_and_batch_weights(getkey):
    k1, k2 = jr.split(getkey())
    model = rn.Model(
        rn.ElmanRNN(4, M, key=k1),
        None,
        rn.Linear(4, 3, key=k2),
        initial_state=jnp.zeros(4),
        learn_initial_state=True,
    )
    xs = jr.normal(getkey(), (T, B, M))
    labels = jr.randint(getkey(), (T, B), 0, 3)
    ws = rn.mask_weights(jr.bernoulli(getkey(), 0.5, (T, B)).at[-1].set(True))

    @jax.jit
    def grads(model):
        def f(m, g):
            return rn.sequence_loss(
                m, xs, labels, loss=rn.cross_entropy, weights=ws, gradient=g
            )

        return [
            eqx.filter_grad(f)(model, g)
            for g in [rn.Autodiff(), rn.BPTT(checkpoints=5)]
        ]

    ref, got = grads(model)
    assert np.max(np.abs(np.asarray(ref.initial_state))) > 0
    assert rel(got, ref) < 1e-10
    assert rel(got.initial_state, ref.initial_state) < 1e-10


def test_adjoint_trajectory(getkey):
    """λ_t equals the gradient of the loss wrt an additive perturbation of h_t."""
    model = zoo_model("elman", getkey())
    xs, ys, ws = _data(model, getkey())
    h0 = 0.3 * jr.normal(getkey(), (B, model.state_size))

    def perturbed_loss(delta, x, y, w, h, truncate):
        ts, xt, xn = model.step_inputs(x)
        s = jnp.arange(1, x.shape[0] + 1)

        def body(h, inp):
            s, t, a, b, d, yt, wt = inp
            if truncate is not None:
                cut = (s > 1) & ((s - 1) % truncate == 0)
                h = jnp.where(cut, jax.lax.stop_gradient(h), h)
            h = model.step(h, t, a, b) + d
            return h, wt * rn.mse(model.output(h), yt)

        _, ls = jax.lax.scan(body, h, (s, ts, xt, xn, delta, y, w))
        return jnp.sum(ls)

    zero = jnp.zeros((T, model.state_size))

    @jax.jit
    def run():
        out = {}
        for k in [None, 4]:
            grad = jax.grad(perturbed_loss)
            out[f"ref{k}"] = jax.vmap(grad, (None, 1, 1, 1, 0, None), 1)(
                zero, xs, ys, ws, h0, k
            )
            out[f"lam{k}"] = rn.adjoint_trajectory(
                model, xs, ys, weights=ws, h0=h0, truncate=k
            )
        out["lam0"] = rn.adjoint_trajectory(
            model, xs[:, 0], ys[:, 0], weights=ws[:, 0], h0=h0[0]
        )
        out["uniform"] = rn.adjoint_trajectory(model, xs[:, 0], ys[:, 0], h0=h0[0])
        hs, _ = model.rollout(xs[:, 0], h0=h0[0])
        out["last"] = jax.grad(lambda h: rn.mse(model.output(h), ys[-1, 0]))(hs[-1]) / T
        return out

    out = run()
    for k in [None, 4]:
        assert out[f"lam{k}"].shape == (T, B, model.state_size)
        assert rel(out[f"lam{k}"], out[f"ref{k}"]) < 1e-10
    assert out["lam0"].shape == (T, model.state_size)
    np.testing.assert_allclose(
        out["lam0"], out["lamNone"][:, 0], rtol=1e-12, atol=1e-15
    )
    # With the default uniform weights, λ_T = (1/T) ∂l_T/∂h_T.
    np.testing.assert_allclose(out["uniform"][-1], out["last"], rtol=1e-12, atol=1e-15)


def test_diffrax_backsolve_adjoint(getkey):
    """With a `Diffrax` integrator each step's VJP goes through diffrax's own
    adjoint: here `BacksolveAdjoint`, the continuous adjoint solved backwards,
    which approximates the exact gradient of the discrete map to O(dt²) for Heun."""
    k1, k2 = jr.split(getkey())
    dyn, readout = rn.CTRNN(3, M, key=k1), rn.Linear(3, K, key=k2)
    solver = rn.Diffrax(0.2, solver=diffrax.Heun(), adjoint=diffrax.BacksolveAdjoint())
    model = rn.Model(dyn, solver, readout)
    discrete = rn.Model(dyn, rn.Heun(0.2), readout)  # the same forward map
    xs, ys, ws = _data(model, getkey(), T=5, batch=())

    @jax.jit
    def run(model, discrete):
        f = lambda m, g: rn.sequence_loss(m, xs, ys, weights=ws, gradient=g)
        return (
            jax.value_and_grad(f)(model, rn.BPTT()),
            jax.value_and_grad(f)(discrete, rn.Autodiff()),
        )

    (v, g), (v_exact, g_exact) = run(model, discrete)
    np.testing.assert_allclose(v, v_exact, rtol=1e-12)
    assert 1e-7 < rel(g, g_exact) < 5e-3


def test_checkpointing_stores_fewer_states():
    model = rn.Model(rn.CTRNN(8, 1, key=jr.PRNGKey(0)), rn.Euler(0.1))
    xs = jnp.zeros((2048, 1))
    ys = jnp.zeros((2048, 8))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def temp_bytes(g):
        f = jax.grad(
            lambda p: rn.sequence_loss(eqx.combine(p, static), xs, ys, gradient=g)
        )
        return jax.jit(f).lower(params).compile().memory_analysis().temp_size_in_bytes

    full, ckpt = temp_bytes(rn.BPTT()), temp_bytes(rn.BPTT(checkpoints=45))
    assert full >= 2048 * 8 * 8  # every state, float64
    assert ckpt < full / 5


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "3"])
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match="truncate"):
        rn.BPTT(truncate=bad)
    with pytest.raises(ValueError, match="checkpoints"):
        rn.BPTT(checkpoints=bad)


def test_adjoint_trajectory_bad_arguments(getkey):
    model = zoo_model("elman", getkey())
    xs, ys, _ = _data(model, getkey(), batch=())
    with pytest.raises(ValueError, match="truncate"):
        rn.adjoint_trajectory(model, xs, ys, truncate=0)
    with pytest.raises(ValueError, match="leading"):
        rn.adjoint_trajectory(model, xs, ys[:-1])
    with pytest.raises(ValueError, match="weights"):
        rn.adjoint_trajectory(model, xs, ys, weights=jnp.ones(T + 1))
