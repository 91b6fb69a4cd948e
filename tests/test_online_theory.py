"""The approximate online methods held to their theory (float64): SnAp-n is exact
where its pattern loses nothing, UORO and KF-RTRL are unbiased (a statistical test
with a fixed seed and a tolerance from the measured variance), RFLO and e-prop
match references written out in NumPy, and each is exact where it should be."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import rnnode as rn

M, K = 2, 2


def flat(g):
    return jnp.concatenate([a.ravel() for a in jax.tree.leaves(g)])


def grad(model, xs, ys, method):
    return eqx.filter_grad(lambda m: rn.sequence_loss(m, xs, ys, gradient=method))(
        model
    )


def data(getkey, T, m=M, k=K):
    return jr.normal(getkey(), (T, m)), jr.normal(getkey(), (T, k))


def test_snap2_on_a_dense_network_is_exact_rtrl(getkey):
    model = rn.Model(
        rn.ElmanRNN(4, M, key=getkey()), None, rn.Linear(4, K, key=getkey())
    )
    xs, ys = data(getkey, 7)
    exact = flat(grad(model, xs, ys, rn.RTRL()))
    np.testing.assert_allclose(
        flat(grad(model, xs, ys, rn.SnAp(order=2))), exact, rtol=1e-12, atol=1e-15
    )
    # while SnAp-1 is not
    assert not np.allclose(flat(grad(model, xs, ys, rn.SnAp(order=1))), exact)


def _diagonal(model):
    dyn = model.dynamics
    if isinstance(dyn, rn.LSTM):  # every gate's recurrent block diagonal
        n = dyn.hidden_size
        eye = jnp.tile(jnp.eye(n), (4, 1))
        return eqx.tree_at(lambda m: m.dynamics.W_h, model, dyn.W_h * eye)
    return eqx.tree_at(lambda m: m.dynamics.W, model, jnp.diag(jnp.diag(dyn.W)))


@pytest.mark.parametrize("cell", ["elman", "ctrnn_rate", "lstm"])
def test_snap1_is_exact_for_a_diagonal_recurrence(cell, getkey):
    k1, k2 = getkey(), getkey()
    if cell == "elman":
        model = rn.Model(rn.ElmanRNN(4, M, key=k1), None, rn.Linear(4, K, key=k2))
    elif cell == "ctrnn_rate":
        dyn = rn.CTRNN(
            4, M, form="rate", tau=[1.0, 2.0, 0.5, 1.5], learn_tau=True, key=k1
        )
        model = rn.Model(dyn, rn.Euler(0.3), rn.Linear(4, K, key=k2))
    else:  # an LSTM unit: two numbers (h_j, C_j) per parameter
        model = rn.Model(rn.LSTM(3, M, key=k1), None, rn.Linear(3, K, key=k2))
    model = _diagonal(model)
    xs, ys = data(getkey, 6)
    exact = flat(grad(model, xs, ys, rn.Autodiff()))
    np.testing.assert_allclose(
        flat(grad(model, xs, ys, rn.SnAp(order=1))), exact, rtol=1e-11, atol=1e-14
    )


def test_snap2_on_a_sparse_network(getkey):
    """On a 30 %-dense Elman network SnAp-2 stores only the units two steps reach
    (fewer than n per weight row) and only the weights that exist, and is exact
    for sequences of two steps (nothing has left the pattern yet)."""
    n = 8
    dyn = rn.ElmanRNN(n, M, density=0.3, key=getkey())
    model = rn.Model(dyn, None, rn.Linear(n, K, key=getkey()))
    mask = np.asarray(dyn.mask.array)
    state = rn.SnAp(order=2).init(model)
    reach = (mask | np.eye(n, dtype=bool)).sum(axis=0).max()
    row = mask.sum(axis=1).max()  # the most connections into one unit
    assert state.trace["W"].shape == (n, reach, row) and reach < n and row < n
    assert rn.SnAp(order=1).init(model).trace["W"].shape == (n, 1, row)
    assert rn.RFLO().init(model).trace["W"].shape == (n, 1, row)
    xs, ys = data(getkey, 2)
    np.testing.assert_allclose(
        flat(grad(model, xs, ys, rn.SnAp(order=2))),
        flat(grad(model, xs, ys, rn.Autodiff())),
        rtol=1e-12,
        atol=1e-15,
    )


# --------------------------------------------------------------------------------------
# Unbiasedness


def _estimates(method, model, xs, ys, keys):
    """One whole-sequence gradient estimate per key (the online path, vmapped)."""
    T = xs.shape[0]

    def one(key):
        state = method.init(model, key=key)

        def body(state, xy):
            state, _, g = method.step(model, state, *xy, weight=1.0 / T)
            return state, flat(g)

        return jnp.sum(jax.lax.scan(body, state, (xs, ys))[1], axis=0)

    return jax.jit(jax.vmap(one))(keys)


@pytest.mark.parametrize("name", ["uoro", "kf"])
def test_unbiased(name, getkey):
    """The mean of K independent estimates approaches the exact gradient: every
    coordinate within 5 standard errors (measured), and the error of the mean
    shrinks like 1/√K (K = 1000, then 16 000 fresh estimates: about 4× smaller)."""
    if name == "uoro":
        method = rn.UORO()
        model = rn.Model(
            rn.ElmanRNN(3, 1, key=getkey()), None, rn.Linear(3, 1, key=getkey())
        )
    else:  # the rate form with learnt time constants: the exact part as well
        dyn = rn.CTRNN(
            3, 1, form="rate", tau=[1.0, 2.0, 0.5], learn_tau=True, key=getkey()
        )
        method = rn.KFRTRL()
        model = rn.Model(dyn, rn.Euler(0.5), rn.Linear(3, 1, key=getkey()))
    xs, ys = data(getkey, 5, 1, 1)
    exact = np.asarray(flat(grad(model, xs, ys, rn.Autodiff())))
    small, big = 1000, 16000
    G = np.asarray(
        _estimates(method, model, xs, ys, jr.split(jr.PRNGKey(0), small + big))
    )
    G_small, G_big = G[:small], G[small:]
    sd = G_big.std(axis=0)
    random = sd > 1e-12  # the readout's gradient is exact (no variance)
    assert random.sum() >= 10
    np.testing.assert_allclose(G_big[:, ~random].mean(0), exact[~random], atol=1e-12)
    err_big = np.abs(G_big.mean(0) - exact)[random]
    assert np.all(err_big <= 5 * sd[random] / np.sqrt(big))
    # The error of the mean in the estimates' own metric: with the covariance Σ
    # (measured), K |Σ^{-1/2} (mean_K - exact)|² / d is about χ²_d / d ≈ 1 at both
    # K and 16 K, i.e. the error shrinks like 1/√K; a biased method fails it.
    w, Q = np.linalg.eigh(np.cov(G_big.T))
    keep = w > 1e-10 * w.max()

    def error(G, target):
        return np.linalg.norm(Q[:, keep].T @ (G.mean(0) - target) / np.sqrt(w[keep]))

    d = keep.sum()
    e_small, e_big = error(G_small, exact), error(G_big, exact)
    assert 0.25 < small * e_small**2 / d < 3
    assert 0.25 < big * e_big**2 / d < 3
    assert 1.5 < e_small / e_big < 12  # √16 = 4
    snap1 = np.asarray(flat(grad(model, xs, ys, rn.SnAp(order=1))))
    assert big * error(G_big, snap1) ** 2 / d > 100


# --------------------------------------------------------------------------------------
# RFLO and e-prop against NumPy references


def _np(a):
    return np.asarray(a, dtype=np.float64)


def _signal(V, o, y, B):
    dl_do = 2 * (o - y) / o.shape[0]  # rn.mse
    return (V if B is None else B).T @ dl_do


def _feedback_matrix(seed, out, n):
    """The documented random feedback: uniform on ±√(3/n) from jr.PRNGKey(seed),
    drawn in float32."""
    bound = float(np.sqrt(3.0 / n))
    return _np(jr.uniform(jr.PRNGKey(seed), (out, n), jnp.float32, -bound, bound))


@pytest.mark.parametrize("feedback", ["symmetric", "random"])
def test_rflo_matches_numpy_reference(feedback, getkey):
    """Murray (2019) on the rate form r' = r + c(-r + φ(W r + U x + b))."""
    n, T = 4, 6
    dyn = rn.CTRNN(n, M, form="rate", tau=[1.0, 2.0, 0.5, 1.5], key=getkey())
    model = rn.Model(dyn, rn.Euler(0.4), rn.Linear(n, K, key=getkey()))
    xs, ys = data(getkey, T)
    method = rn.RFLO(feedback=feedback, seed=3)
    g = grad(model, xs, ys, method)

    W, U, b = _np(dyn.W), _np(dyn.U), _np(dyn.b)
    V, c_out = _np(model.readout.weight), _np(model.readout.bias)
    c = 0.4 / np.array([1.0, 2.0, 0.5, 1.5])
    B = None if feedback == "symmetric" else _feedback_matrix(3, K, n)
    r = np.zeros(n)
    eW, eU, eb = np.zeros((n, n)), np.zeros((n, M)), np.zeros(n)
    gW, gU, gb = np.zeros((n, n)), np.zeros((n, M)), np.zeros(n)
    for t in range(T):
        x = _np(xs[t])
        z = W @ r + U @ x + b
        d = 1 - np.tanh(z) ** 2
        for j in range(n):
            for k in range(n):
                eW[j, k] = (1 - c[j]) * eW[j, k] + c[j] * d[j] * r[k]
            for k in range(M):
                eU[j, k] = (1 - c[j]) * eU[j, k] + c[j] * d[j] * x[k]
            eb[j] = (1 - c[j]) * eb[j] + c[j] * d[j]
        r = r + c * (-r + np.tanh(z))
        L = _signal(V, V @ r + c_out, _np(ys[t]), B) / T
        gW += L[:, None] * eW
        gU += L[:, None] * eU
        gb += L * eb
    np.testing.assert_allclose(g.dynamics.W, gW, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g.dynamics.U, gU, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g.dynamics.b, gb, rtol=1e-10, atol=1e-14)


