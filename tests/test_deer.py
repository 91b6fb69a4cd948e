"""The trajectory as a fixed point: the linear scan, DEER, quasi-DEER, ELK,
`parallel_rollout` and `analysis.parallelisability` (float64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _zoo import zoo_model
from jax.flatten_util import ravel_pytree

import rnnode as rn
from rnnode._linear_scan import linear_scan, sequential_linear_scan
from rnnode.gradients._elk import kalman_smoother_mean

T = 24


def _flat(tree):
    return ravel_pytree(eqx.filter(tree, eqx.is_inexact_array))[0]


def _lru_stack(key):
    k1, k2, k3, k4 = jr.split(key, 4)
    layers = [rn.LRU(2, 3, key=k1), rn.LRU(2, 3, key=k2)]
    stack = rn.Stack(layers, input_size=2, key=k3)
    return rn.Model(stack, None, rn.Linear(3, 2, key=k4))


def _strong(key, gain=3.0, n=6):
    """`h_t = W tanh(h_{t-1}) + U x_t + b` (a CTRNN stepped by `Euler(dt=1)`),
    strong recurrent weights: many Newton iterations."""
    k1, k2 = jr.split(key)
    dyn = rn.CTRNN(n, 2, gain=gain, key=k1)
    return rn.Model(dyn, rn.Euler(dt=1.0), rn.Linear(n, 2, key=k2))


def _chaotic():
    """The mean-field map `h_t = W tanh(h_{t-1}) + U x_t`, `W ~ N(0, 9/n)`, n = 6,
    and weak inputs: a positive largest Lyapunov exponent (+0.11 per step over
    these 64 steps; small networks are chaotic for some draws only)."""
    k1, k2 = jr.split(jr.PRNGKey(0))
    dyn = rn.CTRNN(6, 2, key=k1)
    W = 3.0 * jr.normal(k2, (6, 6)) / jnp.sqrt(6.0)
    dyn = eqx.tree_at(lambda d: (d.W, d.b), dyn, (W, jnp.zeros(6)))
    return rn.Model(dyn, rn.Euler(dt=1.0)), 0.1 * jr.normal(jr.PRNGKey(3), (64, 2))


# ---------------------------------------------------------------------------------
# The linear scan and the Kalman smoother against direct references.


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_matches_loop(getkey, dense, reverse):
    n = 3
    A = jr.normal(getkey(), (9, n, n) if dense else (9, n))
    b, h0 = jr.normal(getkey(), (9, n)), jr.normal(getkey(), (n,))
    hs = linear_scan(A, b, h0, reverse=reverse)
    h, ref = h0, []
    for t in reversed(range(9)) if reverse else range(9):
        h = (A[t] @ h if dense else A[t] * h) + b[t]
        ref.append(h)
    ref = np.stack(ref[::-1] if reverse else ref)
    np.testing.assert_allclose(hs, ref, rtol=1e-12, atol=1e-12)
    seq = sequential_linear_scan(A, b, h0, reverse=reverse)
    np.testing.assert_allclose(seq, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dense", [False, True])
def test_kalman_smoother_is_the_least_squares_step(getkey, dense):
    """The ELK step minimises Σ|h_t − A_t h_{t-1} − b_t|² + λ Σ|h_t − y_t|²: the
    normal equations, solved densely."""
    Tn, n, lam = 6, 3, 0.7
    A = 0.6 * jr.normal(getkey(), (Tn, n, n) if dense else (Tn, n))
    b, y, h0 = (jr.normal(getkey(), s) for s in ((Tn, n), (Tn, n), (n,)))
    Am = A if dense else jax.vmap(jnp.diag)(A)
    L = np.eye(Tn * n)
    for t in range(1, Tn):
        L[t * n : (t + 1) * n, (t - 1) * n : t * n] = -Am[t]
    rhs = np.asarray(b.at[0].add(Am[0] @ h0)).ravel()
    H = L.T @ L + lam * np.eye(Tn * n)
    ref = np.linalg.solve(H, L.T @ rhs + lam * np.asarray(y).ravel()).reshape(Tn, n)
    np.testing.assert_allclose(kalman_smoother_mean(A, b, y, h0, lam), ref, atol=1e-12)


# ---------------------------------------------------------------------------------
# Trajectory and gradient for every kind of step.


def _check(model, xs, ys, methods):
    """Every method's trajectory against the sequential rollout (1e-10) and its
    loss gradient against `Autodiff()` (1e-8), compiled once."""

    @eqx.filter_jit
    def run(model):
        sols = [rn.parallel_rollout(model, xs, m) for m in methods]
        grads = [
            eqx.filter_value_and_grad(
                lambda m, g=g: rn.sequence_loss(m, xs, ys, gradient=g)
            )(model)
            for g in (rn.Autodiff(), *methods)
        ]
        return model.rollout(xs)[0], sols, grads

    hs, sols, grads = run(model)
    for sol in sols:
        assert bool(jnp.all(sol.result == rn.RESULTS.successful))
        assert int(jnp.max(sol.num_steps)) <= xs.shape[0]  # never more than T
        np.testing.assert_allclose(sol.value, hs, atol=1e-10, rtol=0)
    (loss_ref, g_ref), *rest = grads
    g_ref = _flat(g_ref)
    for loss, g in rest:
        np.testing.assert_allclose(loss, loss_ref, rtol=1e-10)
        np.testing.assert_allclose(
            _flat(g), g_ref, rtol=1e-8, atol=1e-8 * np.abs(g_ref).max()
        )


@pytest.mark.parametrize(
    "name", ["elman", "lstm", "ctrnn_euler", "ctrnn_rk4", "lru_stack"]
)
def test_trajectory_and_gradient(getkey, name):
    model = _lru_stack(getkey()) if name == "lru_stack" else zoo_model(name, getkey())
    xs, ys = jr.normal(getkey(), (T, 2)), jr.normal(getkey(), (T, 2))
    _check(model, xs, ys, [rn.DEER()])


def test_batch_and_quasi_gradient(getkey):
    """A batch (by `vmap`), a learnt initial state (the zoo's GRU), and the quasi
    adjoint iteration with the closed-form diagonal."""
    xs, ys = jr.normal(getkey(), (T, 2, 2)), jr.normal(getkey(), (T, 2, 2))
    _check(zoo_model("gru", getkey()), xs, ys, [rn.DEER(), rn.DEER(quasi=True)])


def test_h0_and_input_gradients(getkey):
    """Cotangents also reach a given initial state and the inputs."""
    model = zoo_model("ctrnn_rk4", getkey())
    xs, ys = jr.normal(getkey(), (T, 2)), jr.normal(getkey(), (T, 2))
    h0 = jr.normal(getkey(), (model.state_size,))

    def grads(gradient):
        f = lambda h0, xs: rn.sequence_loss(model, xs, ys, gradient=gradient, h0=h0)
        return jax.jit(jax.grad(f, argnums=(0, 1)))(h0, xs)

    ref = grads(rn.Autodiff())
    # quasi: the diagonal by `jacfwd` (no closed form for RK4)
    for method in (rn.DEER(), rn.DEER(quasi=True)):
        for a, b in zip(grads(method), ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------------
# Convergence: quadratic for Newton, the same fixed point for every variant, at
# most T iterations even for chaotic dynamics.


def test_newton_converges_quadratically_and_damped_does_not(getkey):
    model = _strong(getkey(), gain=1.5)
    xs = jr.normal(getkey(), (T, 2))
    newton = rn.parallel_rollout(model, xs, rn.DEER()).residuals
    damped = rn.parallel_rollout(model, xs, rn.DEER(damping=0.5)).residuals

    def ratios(r):  # r_{k+1} / r_k² where both lie in the asymptotic range
        r = np.asarray(r)
        r = r[np.isfinite(r)]
        keep = (r[:-1] < 0.2) & (r[1:] > 1e-13)
        return r[1:][keep] / r[:-1][keep] ** 2

    q = ratios(newton)
    assert q.size >= 2 and q.max() < 10.0, q  # |r_{k+1}| ≤ C |r_k|², C = O(1)
    assert ratios(damped).max() > 100.0  # linear convergence: no such bound


def test_every_variant_reaches_the_same_trajectory(getkey):
    model = zoo_model("gru", getkey())
    xs = jr.normal(getkey(), (T, 2))
    hs, _ = model.rollout(xs)
    methods = [
        rn.DEER(damping=0.5),  # the damped form (also quasi: the benchmarks)
        rn.ELK(),
        rn.ELK(quasi=True, penalty=0.1, max_steps=200),
    ]
    solve = eqx.filter_jit(lambda m: [rn.parallel_rollout(model, xs, m) for m in m])
    for method, sol in zip(methods, solve(methods), strict=True):
        assert sol.result == rn.RESULTS.successful, method
        np.testing.assert_allclose(sol.value, hs, atol=1e-10, err_msg=repr(method))


def test_chaotic_network_converges_within_T():
    model, xs = _chaotic()
    sol = rn.parallel_rollout(model, xs, rn.DEER())
    assert sol.result == rn.RESULTS.successful
    assert 1 < int(sol.num_steps) <= xs.shape[0]  # many, but at most T
    np.testing.assert_allclose(sol.value, model.rollout(xs)[0], atol=1e-10)


# ---------------------------------------------------------------------------------
# Failure is never silent.


def test_non_convergence_is_reported_and_raises(getkey):
    model = _strong(getkey(), gain=3.0)
    xs, ys = jr.normal(getkey(), (T, 2)), jr.normal(getkey(), (T, 2))
    sol = rn.parallel_rollout(model, xs, rn.DEER(max_steps=2))
    assert sol.result == rn.RESULTS.max_steps_reached
    assert int(sol.num_steps) == 2 and float(sol.residual) > 1e-3
    assert np.isnan(sol.residuals[3:]).all() and np.isfinite(sol.residuals[:3]).all()
    with pytest.raises(eqx.EquinoxRuntimeError, match="DEER: Newton on the traj"):
        rn.sequence_loss(model, xs, ys, gradient=rn.DEER(max_steps=2))
    quiet = rn.DEER(max_steps=2, throw=False)
    assert np.isfinite(rn.sequence_loss(model, xs, ys, gradient=quiet))


def test_bad_options():
    with pytest.raises(ValueError, match="damping"):
        rn.DEER(damping=1.5)
    with pytest.raises(ValueError, match="max_steps"):
        rn.DEER(max_steps=0)
    with pytest.raises(ValueError, match="penalty"):
        rn.ELK(penalty=-1.0)
    with pytest.raises(ValueError, match="rtol"):
        rn.ELK(rtol=float("nan"))


def test_parallel_rollout_rejects_other_methods(getkey):
    model = zoo_model("elman", getkey())
    with pytest.raises(ValueError, match="DEER"):
        rn.parallel_rollout(model, jnp.zeros((T, 2)), rn.BPTT())


# ---------------------------------------------------------------------------------
# Will it pay off?


def test_parallelisability_follows_the_lyapunov_exponent(getkey):
    stable = zoo_model("gru", getkey())
    chaotic, xs = _chaotic()
    p = rn.analysis.parallelisability(stable, xs, prefix=16)
    ref = rn.analysis.lyapunov_exponents(stable, xs, k=1).per_step[0]
    assert p.lyapunov == pytest.approx(float(ref), rel=1e-12) and p.lyapunov < 0
    assert p.predicted == p.prefix_iterations  # bounded in T
    assert p.converged and p.iterations <= p.predicted + 2
    q = rn.analysis.parallelisability(chaotic, xs, prefix=16)
    assert q.lyapunov > 0
    assert q.predicted == min(64, -(-q.prefix_iterations * 64 // 16))  # grows ∝ T
    assert q.iterations > p.iterations
    assert p.scan_depth == 6 and p.verdict == (
        "newton" if 6 * p.predicted < 64 else "scan"
    )
