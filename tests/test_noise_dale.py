"""Private noise (the SDE of `CTRNN(noise_std=σ)`) and Dale's law
(`excitatory=`): stationary statistics, one realisation per key across every
gradient method and the online path, exact gradients, signs kept by
parameterisation."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from _gradcheck import check_gradients

import rnnode as rn


def _uncoupled(n, sigma, integrator, key):
    """`n` independent noisy units: `τ dr = -r dt + √(2τ) σ dW` (no weights)."""
    dyn = rn.CTRNN(n, 1, tau=1.0, noise_std=sigma, key=key)
    dyn = eqx.tree_at(lambda d: (d.W, d.U), dyn, (jnp.zeros((n, n)), jnp.zeros((n, 1))))
    return rn.Model(dyn, integrator)


def _variance_check(model, T, burn, sigma, key):
    """The variance of the states after `burn` steps against σ², with a
    tolerance of 4 standard errors of the sample variance of an AR(1) series
    with the model's lag-one correlation (estimated from the same data)."""
    hs, _ = jax.jit(lambda k: model.rollout(jnp.zeros((T, 1)), key=k))(key)
    r = np.asarray(hs[burn:])  # (time, units)
    var = r.var()
    rho = np.mean(r[1:] * r[:-1]) / np.mean(r * r)
    se = var * np.sqrt(2 * (1 + rho**2) / (1 - rho**2) / r.size)
    assert abs(var - sigma**2) < 4 * se, (var, sigma**2, se)
    return var, se


@pytest.mark.parametrize("dt", [0.01, 0.025])
def test_stationary_variance_euler(key, dt):
    """σ is the stationary standard deviation whatever dt (Euler–Maruyama's
    bias, a factor `1/(1 - α/2)`, is below the sampling error here); a noise
    scaled as σ√dt or √α σ would give σ²/2."""
    sigma = 0.3
    model = _uncoupled(1000, sigma, rn.Euler(dt), key)
    _variance_check(model, int(8 / dt), int(3 / dt), sigma, jr.fold_in(key, 1))


def test_stationary_variance_sde_solver(key):
    """With a `Diffrax` SDE solver the step solves the true SDE: at `dt = τ/5`,
    where Euler–Maruyama's variance is 11 % high, ShARK's is σ²."""
    sigma = 0.5
    integ = rn.Diffrax(0.2, solver=diffrax.ShARK())
    model = _uncoupled(64, sigma, integ, key)
    var, _ = _variance_check(model, 250, 20, sigma, jr.fold_in(key, 2))
    euler = sigma**2 / (1 - 0.2 / 2)
    assert abs(var - sigma**2) < abs(var - euler)


def _noisy_model(key, *, excitatory=0.75, density=1.0, form="current"):
    k1, k2 = jr.split(key)
    dyn = rn.CTRNN(
        6,
        2,
        tau=[1.0, 2.0, 0.7, 1.3, 3.0, 1.1],
        learn_tau=True,
        noise_std=0.2,
        excitatory=excitatory,
        autapses=False,
        density=density,
        form=form,
        gain=1.2,
        key=k1,
    )
    return rn.Model(dyn, rn.Euler(0.3), rn.Linear(6, 2, key=k2))


