"""The online API for protocols and for new rules: a batch of streams equals the
streams run one by one, `reset` equals a fresh `init` with the running key, a
seed is data (no recompilation), the docs' code runs (a rule written on the
public base equals the built-in one it copies), and the one table of methods
and cells is what configs, analysis and the docs read."""

import pathlib
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import rnnode as rn

M, K, S = 2, 2, 3
DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "online_api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)


def flat(g):
    return jnp.concatenate([a.ravel() for a in jax.tree.leaves(g)])


def elman(key):
    k1, k2 = jr.split(key)
    return rn.Model(rn.ElmanRNN(3, M, key=k1), None, rn.Linear(3, K, key=k2))


@pytest.mark.parametrize("name", ["rtrl", "uoro", "layer_local"])
def test_batched_streams_equal_the_streams_one_by_one(name, getkey):
    """Two steps of `S` streams at once: the loss and the gradient are the means
    of the streams run one by one, each with its own key split from the run's;
    the states are theirs, stream by stream."""
    method = rn.make_gradient(name)
    if name == "layer_local":
        model = rn.Model(
            rn.LRU(3, M, key=getkey()), None, rn.Linear(M, K, key=getkey())
        )
    else:
        model = elman(getkey())
    key = jr.PRNGKey(5)
    xs = jr.normal(getkey(), (2, S, M))
    ys = jr.normal(getkey(), (2, S, K))
    w = jnp.array([0.5, 1.0, 2.0])

    @eqx.filter_jit
    def both(model, xs, ys):
        def run(state, xs, ys, w):
            def body(state, xyw):
                x, y, a = xyw
                state, loss, g = method.step(model, state, x, y, weight=a)
                return state, (loss, flat(g))

            return jax.lax.scan(body, state, (xs, ys, w))

        batched = run(method.init(model, key=key, streams=S), xs, ys, jnp.stack([w, w]))
        one = jax.vmap(lambda k: method.init(model, key=k))(jr.split(key, S))
        singles = jax.lax.map(
            lambda a: run(a[0], a[1], a[2], jnp.stack([a[3], a[3]])),
            (one, jnp.swapaxes(xs, 0, 1), jnp.swapaxes(ys, 0, 1), w),
        )
        return batched, singles

    (state, (loss, g)), (states, (losses, gs)) = both(model, xs, ys)
    np.testing.assert_allclose(loss, losses.mean(0), rtol=1e-12)
    np.testing.assert_allclose(g, gs.mean(0), rtol=1e-12, atol=1e-15)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(states), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_reset_is_a_fresh_init_with_the_running_key(getkey):
    model = elman(getkey())
    uoro = rn.UORO()
    x, y = jnp.ones((S, M)), jnp.ones((S, K))
    state = uoro.init(model, key=jr.PRNGKey(1), streams=S)
    state, _, _ = eqx.filter_jit(uoro.step)(model, state, x, y)
    reset = uoro.reset(model, state)
    fresh = jax.vmap(lambda k: uoro.init(model, key=k))(state.key)
    for a, b in zip(jax.tree.leaves(reset), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(a, b)
    # the randomness goes on: the key is not the one the run started with
    assert not jnp.array_equal(
        reset.key, uoro.init(model, key=jr.PRNGKey(1), streams=S).key
    )
    # some streams only
    some = uoro.reset(model, state, where=jnp.array([True, False, True]))
    np.testing.assert_array_equal(some.h[1], state.h[1])
    np.testing.assert_array_equal(some.trace[0][1], state.trace[0][1])
    np.testing.assert_array_equal(some.h[0], fresh.h[0])
    # one stream; exact RTRL's learnt initial state starts at the identity again
    gru = rn.Model(
        rn.GRU(3, M, key=getkey()),
        None,
        rn.Linear(3, K, key=getkey()),
        learn_initial_state=True,
    )
    rtrl = rn.RTRL()
    s1, _, _ = eqx.filter_jit(rtrl.step)(gru, rtrl.init(gru), x[0], y[0])
    again = rtrl.reset(gru, s1)
    np.testing.assert_array_equal(again.trace.initial_state, jnp.eye(3))
    np.testing.assert_array_equal(again.h, gru.init_state())
    with pytest.raises(
        ValueError, match=r"reset\(where=\.\.\.\)` is for a batch of streams"
    ):
        rtrl.reset(gru, s1, where=jnp.array([True]))
    with pytest.raises(ValueError, match=r"`streams` must be a positive integer"):
        uoro.init(model, streams=0)
    with pytest.raises(ValueError, match=r"`x_t` must have shape \(3, 2\)"):
        uoro.step(model, state, x[0], y[0])


def test_a_seed_is_data_not_a_recompilation(getkey):
    model = elman(getkey())
    x, y = jnp.ones(M), jnp.ones(K)
    traces = []

    @eqx.filter_jit
    def grads(method, model):
        traces.append(None)
        return method.step(model, method.init(model), x, y)[2]

    g = [flat(grads(rn.UORO(seed=s), model)) for s in (0, 1)]
    h = [flat(grads(rn.RFLO(feedback="random", seed=s), model)) for s in (0, 1)]
    assert len(traces) == 2  # one per class, not per seed
    assert not jnp.allclose(g[0], g[1]) and not jnp.allclose(h[0], h[1])
    np.testing.assert_array_equal(g[0], flat(grads(rn.UORO(), model)))


def test_the_docs_code_runs_and_the_rule_equals_the_builtin():
    """`docs/online_api.md`: the protocol (streams, resets, optax) and the rule of
    40 lines, which the block itself checks against `rn.RFLO` (trace_tau given,
    and trace_tau = τ, Murray's RFLO)."""
    assert len(BLOCKS) == 2
    rule = BLOCKS[1]
    start = rule.index("class TraceTauRFLO")
    end = rule.index("\n\n\ncell =")
    assert len(rule[start:end].splitlines()) < 40
    for i, block in enumerate(BLOCKS):
        exec(compile(block, f"docs/online_api.md[python block {i}]", "exec"), {})


def test_rflo_trace_tau(getkey):
    """`RFLO(trace_tau=τ_e)` on an Elman network (no leak of its own): the trace
    `e_t = (1 - 1/τ_e) e_{t-1} + φ'(z_t) ⊗ h_{t-1}`, written out here."""
    model = elman(getkey())
    xs, ys = jr.normal(getkey(), (4, M)), jr.normal(getkey(), (4, K))
    a = 1 - 1 / 2.5
    W, U, b = model.dynamics.W, model.dynamics.U, model.dynamics.b
    V, c = model.readout.weight, model.readout.bias
    h, e, g = jnp.zeros(3), jnp.zeros((3, 3)), jnp.zeros((3, 3))
    for x, y in zip(xs, ys, strict=True):
        z = W @ h + U @ x + b
        e = a * e + (1 - jnp.tanh(z) ** 2)[:, None] * h[None, :]
        h = jnp.tanh(z)
        dh = V.T @ (2 * (V @ h + c - y) / K)
        g = g + dh[:, None] * e / 4
    got = eqx.filter_grad(
        lambda m: rn.sequence_loss(m, xs, ys, gradient=rn.RFLO(trace_tau=2.5))
    )(model)
    np.testing.assert_allclose(got.dynamics.W, g, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match=r"`RFLO\(trace_tau=0\)`: `trace_tau` must"):
        rn.RFLO(trace_tau=0)
    with pytest.raises(ValueError, match=r"must be at least the step"):
        rn.RFLO(trace_tau=0.5).init(model)


def test_one_table_of_methods_and_cells():
    # the configs' names, the online ones, the studies' variants
    assert set(rn.ONLINE_GRADIENTS) == {
        "rtrl",
        "snap",
        "uoro",
        "kf_rtrl",
        "rflo",
        "eprop",
        "layer_local",
    }
    assert set(rn.analysis.alignment_methods()) == set(rn.GRADIENT_VARIANTS)
    assert isinstance(rn.make_gradient("SnAp-2"), rn.SnAp)
    assert rn.make_gradient("SnAp-2").order == 2
    with pytest.raises(ValueError, match="unknown gradient method 'snap3'"):
        rn.make_gradient("snap3")
    # every online method's class is in the coverage table, and the docs show it
    online = {type(rn.make_gradient(n)).__name__ for n in rn.ONLINE_GRADIENTS}
    assert online == set(rn.ONLINE_COVERAGE)
    text = DOCS.read_text()
    table = text.split("<!-- coverage-table -->\n")[1].split("<!--")[0].strip()
    assert table == rn.coverage_table()


def test_train_online_streams_and_resets(tmp_path):
    """`train.online` runs `batch_size` parallel streams through the method's
    batched `step`, and `train.reset_every` washes them out: every 5 steps of a
    5-step stream changes nothing (the streams restart then anyway), every 2
    steps changes the run; resets without `train.online` are refused."""
    from rnnode.train import ConfigError, load_run, train, validate_config

    def run(name, reset_every):
        raw = {
            "task": {
                "name": "sine",
                "options": {"num_steps": 5, "num_train": 4, "num_test": 2},
            },
            "model": {"dynamics": "elman", "hidden_size": 3},
            "gradient": {"name": "uoro"},
            "train": {
                "online": True,
                "batch_size": 2,
                "steps": 6,
                "steps_per_call": 6,
                "eval_every": 6,
                "checkpoint_every": 6,
                "reset_every": reset_every,
            },
            "out_dir": str(tmp_path / name),
        }
        assert train(validate_config(raw), progress=False)["status"] == "finished"
        model, _, _ = load_run(tmp_path / name)
        return flat(eqx.filter(model, eqx.is_inexact_array))

    plain, five, two = run("plain", None), run("five", 5), run("two", 2)
    np.testing.assert_array_equal(plain, five)
    assert not np.allclose(plain, two)
    with pytest.raises(ConfigError, match="train.reset_every: resets are for online"):
        validate_config({"task": {"name": "sine"}, "train": {"reset_every": 3}})
