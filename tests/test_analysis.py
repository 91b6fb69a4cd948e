"""Analyses against direct computations: step Jacobians against `jax.jacfwd`,
products and spectra against explicit matrix products, gradient norms against
`jax.grad` with respect to intermediate states, Lyapunov exponents of linear maps
and contracting networks, fixed points known in closed form; `run_analysis`."""

import json

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.optimize
from _zoo import analysis_model

import rnnode as rn
from rnnode import analysis as an


def _inputs(key, T=12, m=2):
    return jr.normal(key, (T, m))


@pytest.mark.parametrize("name", ["elman", "lstm", "ctrnn", "gru"])
def test_step_jacobians_match_jacfwd(name, key, getkey):
    model = analysis_model(name, key)
    xs = _inputs(getkey())
    h0 = 0.3 * jr.normal(getkey(), (model.state_size,))
    Js = an.step_jacobians(model, xs, h0=h0)
    hs, _ = model.rollout(xs, h0=h0)
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    expected = jax.vmap(jax.jacfwd(model.step))(h_prev, *model.step_inputs(xs))
    np.testing.assert_allclose(Js, expected, rtol=1e-12, atol=1e-14)


def test_step_jacobians_diffrax_falls_back_to_reverse_mode(key, getkey):
    # diffrax's default adjoint admits no jvp; the analyses use vjps instead.
    model = rn.Model(rn.CTRNN(3, 2, key=key), rn.Diffrax(0.1, solver=diffrax.Euler()))
    xs = _inputs(getkey(), T=2)
    Js = an.step_jacobians(model, xs)
    ref = an.step_jacobians(rn.Model(model.dynamics, rn.Euler(0.1)), xs)
    np.testing.assert_allclose(Js, ref, rtol=1e-12, atol=1e-14)


