"""Every cell × method pair of the coverage table (`rn.ONLINE_COVERAGE`) against an
independent reference, the recurrent parameters apart from the readout:

- SnAp, RFLO and e-prop against their definition computed another way: a dense
  influence matrix `P_t = (J̃_t P_{t-1} + I_t) ⊙ M` from `jax.jacfwd` of the step,
  with SnAp's mask `M` (the pattern of `I` reached in one or two steps, found
  numerically) or, for RFLO and e-prop, the Jacobian `J̃` with every path through
  the recurrent weights removed (the recurrent weights' share of `J`, from the
  bias they add to, is subtracted), and the learning signal of the readout or of
  the random feedback matrix;
- UORO and KF-RTRL (unbiased) by the mean of many estimates;
- LayerLocalRTRL in a stack against `jax.grad` of a rollout in which every other
  layer's recurrent carry is held constant (`lax.stop_gradient`), layer by layer;
- exact RTRL against `jax.grad` in test_rtrl.py, test_lru.py and test_stack.py.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import rnnode as rn
from rnnode._activations import get_activation

M, K, T = 2, 2, 4


def make(cell: str, key) -> rn.Model:
    k1, k2, k3 = jr.split(key, 3)
    if cell == "elman":
        return rn.Model(rn.ElmanRNN(3, M, key=k1), None, rn.Linear(3, K, key=k2))
    if cell == "elman_sparse":
        dyn = rn.ElmanRNN(6, M, density=0.35, key=k1)
        return rn.Model(dyn, None, rn.Linear(6, K, key=k2))
    if cell == "ctrnn":  # the current form, learnt time constants
        dyn = rn.CTRNN(3, M, tau=[1.0, 2.0, 0.7], learn_tau=True, key=k1)
        return rn.Model(dyn, rn.Euler(0.3), rn.Linear(3, K, key=k2))
    if cell == "ctrnn_rate_sparse":
        dyn = rn.CTRNN(6, M, form="rate", density=0.35, gain=1.3, key=k1)
        return rn.Model(dyn, rn.Euler(0.4), rn.Linear(6, K, key=k2))
    if cell == "ctrnn_rk4":  # any step: RK4 has no structured Jacobian
        return rn.Model(rn.CTRNN(2, M, key=k1), rn.RK4(0.3), rn.Linear(2, K, key=k2))
    if cell == "lstm":
        return rn.Model(rn.LSTM(2, M, key=k1), None, rn.Linear(2, K, key=k2))
    if cell == "gru":
        return rn.Model(rn.GRU(2, M, key=k1), None, rn.Linear(2, K, key=k2))
    if cell == "lru":
        return rn.Model(rn.LRU(2, M, r_min=0.5, key=k1), None, rn.Linear(M, K, key=k2))
    if cell == "stack":
        layers = [rn.LRU(2, 3, r_min=0.5, key=k) for k in jr.split(k1, 2)]
        stack = rn.Stack(layers, input_size=M, key=k3)
        return rn.Model(stack, None, rn.Linear(3, K, key=k2))
    raise AssertionError(cell)


def flat(g):
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(g)])


def grad(model, xs, ys, method):
    return eqx.filter_grad(lambda m: rn.sequence_loss(m, xs, ys, gradient=method))(
        model
    )


def data(key, T=T):
    kx, ky = jr.split(key)
    return jr.normal(kx, (T, M)), jr.normal(ky, (T, K))


# --------------------------------------------------------------------------------------
# The dense reference


def _recurrent_share(model, h, x, theta_step):
    """`∂h'/∂h` through the recurrent weights only: the recurrent weights see
    `h + d`, which is the same as adding `W d` to the bias they sit beside."""
    dyn = model.dynamics

    def shifted(d):
        if isinstance(dyn, (rn.ElmanRNN, rn.CTRNN)):
            W = dyn.W
            if dyn.mask is not None:
                W = W * jnp.asarray(dyn.mask.array, W.dtype)
            if isinstance(dyn, rn.CTRNN) and dyn.form == "current":
                phi = get_activation(dyn.activation)
                add = W @ (phi(h + d) - phi(h))
            else:
                add = W @ d
            return eqx.tree_at(lambda m: m.dynamics.b, model, dyn.b + add)
        if isinstance(dyn, rn.GRU):
            return eqx.tree_at(lambda m: m.dynamics.b_h, model, dyn.b_h + dyn.W_h @ d)
        n = dyn.hidden_size  # LSTM: W_h reads the hidden half
        return eqx.tree_at(lambda m: m.dynamics.b, model, dyn.b + dyn.W_h @ d[:n])

    return jax.jacfwd(lambda d: theta_step(shifted(d), h, x))(jnp.zeros_like(h))


@eqx.filter_jit
def reference(model, xs, ys, mask, local, F):
    """`(Σ_t a_t L_t · P_t` for the dynamics, `Σ_t a_t ∂l_t/∂readout)` with
    `P_t = (J̃_t P_{t-1} + I_t) ⊙ mask`, `J̃ = J - local · (recurrent share)` and
    `L_t = observe_vjp(∂l_t/∂o_t F)` (`F` the readout's weights, or the random
    feedback matrix)."""
    dyn_p, dyn_s = eqx.partition(model.dynamics, eqx.is_inexact_array)
    theta0, unravel = ravel_pytree(dyn_p)

    def with_theta(theta):
        return eqx.tree_at(
            lambda m: m.dynamics, model, eqx.combine(unravel(theta), dyn_s)
        )

    def step(m, h, x):
        return m.step(h, jnp.zeros((), h.dtype), x, x)

    a = 1.0 / xs.shape[0]  # sequence_loss's default weights

    def body(carry, xy):
        h, P, g, g_ro = carry
        x, y = xy
        J = jax.jacfwd(lambda h: step(model, h, x))(h)
        J = J - local * _recurrent_share(model, h, x, step)
        imm = jax.jacfwd(lambda th: step(with_theta(th), h, x))(theta0)
        P = (J @ P + imm) * mask
        h = step(model, h, x)
        o = model.output(h)
        dl_do = jax.grad(lambda o: rn.mse(o, y))(o)
        _, observe_vjp = jax.vjp(model.dynamics.observe, h)
        (L,) = observe_vjp(dl_do @ F)
        ro = jax.grad(lambda r: rn.mse(r(model.dynamics.observe(h)), y))(model.readout)
        g_ro = jax.tree.map(lambda s, d: s + a * d, g_ro, ro)
        return (h, P, g + a * (L @ P), g_ro), None

    n, m = model.state_size, theta0.shape[0]
    ro0 = jax.tree.map(jnp.zeros_like, model.readout)
    carry = (model.init_state(), jnp.zeros((n, m)), jnp.zeros(m), ro0)
    (_, _, g, g_ro), _ = jax.lax.scan(body, carry, (xs, ys))
    return unravel(g), g_ro


def snap_mask(model, order, key):
    """The pattern of `I` (order 1), or of `I` and `J I` (order 2), at a random
    state and input (no entry is zero there by accident)."""
    dyn_p, dyn_s = eqx.partition(model.dynamics, eqx.is_inexact_array)
    theta0, unravel = ravel_pytree(dyn_p)
    h = 0.5 * jr.normal(key, (model.state_size,))
    x = jr.normal(jr.fold_in(key, 1), (M,))

    def step(theta, h):
        m = eqx.tree_at(lambda m: m.dynamics, model, eqx.combine(unravel(theta), dyn_s))
        return m.step(h, 0.0, x, x)

    imm = np.abs(np.asarray(jax.jacfwd(step)(theta0, h))) > 0
    if isinstance(model.dynamics, rn.LSTM):
        # SnAp's unit is the pair (h_j, C_j): a parameter that reaches either
        # coordinate keeps both (the o gate reaches h_j only, yet keeps C_j)
        unit = np.arange(model.state_size) % model.dynamics.hidden_size
        imm = np.stack([imm[unit == u].any(0) for u in unit])
    if order == 1:
        return imm.astype(float)
    J = np.abs(np.asarray(jax.jacfwd(step, argnums=1)(theta0, h))) > 0
    return ((J.astype(float) @ imm) + imm > 0).astype(float)


def feedback_matrix(model, seed):
    """The documented random feedback: uniform on ±√(3/observed), float32 bits."""
    obs = model.dynamics.observe(model.init_state()).shape[0]
    bound = float(np.sqrt(3.0 / obs))
    B = jr.uniform(jr.PRNGKey(seed), (K, obs), jnp.float32, -bound, bound)
    return B.astype(jnp.float64)


DETERMINISTIC = [  # (method, cell, kind); kind: the reference's mask / Jacobian
    (rn.SnAp(order=1), "elman", "snap1"),
    (rn.SnAp(order=1), "ctrnn", "snap1"),
    (rn.SnAp(order=1), "lstm", "snap1"),
    (rn.SnAp(order=1), "gru", "snap1"),
    (rn.SnAp(order=2), "elman_sparse", "snap2"),
    (rn.SnAp(order=2), "ctrnn_rate_sparse", "snap2"),
    (rn.SnAp(order=2), "lstm", "snap2"),
    (rn.SnAp(order=2), "gru", "snap2"),
    (rn.RFLO(), "elman", "local"),
    (rn.RFLO(), "ctrnn", "local"),
    (rn.RFLO(feedback="random", seed=3), "ctrnn_rate_sparse", "local"),
    (rn.EProp(), "elman_sparse", "local"),
    (rn.EProp(), "ctrnn_rate_sparse", "local"),
    (rn.EProp(), "lstm", "local"),
    (rn.EProp(), "gru", "local"),
    (rn.EProp(feedback="random", seed=1), "lstm", "local"),
]


def _id(case):
    method, cell, _ = case
    extra = "-random" if getattr(method, "feedback", "") == "random" else ""
    order = f"{method.order}" if isinstance(method, rn.SnAp) else ""
    return f"{type(method).__name__}{order}{extra}-{cell}"


@pytest.mark.parametrize("case", DETERMINISTIC, ids=[_id(c) for c in DETERMINISTIC])
def test_against_the_definition(case, getkey):
    method, cell, kind = case
    model = make(cell, jr.PRNGKey(7))
    xs, ys = data(jr.PRNGKey(8))
    if kind == "local":
        mask, local = snap_mask(model, 1, getkey()), 1.0
    else:
        mask, local = snap_mask(model, int(kind[-1]), getkey()), 0.0
    F = model.readout.weight
    if getattr(method, "feedback", "symmetric") == "random":
        F = feedback_matrix(model, int(method.seed))
    ref_dyn, ref_ro = reference(model, xs, ys, jnp.asarray(mask), local, F)
    g = grad(model, xs, ys, method)
    # the recurrent parameters, then the readout (exact for every method)
    np.testing.assert_allclose(flat(g.dynamics), flat(ref_dyn), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(flat(g.readout), flat(ref_ro), rtol=1e-10, atol=1e-13)
    if kind == "snap2" and cell in ("lstm", "gru"):  # dense: SnAp-2 is exact
        assert mask.all()
    elif kind != "local" or cell != "elman":  # the approximation drops something
        exact = grad(model, xs, ys, rn.Autodiff())
        assert not np.allclose(flat(g.dynamics), flat(exact.dynamics), atol=1e-6)


# --------------------------------------------------------------------------------------
# The unbiased methods: the mean of many estimates


UNBIASED = [
    (rn.UORO(), "lstm"),
    (rn.UORO(), "gru"),
    (rn.UORO(), "lru"),
    (rn.UORO(), "ctrnn_rk4"),
    (rn.KFRTRL(), "elman"),
]


@pytest.mark.parametrize(
    "method,cell", UNBIASED, ids=[f"{type(m).__name__}-{c}" for m, c in UNBIASED]
)
def test_unbiased(method, cell):
    """Every random coordinate of the mean of 3000 estimates within 5 standard
    errors (measured) of `jax.grad`; the readout exact."""
    model = make(cell, jr.PRNGKey(3))
    xs, ys = data(jr.PRNGKey(4), 3)
    exact = grad(model, xs, ys, rn.Autodiff())
    N = 3000

    @jax.jit
    def estimates(keys):
        def one(key):
            state = method.init(model, key=key)

            def body(state, xy):
                state, _, g = method.step(model, state, *xy, weight=1.0 / 3)
                return state, (flat(g.dynamics), flat(g.readout))

            _, (gd, gr) = jax.lax.scan(body, state, (xs, ys))
            return gd.sum(0), gr.sum(0)

        return jax.vmap(one)(keys)

    G, R = (np.asarray(a) for a in estimates(jr.split(jr.PRNGKey(0), N)))
    np.testing.assert_allclose(
        R, np.broadcast_to(flat(exact.readout), R.shape), rtol=1e-9, atol=1e-12
    )
    sd = G.std(axis=0)
    target = np.asarray(flat(exact.dynamics))
    random = sd > 1e-9
    assert random.sum() >= 5
    np.testing.assert_allclose(G.mean(0)[~random], target[~random], atol=1e-9)
    z = np.abs(G.mean(0) - target)[random] / (sd[random] / np.sqrt(N))
    assert z.max() < 5, z.max()


# --------------------------------------------------------------------------------------
# LayerLocalRTRL in a stack


def test_layer_local_in_a_stack_is_its_definition():
    """Layer by layer, the recurrence parameters' gradient is `jax.grad` of a
    rollout in which every other layer's recurrent carry is held constant; every
    other parameter's is that of a rollout in which all carries are held (the
    gradient through the current step)."""
    model = make("stack", jr.PRNGKey(5))
    xs, ys = data(jr.PRNGKey(6), 5)
    stack = model.dynamics
    L = len(stack.layers)

    @eqx.filter_jit
    def held(model, live):
        def loss(model):
            def body(h, xy):
                x, y = xy
                parts = stack.split(h)
                parts = [
                    p if i == live else jax.lax.stop_gradient(p)
                    for i, p in enumerate(parts)
                ]
                h = model.step(jnp.concatenate(parts), 0.0, x, x)
                return h, rn.mse(model.output(h), y) / xs.shape[0]

            return jnp.sum(jax.lax.scan(body, model.init_state(), (xs, ys))[1])

        return eqx.filter_grad(loss)(model)

    g = grad(model, xs, ys, rn.LayerLocalRTRL())
    recurrence = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im")
    for layer in range(L):
        ref = held(model, layer)
        for name in recurrence:
            np.testing.assert_allclose(
                getattr(g.dynamics.layers[layer].core, name),
                getattr(ref.dynamics.layers[layer].core, name),
                rtol=1e-9,
                atol=1e-13,
            )
    # everything else: through the current step (all carries held)
    rest = held(model, -1)
    strip = lambda g: eqx.tree_at(
        lambda m: [getattr(ly.core, k) for ly in m.dynamics.layers for k in recurrence],
        g,
        replace_fn=lambda _: None,
    )
    np.testing.assert_allclose(flat(strip(g)), flat(strip(rest)), rtol=1e-9, atol=1e-13)
    # and it is an approximation: the lower layer's recurrence is not exact
    exact = grad(model, xs, ys, rn.Autodiff())
    assert not np.allclose(
        flat(g.dynamics.layers[0].core.nu_log),
        flat(exact.dynamics.layers[0].core.nu_log),
    )


# --------------------------------------------------------------------------------------
# Every pair of the table has its test


TESTED_ELSEWHERE = {  # exact RTRL against jax.grad / finite differences
    ("RTRL", c): "test_rtrl.py, test_lru.py, test_stack.py"
    for c in ("ElmanRNN", "CTRNN", "LSTM", "GRU", "LRU", "Stack", "any")
}
TESTED_ELSEWHERE |= {
    ("UORO", "ElmanRNN"): "test_online_theory.py::test_unbiased",
    ("KFRTRL", "CTRNN"): "test_online_theory.py::test_unbiased",
    ("LayerLocalRTRL", "LRU"): "test_lru.py::test_gradients_of_every_method",
}


def test_every_pair_of_the_coverage_table_is_tested():
    dyn = {
        "elman": "ElmanRNN", "elman_sparse": "ElmanRNN", "ctrnn": "CTRNN",
        "ctrnn_rate_sparse": "CTRNN", "lstm": "LSTM", "gru": "GRU", "lru": "LRU",
        "stack": "Stack", "ctrnn_rk4": "any",
    }  # fmt: skip
    here = {(type(m).__name__, dyn[c]) for m, c, _ in DETERMINISTIC}
    here |= {(type(m).__name__, dyn[c]) for m, c in UNBIASED}
    here |= {("LayerLocalRTRL", "Stack")}
    tested = here | set(TESTED_ELSEWHERE)
    for name, cells in rn.ONLINE_COVERAGE.items():
        names = ["any"] if cells == "any" else [c.__name__ for c in cells]
        if cells == "any":  # a claim of any step: the four cells, the LRU, RK4
            names += ["ElmanRNN", "LSTM", "GRU", "LRU"]
        for c in names:
            assert (name, c) in tested, f"{name} on {c} is claimed but not tested"