def test_one_realisation_per_key(key):
    """Every method's loss is the same for one key (the forward pass draws the
    same noise), different for another key, and the noise-free loss without;
    the rollout reproduces it, and online RTRL's noise (from its state's key)
    is that of the same steps written out."""
    model = _noisy_model(key)
    xs = jr.normal(jr.fold_in(key, 1), (9, 3, 2))
    ys = jr.normal(jr.fold_in(key, 2), (9, 3, 2))
    k = jr.PRNGKey(7)
    methods = [rn.Autodiff(), rn.BPTT(), rn.RTRL(), rn.RFLO()]
    losses = jax.jit(
        lambda m: [rn.sequence_loss(m, xs, ys, gradient=g, key=k) for g in methods]
    )(model)
    np.testing.assert_allclose(losses, losses[0], rtol=1e-13)
    other = float(rn.sequence_loss(model, xs, ys, key=jr.PRNGKey(8)))
    clean = float(rn.sequence_loss(model, xs, ys))
    assert abs(other - losses[0]) > 1e-3 and abs(clean - losses[0]) > 1e-3
    # the rollout: the sequences of a batch get split(k, B), independent
    hs, outs = model.rollout(xs, key=k)
    direct = jnp.mean(jnp.mean((outs - ys) ** 2, axis=-1))
    np.testing.assert_allclose(direct, losses[0], rtol=1e-13)
    assert not np.allclose(hs[:, 0], hs[:, 1])
    # online: RTRL.step draws each step's noise from the state's key
    # (`step_keys`); the same steps written out with those keys, by jax.grad
    from rnnode.gradients._online import step_keys

    kb = jr.PRNGKey(11)
    noise, k = [], kb
    for _ in range(9):
        k, _, n = step_keys(k)
        noise.append(n)

    def manual(m):
        h, total = m.init_state(), 0.0
        for i in range(9):
            t = jnp.asarray(i * m.dt, h.dtype)
            h = m.step(h, t, xs[i, 0], xs[i, 0], noise[i])
            total = total + jnp.mean((m.output(h) - ys[i, 0]) ** 2) / 9
        return total

    @eqx.filter_jit
    def online(model):
        state = rn.RTRL().init(model, key=kb)
        total, grads = 0.0, None
        for i in range(9):
            state, value, g = rn.RTRL().step(
                model, state, xs[i, 0], ys[i, 0], weight=1 / 9
            )
            total += value
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        return total, grads, eqx.filter_value_and_grad(manual)(model)

    total, grads, (value, ref) = online(model)
    assert abs(value - float(rn.sequence_loss(model, xs[:, 0], ys[:, 0]))) > 1e-4
    np.testing.assert_allclose(total, value, rtol=1e-12)
    np.testing.assert_allclose(grads.dynamics.log_tau, ref.dynamics.log_tau, rtol=1e-9)
    np.testing.assert_allclose(grads.dynamics.W, ref.dynamics.W, rtol=1e-9, atol=1e-14)


def test_exact_methods_agree_under_noise_with_dale(key):
    """Autodiff, BPTT (checkpointed), RTRL structured (Dale's chain, the noise's
    `log τ` term, a sparse mask without autapses): one gradient, equal to
    central differences, for a fixed key (float64, the rate form)."""
    model = _noisy_model(key, form="rate", density=0.7)
    xs = jr.normal(jr.fold_in(key, 1), (8, 2, 2))
    ys = jr.normal(jr.fold_in(key, 2), (8, 2, 2))
    strategies = [rn.BPTT(checkpoints=3), rn.RTRL(structured=True)]
    ref, _ = check_gradients(model, xs, ys, strategies, key=jr.PRNGKey(3))
    assert np.all(np.isfinite(ref)) and np.abs(ref).max() > 0


def test_dale_structured_traces_exact(key):
    """SnAp-2 on a network whose Jacobian pattern is full (dense but for the
    autapses) is exact RTRL, through the unit traces: with Dale's law and noise
    (the current form) it matches `jax.grad`; so does structured RTRL on a
    Dale Elman cell."""
    model = _noisy_model(key, excitatory=0.5)
    xs = jr.normal(jr.fold_in(key, 1), (7, 2, 2))
    ys = jr.normal(jr.fold_in(key, 2), (7, 2, 2))
    check_gradients(model, xs, ys, [rn.SnAp(order=2)], key=jr.PRNGKey(1), num_fd=1)
    k1, k2 = jr.split(key)
    cell = rn.ElmanRNN(5, 2, excitatory=0.6, autapses=False, radius=0.9, key=k1)
    elman = rn.Model(cell, None, rn.Linear(5, 2, key=k2))
    check_gradients(elman, xs, ys, [rn.RTRL(structured=True)], num_fd=1)