def test_products_and_spectra_match_explicit(key, getkey):
    model = analysis_model("lstm", key)
    xs = _inputs(getkey(), T=10)
    T, n = xs.shape[0], model.state_size
    Js = np.asarray(an.step_jacobians(model, xs))

    def explicit(k, t):
        P = np.eye(n)
        for s in range(k, t):
            P = Js[s] @ P
        return P

    for k, t in [(0, 0), (0, 1), (2, 7), (0, T), (4, T)]:
        np.testing.assert_allclose(
            an.jacobian_product(model, xs, k, t), explicit(k, t), rtol=1e-10, atol=1e-13
        )
    start = np.asarray(an.jacobian_products(model, xs, anchor="start"))
    end = np.asarray(an.jacobian_products(model, xs, anchor="end"))
    for lag in range(T + 1):
        np.testing.assert_allclose(start[lag], explicit(0, lag), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(
            end[lag], explicit(T - lag, T), rtol=1e-10, atol=1e-13
        )

    for anchor, prods in (("start", start), ("end", end)):
        spec = an.jacobian_spectrum(model, xs, anchor=anchor)
        np.testing.assert_array_equal(spec.lags, np.arange(T + 1))
        sv = np.linalg.svd(prods, compute_uv=False)
        np.testing.assert_allclose(spec.singular_values, sv, rtol=1e-8, atol=1e-13)
        for lag in (1, T // 2, T):
            ev = np.linalg.eigvals(prods[lag])
            got = np.asarray(spec.eigenvalues[lag])
            # Small eigenvalues are ill-conditioned: tolerances relative to the largest.
            tol = 1e-8 * np.max(np.abs(ev))
            np.testing.assert_allclose(np.abs(got), np.sort(np.abs(ev))[::-1], atol=tol)
            np.testing.assert_allclose(
                np.sort_complex(got), np.sort_complex(ev), atol=tol
            )
        # The exact norms from a full frame; a thin frame gives lower bounds.
        lags, norms = an.jacobian_norm_vs_lag(model, xs, anchor=anchor)
        np.testing.assert_allclose(norms, sv[:, 0], rtol=1e-9, atol=1e-14)
        if anchor == "end":
            _, thin = an.jacobian_norm_vs_lag(
                model, xs, anchor=anchor, num_vectors=2, key=getkey()
            )
            assert np.all(np.asarray(thin) <= sv[:, 0] * (1 + 1e-9))
            assert np.all(np.asarray(thin[1:]) >= 0.05 * sv[1:, 0])
    sigma = an.jacobian_product_norm(model, xs, 2, T, num_iters=200, key=getkey())
    np.testing.assert_allclose(sigma, np.linalg.norm(explicit(2, T), 2), rtol=1e-6)


def test_norms_of_exploding_products_stay_finite(key):
    # ‖(3I)^t‖ = 3^t overflows float64 as a matrix for t > 646; its log does not.
    cell = eqx.tree_at(
        lambda c: (c.W, c.U, c.b),
        rn.ElmanRNN(2, 1, activation="identity", key=key),
        (3.0 * jnp.eye(2), jnp.zeros((2, 1)), jnp.zeros(2)),
    )
    model, xs = rn.Model(cell), jnp.zeros((700, 1))
    _, norms = an.jacobian_norm_vs_lag(model, xs, anchor="start")
    assert np.isfinite(norms[600]) and np.isinf(norms[-1])
    np.testing.assert_allclose(np.log(norms[:600]), np.arange(600) * np.log(3.0))
    spec = an.jacobian_spectrum(model, xs)
    assert not np.any(np.isnan(spec.singular_values))


def test_matrix_power_norms(getkey):
    W = jr.normal(getkey(), (5, 5)) / 2
    got = an.matrix_power_norms(W, 20)
    ref = [
        np.linalg.norm(np.linalg.matrix_power(np.asarray(W), t), 2) for t in range(21)
    ]
    np.testing.assert_allclose(got, ref, rtol=1e-9)


@pytest.mark.parametrize("name", ["lstm", "ctrnn"])
def test_gradient_norm_vs_lag_matches_grad_wrt_states(name, key, getkey):
    model = analysis_model(name, key)
    T = 9
    xs = _inputs(getkey(), T=T)
    out = model.output(jnp.zeros(model.state_size)).shape[0]
    ys = jr.normal(getkey(), (T, out))
    lags, norms = an.gradient_norm_vs_lag(model, xs, ys)
    ts, x, xn = model.step_inputs(xs)

    def last_loss(deltas):
        # Perturb each state h_t by deltas[t-1]; dl_T/d deltas[t-1] = dl_T/dh_t.
        h = model.init_state()
        for t in range(T):
            h = model.step(h, ts[t], x[t], xn[t]) + deltas[t]
        return rn.mse(model.output(h), ys[-1])

    grads = jax.grad(last_loss)(jnp.zeros((T, model.state_size)))
    expected = np.linalg.norm(np.asarray(grads), axis=1)[::-1]
    np.testing.assert_array_equal(lags, np.arange(T))
    np.testing.assert_allclose(norms, expected, rtol=1e-10, atol=1e-15)


def _linear_map(key, eigenvalues):
    n = len(eigenvalues)
    Q = np.asarray(jr.normal(key, (n, n))) + 2 * np.eye(n)
    A = Q @ np.diag(eigenvalues) @ np.linalg.inv(Q)
    cell = eqx.tree_at(
        lambda c: (c.W, c.U, c.b),
        rn.ElmanRNN(n, 1, activation="identity", key=key),
        (jnp.asarray(A), jnp.zeros((n, 1)), jnp.zeros(n)),
    )
    return rn.Model(cell), A


def test_lyapunov_of_linear_map_is_log_abs_eigenvalues(key, getkey):
    eigenvalues = [1.2, -0.9, 0.6, 0.25]
    model, _ = _linear_map(key, eigenvalues)
    xs = jnp.zeros((2000, 1))
    expected = np.sort(np.log(np.abs(eigenvalues)))[::-1]
    spec = an.lyapunov_exponents(model, xs, transient=100)
    np.testing.assert_allclose(spec.exponents, expected, atol=1e-3)
    np.testing.assert_allclose(spec.per_step, spec.exponents)  # dt = 1
    assert spec.history.shape == (1900, 4) and spec.num_steps == 1900
    top = an.lyapunov_exponents(model, xs, k=2, transient=100, key=getkey())
    np.testing.assert_allclose(top.exponents, expected[:2], atol=1e-3)


def test_lyapunov_of_linear_ctrnn_is_per_unit_time(key):
    # dr/dt = (W - I) r (identity activation), Euler step I + dt (W - I).
    n, dt = 3, 0.05
    W = np.diag([0.5, -1.0, 1.5]) + np.triu(np.ones((n, n)), 1) * 0.3
    ctrnn = eqx.tree_at(
        lambda c: c.W, rn.CTRNN(n, 1, activation="identity", key=key), jnp.asarray(W)
    )
    model = rn.Model(ctrnn, rn.Euler(dt))
    spec = an.lyapunov_exponents(model, jnp.zeros((1500, 1)), transient=100)
    step_eigs = np.linalg.eigvals(np.eye(n) + dt * (W - np.eye(n)))
    expected = np.sort(np.log(np.abs(step_eigs)))[::-1]
    np.testing.assert_allclose(spec.per_step, expected, atol=1e-3)
    np.testing.assert_allclose(spec.exponents, expected / dt, atol=2e-2)


def test_lyapunov_of_contracting_ctrnn_is_negative(key, getkey):
    model = rn.Model(rn.CTRNN(6, 2, gain=0.5, key=key), rn.RK4(0.1))
    xs = jnp.sin(jnp.linspace(0, 20, 600))[:, None] * jnp.ones((1, 2))
    spec = an.lyapunov_exponents(model, xs, transient=50)
    assert spec.exponents.shape == (6,)
    assert np.all(np.asarray(spec.exponents) < -0.3)
    assert np.all(np.diff(np.asarray(spec.exponents)) <= 0)
    # The exponents sum to the average log volume contraction.
    Js = an.step_jacobians(model, xs)[50:]
    logdet = np.mean(np.linalg.slogdet(np.asarray(Js))[1])
    np.testing.assert_allclose(np.sum(spec.per_step), logdet, rtol=1e-8)


def _bistable_ctrnn(key, ws):
    n = len(ws)
    ctrnn = eqx.tree_at(
        lambda c: (c.W, c.U),
        rn.CTRNN(n, 1, key=key),
        (jnp.diag(jnp.asarray(ws)), jnp.zeros((n, 1))),
    )
    return rn.Model(ctrnn, rn.Euler(0.1))


def _root(w):
    # -r + w tanh(r) = 0 has 0 and ±r* for w > 1.
    return scipy.optimize.brentq(lambda r: -r + w * np.tanh(r), 1e-3, 2 * w)


@pytest.mark.parametrize("method", ["optimise", "newton"])
def test_fixed_points_of_uncoupled_bistable_ctrnn(method, key, getkey):
    ws = [2.0, 1.5]
    model = _bistable_ctrnn(key, ws)
    fps = an.find_fixed_points(
        model, jnp.zeros(1), num_starts=100, key=getkey(), method=method, noise=2.0
    )
    r1, r2 = _root(ws[0]), _root(ws[1])
    expected = {(a, b) for a in (-r1, 0.0, r1) for b in (-r2, 0.0, r2)}
    assert len(fps.points) == 9 and fps.kind == "continuous"
    assert np.all(fps.speeds <= 1e-8)
    for p, stab, eig in zip(fps.points, fps.stability, fps.eigenvalues, strict=True):
        match = min(expected, key=lambda e: np.hypot(p[0] - e[0], p[1] - e[1]))
        np.testing.assert_allclose(p, match, atol=1e-7)
        zeros = sum(abs(c) < 1e-6 for c in match)
        assert stab == {0: "stable", 1: "saddle", 2: "unstable"}[zeros]
        # Eigenvalues of the diagonal Jacobian -1 + w (1 - tanh² r).
        d = np.sort(-1 + np.asarray(ws) * (1 - np.tanh(np.asarray(match)) ** 2))[::-1]
        np.testing.assert_allclose(eig.real, d, atol=1e-7)
    fig = an.plot_fixed_points(
        fps, model.rollout(jnp.zeros((50, 1)), h0=jnp.ones(2))[0]
    )
    assert fig.axes


def test_fixed_points_of_discrete_map(key, getkey):
    # h ← tanh(w h): fixed points 0 (|w| > 1: unstable) and ±h*, stable.
    w = 3.0
    cell = eqx.tree_at(
        lambda c: (c.W, c.U, c.b),
        rn.ElmanRNN(1, 1, key=key),
        (jnp.full((1, 1), w), jnp.zeros((1, 1)), jnp.zeros(1)),
    )
    fps = an.find_fixed_points(
        rn.Model(cell), jnp.zeros(1), num_starts=30, key=getkey(), method="newton"
    )
    h_star = scipy.optimize.brentq(lambda h: np.tanh(w * h) - h, 1e-3, 1.0)
    order = np.argsort(fps.points[:, 0])
    np.testing.assert_allclose(fps.points[order, 0], [-h_star, 0.0, h_star], atol=1e-9)
    assert [fps.stability[i] for i in order] == ["stable", "unstable", "stable"]
    assert fps.kind == "discrete"
    np.testing.assert_allclose(fps.eigenvalues[order[1]], [w], rtol=1e-9)


def test_fixed_points_warn_when_none_converge(key, getkey):
    model = _bistable_ctrnn(key, [2.0])
    with pytest.warns(UserWarning, match="none of 4 starts"):
        fps = an.find_fixed_points(
            model, jnp.zeros(1), num_starts=4, key=getkey(), steps=1, newton_steps=0
        )
    assert fps.points.shape == (0, 1) and fps.num_converged == 0


@pytest.mark.parametrize("what", an.ANALYSES)
def test_run_analysis_writes_json_and_png(what, key, getkey, tmp_path):
    model = analysis_model("elman", key)
    xs = jr.normal(getkey(), (30, 3, 2))
    ys = jr.normal(getkey(), (30, 3, 3)) if what == "alignment" else None
    result = an.run_analysis(model, xs, what=what, out_dir=tmp_path / "a", ys=ys)
    data = json.loads((tmp_path / "a" / f"{what}.json").read_text())
    assert data == result and data["what"] == what and data["num_steps"] == 30
    assert (tmp_path / "a" / f"{what}.png").stat().st_size > 1000
    if what == "gradient_norm":
        ys = jr.normal(getkey(), (30, 3, 3))
        result = an.run_analysis(model, xs, what=what, out_dir=tmp_path, ys=ys)
        assert result["quantity"].startswith("||dl_T")
        assert len(result["norms"]) == 30


def test_errors(key, tmp_path):
    model = analysis_model("elman", key)
    xs = jnp.zeros((5, 2))
    with pytest.raises(ValueError, match="unknown analysis `what='lyap'`"):
        an.run_analysis(model, xs, what="lyap", out_dir=tmp_path)
    with pytest.raises(ValueError, match="one sequence"):
        an.step_jacobians(model, jnp.zeros((5, 2, 2)))
    with pytest.raises(ValueError, match="`anchor`"):
        an.jacobian_spectrum(model, xs, anchor="middle")
    with pytest.raises(ValueError, match="0 <= k <= t <= T"):
        an.jacobian_product(model, xs, 3, 2)
    with pytest.raises(ValueError, match="`transient`"):
        an.lyapunov_exponents(model, xs, transient=5)
    with pytest.raises(ValueError, match="`k` must be"):
        an.lyapunov_exponents(model, xs, k=7)
    with pytest.raises(ValueError, match="`method`"):
        an.find_fixed_points(model, jnp.zeros(2), key=key, method="bisect")
