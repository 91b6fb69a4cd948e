"""Cells against NumPy implementations of their equations; rollouts under jit and
vmap against a plain Python loop; sequence_loss and weights; argument checks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from _zoo import rollout_models

import rnnode as rn


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_elman_matches_numpy(key):
    cell = rn.ElmanRNN(5, 3, key=key)
    readout = rn.Linear(5, 2, key=jr.fold_in(key, 1))
    h, x = np.random.default_rng(0).normal(size=(2, 5))[0], np.arange(3.0) / 3
    W, U, b = (np.asarray(a) for a in (cell.W, cell.U, cell.b))
    expected = np.tanh(b + W @ h + U @ x)
    np.testing.assert_allclose(
        cell(jnp.asarray(h), jnp.asarray(x)), expected, rtol=1e-13
    )
    V, c = np.asarray(readout.weight), np.asarray(readout.bias)
    np.testing.assert_allclose(
        readout(jnp.asarray(expected)), c + V @ expected, rtol=1e-13
    )


def test_lstm_matches_numpy(key):
    n, m = 4, 3
    cell = rn.LSTM(n, m, forget_bias=1.0, key=key)
    rng = np.random.default_rng(1)
    h, c, x = rng.normal(size=n), rng.normal(size=n), rng.normal(size=m)
    Wh, Wx, b = (np.asarray(a) for a in (cell.W_h, cell.W_x, cell.b))
    z = Wh @ h + Wx @ x + b
    i, f, g, o = (
        _sigmoid(z[:n]),
        _sigmoid(z[n : 2 * n]),
        np.tanh(z[2 * n : 3 * n]),
        _sigmoid(z[3 * n :]),
    )
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    out = cell(jnp.asarray(np.concatenate([h, c])), jnp.asarray(x))
    np.testing.assert_allclose(out, np.concatenate([h_new, c_new]), rtol=1e-13)
    np.testing.assert_allclose(cell.observe(out), h_new, rtol=1e-13)


def test_gru_matches_numpy(key):
    n, m = 4, 2
    cell = rn.GRU(n, m, key=key)
    rng = np.random.default_rng(2)
    h, x = rng.normal(size=n), rng.normal(size=m)
    Wh, Wx, bh, bx = (np.asarray(a) for a in (cell.W_h, cell.W_x, cell.b_h, cell.b_x))
    gx, gh = Wx @ x + bx, Wh @ h + bh
    r = _sigmoid(gx[:n] + gh[:n])
    z = _sigmoid(gx[n : 2 * n] + gh[n : 2 * n])
    cand = np.tanh(gx[2 * n :] + r * gh[2 * n :])
    np.testing.assert_allclose(
        cell(jnp.asarray(h), jnp.asarray(x)), (1 - z) * cand + z * h, rtol=1e-13
    )


def test_ctrnn_vector_field(key):
    cell = rn.CTRNN(3, 2, tau=[1.0, 2.0, 0.5], activation="relu", key=key)
    r, x = jnp.array([0.3, -0.2, 1.0]), jnp.array([1.0, -1.0])
    W, U, b = (np.asarray(a) for a in (cell.W, cell.U, cell.b))
    expected = (-r + W @ np.maximum(r, 0) + U @ x + b) / np.array([1.0, 2.0, 0.5])
    np.testing.assert_allclose(cell(0.0, r, x), expected, rtol=1e-13)


def test_oscillator_parameters_positive_and_harmonic():
    osc = rn.DampedOscillator(mass=2.0, damping=0.0, stiffness=8.0)
    assert osc.log_damping is None and float(osc.damping) == 0.0
    np.testing.assert_allclose(
        osc(0.0, jnp.array([1.0, 0.5]), jnp.array([0.0])), [0.5, -4.0]
    )


@pytest.mark.parametrize("name", ["ctrnn", "elman", "lstm", "gru"])
def test_rollout_jit_vmap_match_python_loop(key, name):
    model = rollout_models(key)[name]
    xs = jr.normal(jr.fold_in(key, 7), (12, 3, 2))
    hs, outs = eqx.filter_jit(lambda m, x: m.rollout(x))(model, xs)
    assert hs.shape == (12, 3, model.state_size) and outs.shape == (12, 3, 1)
    for b in range(3):
        h = model.init_state()
        for t in range(12):
            x_next = xs[min(t + 1, 11), b]
            h = model.step(h, model.dt * t, xs[t, b], x_next)
            np.testing.assert_allclose(hs[t, b], h, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(
                outs[t, b], model.output(h), rtol=1e-12, atol=1e-14
            )
    hs_vmap, _ = jax.vmap(model.rollout, in_axes=1, out_axes=1)(xs)
    np.testing.assert_allclose(hs_vmap, hs, rtol=1e-12)


@pytest.mark.parametrize("name", ["ctrnn", "elman"])
def test_sequence_inputs_equal_step_inputs(key, name):
    """`sequence_inputs(xs).at(i)` (built inside a loop) is row `i` of the arrays
    `step_inputs` builds (the inputs bit for bit, the time to rounding), also
    under `jit` with a traced index."""
    model = rollout_models(key)[name]
    xs = jr.normal(jr.fold_in(key, 3), (7, 2))
    arrays = model.step_inputs(xs, 0.3)
    lazy = model.sequence_inputs(xs, 0.3)
    assert lazy.length() == 7 and len(arrays) == 3  # no key: noise-free
    noisy = model.step_inputs(xs, 0.3, key), model.sequence_inputs(xs, 0.3, key)
    at = jax.jit(lambda i: lazy.at(i))
    for i in range(7):
        t, x, x_next = at(i)
        np.testing.assert_allclose(t, arrays[0][i], rtol=1e-15)
        np.testing.assert_array_equal(x, arrays[1][i])
        np.testing.assert_array_equal(x_next, arrays[2][i])
        # the noise key of step i: fold_in(key, i), the same both ways
        np.testing.assert_array_equal(noisy[1].at(i)[3], noisy[0][3][i])
        np.testing.assert_array_equal(noisy[0][3][i], jr.fold_in(key, i))
    np.testing.assert_array_equal(at(6)[2], xs[6])  # the last x_next is x_{T-1}
    np.testing.assert_allclose(arrays[0][3], 0.3 + 3 * model.dt, rtol=1e-15)


def test_rollout_given_and_learnable_initial_state(key):
    cell = rn.ElmanRNN(3, 1, key=key)
    h0 = jnp.array([0.1, -0.2, 0.3])
    xs = jnp.ones((5, 1))
    given = rn.Model(cell, initial_state=h0)
    hs, _ = given.rollout(xs)
    np.testing.assert_allclose(hs[0], cell(h0, xs[0]))
    ys = jnp.zeros((5, 3))
    frozen = eqx.filter_grad(lambda m: rn.sequence_loss(m, xs, ys))(given)
    np.testing.assert_array_equal(frozen.initial_state, 0.0)
    learnt = rn.Model(cell, initial_state=h0, learn_initial_state=True)
    g = eqx.filter_grad(lambda m: rn.sequence_loss(m, xs, ys))(learnt)
    assert float(jnp.linalg.norm(g.initial_state)) > 1e-3


def test_compile_time_does_not_grow_with_T(key):
    model = rollout_models(key)["elman"]
    lowered = [
        jax.jit(lambda x: model.rollout(x)).lower(jnp.zeros((T, 2))).as_text()
        for T in (10, 1000)
    ]
    # One scan body: the program has the same operations whatever T (only the
    # shapes' digits differ), so compile time does not grow with T.
    assert lowered[0].count("\n") == lowered[1].count("\n")
    assert lowered[0] == lowered[1].replace("1000", "10")


def test_sequence_loss_matches_manual(key):
    model = rollout_models(key)["ctrnn"]
    xs = jr.normal(key, (10, 3, 2))
    ys = jr.normal(jr.fold_in(key, 1), (10, 3, 1))
    _, outs = model.rollout(xs)
    per_step = np.mean((np.asarray(outs) - np.asarray(ys)) ** 2, axis=-1)  # (T, B)
    np.testing.assert_allclose(
        rn.sequence_loss(model, xs, ys), per_step.mean(), rtol=1e-12
    )
    w = rn.integral_weights(10, model.dt)
    np.testing.assert_allclose(
        rn.sequence_loss(model, xs, ys, weights=w),
        (0.1 * per_step.sum(0)).mean(),
        rtol=1e-12,
    )
    last = rn.last_step_weights(10)
    np.testing.assert_allclose(
        rn.sequence_loss(model, xs, ys, weights=last), per_step[-1].mean(), rtol=1e-12
    )
    mask = np.zeros((10, 3))
    mask[[2, 5], :] = 1
    np.testing.assert_allclose(
        rn.sequence_loss(model, xs, ys, weights=rn.mask_weights(mask)),
        per_step[[2, 5]].mean(),
        rtol=1e-12,
    )


def test_cross_entropy_at_last_step(key):
    model = rn.Model(rn.ElmanRNN(4, 2, key=key), readout=rn.Linear(4, 3, key=key))
    xs = jr.normal(key, (6, 5, 2))
    labels = jnp.tile(jnp.array([0, 1, 2, 1, 0]), (6, 1))
    _, outs = model.rollout(xs)
    logp = jax.nn.log_softmax(outs[-1], axis=-1)
    expected = -np.mean(np.asarray(logp)[np.arange(5), np.asarray(labels[-1])])
    got = rn.sequence_loss(
        model, xs, labels, loss=rn.cross_entropy, weights=rn.last_step_weights(6)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_bad_arguments(key):
    with pytest.raises(ValueError, match="activation"):
        rn.CTRNN(3, 1, activation="swishy", key=key)
    with pytest.raises(ValueError, match="hidden_size"):
        rn.ElmanRNN(-2, 1, key=key)
    with pytest.raises(ValueError, match="tau"):
        rn.CTRNN(3, 1, tau=-1.0, key=key)
    with pytest.raises(ValueError, match="mass"):
        rn.DampedOscillator(mass=-1.0)
    with pytest.raises(ValueError, match="integrator"):
        rn.Model(rn.CTRNN(3, 1, key=key))
    with pytest.raises(ValueError, match="integrator=None"):
        rn.Model(rn.ElmanRNN(3, 1, key=key), rn.Euler(dt=0.1))
    model = rn.Model(rn.ElmanRNN(3, 2, key=key))
    with pytest.raises(ValueError, match="input_size"):
        model.rollout(jnp.zeros((5, 4, 3)))
    with pytest.raises(ValueError, match="time-major"):
        model.rollout(jnp.zeros((5,)))
    with pytest.raises(ValueError, match="leading"):
        rn.sequence_loss(model, jnp.zeros((5, 2)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="weights"):
        rn.sequence_loss(
            model, jnp.zeros((5, 2)), jnp.zeros((5, 3)), weights=jnp.ones(4)
        )
    with pytest.raises(ValueError, match="initial_state"):
        rn.Model(rn.ElmanRNN(3, 2, key=key), initial_state=jnp.zeros(2))