def test_dale_signs_survive_training(key):
    """Many large Adam steps move the stored `W̃` through zero, but every
    outgoing weight of an excitatory unit stays >= 0 and of an inhibitory one
    <= 0; no autapse and no masked connection appears."""
    k1, k2 = jr.split(key)
    dyn = rn.CTRNN(
        8, 2, excitatory=0.75, autapses=False, density=0.6, noise_std=0.1, key=k1
    )
    model = rn.Model(dyn, rn.Euler(0.5), rn.Linear(8, 2, key=k2))
    xs = jr.normal(jr.fold_in(key, 1), (10, 4, 2))
    ys = 3.0 * jr.normal(jr.fold_in(key, 2), (10, 4, 2))
    opt = optax.adam(0.3)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)

    @jax.jit
    def step(params, state, k):
        m = eqx.combine(params, static)
        g = eqx.filter_grad(
            lambda m: rn.sequence_loss(m, xs, ys, gradient=rn.BPTT(), key=k)
        )(m)
        g = eqx.filter(g, eqx.is_inexact_array)
        updates, state = opt.update(g, state)
        return optax.apply_updates(params, updates), state

    with jax.numpy_dtype_promotion("standard"):  # optax's step count is int32
        for i in range(40):
            params, state = step(params, state, jr.fold_in(key, 100 + i))
    m = eqx.combine(params, static)
    W = np.asarray(rn.recurrent_weights(m.dynamics))
    s = np.asarray(m.dynamics.dale.signs)
    assert (np.asarray(m.dynamics.W) < 0).any()  # the stored W̃ changed sign...
    assert np.all(W * s[None, :] >= 0)  # ...the weights the network uses did not
    assert np.all(np.diag(W) == 0) and np.all(W[~m.dynamics.mask.array] == 0)
    assert np.abs(W[:, s > 0]).sum() > 0 and np.abs(W[:, s < 0]).sum() > 0


def test_dale_initialisation(key):
    """Song et al.'s initialisation: the set spectral radius, E and I inputs
    balanced on average, signs by column; readout of the excitatory units."""
    dyn = rn.CTRNN(
        100, 3, excitatory=0.8, gain=1.5, autapses=False, observe="excitatory", key=key
    )
    W = np.asarray(rn.recurrent_weights(dyn))
    np.testing.assert_allclose(np.max(np.abs(np.linalg.eigvals(W))), 1.5, rtol=1e-6)
    exc, inh = W[:, :80], W[:, 80:]
    assert np.all(exc >= 0) and np.all(inh <= 0)
    # the expected row sums cancel: the mean total input is small against either
    assert abs(W.sum(axis=1).mean()) < 0.2 * exc.sum(axis=1).mean()
    assert dyn.observe_size == 80 and dyn.observe(jnp.arange(100.0)).shape == (80,)


def test_noise_free_without_key_and_bad_values(key):
    model = _noisy_model(key)
    xs = jnp.ones((5, 2))
    a, _ = model.rollout(xs)
    b, _ = model.rollout(xs)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, model.rollout(xs, key=key)[0])
    with pytest.raises(ValueError, match="noise_std"):
        rn.CTRNN(3, 1, noise_std=-0.1, key=key)
    for bad in (0.0, 1.5, -0.2, True):
        with pytest.raises(ValueError, match="excitatory"):
            rn.CTRNN(3, 1, excitatory=bad, key=key)
    with pytest.raises(ValueError, match="observe"):
        rn.ElmanRNN(3, 1, observe="excitatory", key=key)
    noisy = rn.Model(rn.CTRNN(3, 1, noise_std=0.1, key=key), rn.RK4(0.1))
    with pytest.raises(ValueError, match="RK4"):
        noisy.rollout(xs[:, :1], key=key)
    noisy = rn.Model(rn.CTRNN(3, 1, noise_std=0.1, key=key), rn.Diffrax(0.1))
    with pytest.raises(ValueError, match="SDE solver"):
        noisy.rollout(xs[:, :1], key=key)