def test_eprop_lstm_matches_numpy_reference(getkey):
    """Bellec et al.'s LSTM eligibility traces, through the cell state."""
    n, T = 3, 5
    model = rn.Model(rn.LSTM(n, M, key=getkey()), None, rn.Linear(n, K, key=getkey()))
    xs, ys = data(getkey, T)
    g = grad(model, xs, ys, rn.EProp())

    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    Wh, Wx, bias = (
        _np(model.dynamics.W_h),
        _np(model.dynamics.W_x),
        _np(model.dynamics.b),
    )
    V, c_out = _np(model.readout.weight), _np(model.readout.bias)
    h, C = np.zeros(n), np.zeros(n)
    eps = {p: np.zeros((4 * n, w)) for p, w in (("W_h", n), ("W_x", M), ("b", 1))}
    grads = {p: np.zeros_like(e) for p, e in eps.items()}
    for t in range(T):
        x = _np(xs[t])
        z = Wh @ h + Wx @ x + bias
        i, f, gg, o = (
            sig(z[:n]),
            sig(z[n : 2 * n]),
            np.tanh(z[2 * n : 3 * n]),
            sig(z[3 * n :]),
        )
        C_new = f * C + i * gg
        # ∂C'_j/∂z_(gate, j): input, forget, cell gates; the output gate does not touch C
        dC = np.concatenate(
            [gg * i * (1 - i), C * f * (1 - f), i * (1 - gg**2), np.zeros(n)]
        )
        dh_o = np.tanh(C_new) * o * (1 - o)  # the output gate's own path to h'
        inputs = {"W_h": h, "W_x": x, "b": np.ones(1)}
        L = _signal(V, V @ (o * np.tanh(C_new)) + c_out, _np(ys[t]), None) / T
        for p, v in inputs.items():
            e = np.zeros_like(eps[p])
            for row in range(4 * n):
                gate, j = divmod(row, n)
                eps[p][row] = f[j] * eps[p][row] + dC[row] * v  # ε ← f ε + ∂C'/∂θ
                e[row] = o[j] * (1 - np.tanh(C_new[j]) ** 2) * eps[p][row]
                if gate == 3:
                    e[row] += dh_o[j] * v
                grads[p][row] += L[j] * e[row]
        h, C = o * np.tanh(C_new), C_new
    np.testing.assert_allclose(g.dynamics.W_h, grads["W_h"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g.dynamics.W_x, grads["W_x"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g.dynamics.b, grads["b"][:, 0], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "cell,method",
    [("elman", rn.RFLO()), ("ctrnn", rn.EProp()), ("ctrnn_rate", rn.RFLO())],
)
def test_eligibility_traces_are_exact_without_recurrent_weights(cell, method, getkey):
    """With `W = 0` nothing is mediated by the recurrent weights: the truncation
    drops nothing and RFLO / e-prop equal the exact gradient (all parameters)."""
    k1, k2 = getkey(), getkey()
    if cell == "elman":
        model = rn.Model(rn.ElmanRNN(4, M, key=k1), None, rn.Linear(4, K, key=k2))
    else:
        form = "rate" if cell == "ctrnn_rate" else "current"
        dyn = rn.CTRNN(
            4, M, form=form, tau=[1.0, 2.0, 0.5, 1.5], learn_tau=True, key=k1
        )
        model = rn.Model(dyn, rn.Euler(0.3), rn.Linear(4, K, key=k2))
    model = eqx.tree_at(lambda m: m.dynamics.W, model, jnp.zeros((4, 4)))
    xs, ys = data(getkey, 6)
    g = grad(model, xs, ys, method)
    exact = grad(model, xs, ys, rn.Autodiff())
    np.testing.assert_allclose(flat(g), flat(exact), rtol=1e-11, atol=1e-14)
