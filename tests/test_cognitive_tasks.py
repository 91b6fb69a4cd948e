"""The cognitive tasks: trials against a direct per-trial construction, timing,
cost masks, metrics, bad options, and (when NeuroGym imports) NeuroGym's own
trials."""

import numpy as np
import pydantic
import pytest

from rnnode.data import TASK_OPTIONS, make_task, responses

NOISELESS = {"sigma_in": 0.0, "num_train": 24, "num_test": 8}


def _trial_steps(c, i, dt):
    """The periods of trial `i` as step ranges, from its condition record."""
    names = [k[len("start_") :] for k in c if k.startswith("start_")]
    starts = [int(c[f"start_{p}"][i]) for p in names]
    stops = starts[1:] + [int(c["end"][i])]
    return dict(zip(names, zip(starts, stops, strict=True), strict=True))


def _weights(T, periods, response, end, dt, grace=100.0, factor=5.0):
    w = np.zeros(T)
    w[:end] = 1.0
    w[: int(grace // dt)] = 0.0
    a, b = periods[response]
    w[a:b] *= factor
    return w / w.sum()


def _check_common(task, trial_inputs, response="decision"):
    """Each trial built by hand, step by step, against the task's arrays."""
    s = task.train
    c = s.conditions
    T = s.num_steps
    for i in range(s.num_sequences):
        per = _trial_steps(c, i, task.dt)
        end = int(c["end"][i])
        x = np.zeros_like(s.xs[:, i])
        y = np.zeros(T, dtype=np.int64)
        for t in range(end):
            x[t, 0] = 1.0 if t < per[response][0] else 0.0
        trial_inputs(x, y, per, c, i)
        np.testing.assert_allclose(s.xs[:, i], x, atol=1e-12)
        np.testing.assert_array_equal(s.ys[:, i], y)
        np.testing.assert_allclose(
            s.weights[:, i], _weights(T, per, response, end, task.dt), rtol=1e-12
        )


def test_decision_trials_direct():
    task = make_task("decision", {**NOISELESS, "timing": {"stimulus": 300}})

    def build(x, y, per, c, i):
        coh, truth = c["coherence"][i], c["ground_truth"][i]
        theta = 0.0 if truth == 1 else np.pi
        a, b = per["stimulus"]
        x[a:b, 1] = np.cos(0.0 - theta) * coh / 200 + 0.5
        x[a:b, 2] = np.cos(np.pi - theta) * coh / 200 + 0.5
        a, b = per["decision"]
        y[a:b] = truth
        assert c["signed_coherence"][i] == (coh if truth == 1 else -coh)

    _check_common(task, build)
    assert task.train.num_steps == (100 + 300 + 100) // 20


@pytest.mark.parametrize("coding", ["signed", "ring"])
def test_context_trials_direct(coding):
    task = make_task(
        "context",
        {**NOISELESS, "coding": coding, "timing": {"delay": [100, 200, 300]}},
    )

    def build(x, y, per, c, i):
        k = c["context"][i]
        streams = [c["coherence_1"][i], c["coherence_2"][i]]
        rel = streams[k - 1]
        assert c["relevant_coherence"][i] == rel
        assert c["irrelevant_coherence"][i] == streams[2 - k]
        truth = 1 if rel > 0 else 2
        assert c["ground_truth"][i] == truth
        a, b = per["stimulus"]
        for j, coh in enumerate(streams):
            if coding == "signed":
                x[a:b, 1 + j] = coh / 100
            else:
                x[a:b, 1 + 2 * j] = abs(coh) / 200 * np.sign(coh) + 0.5
                x[a:b, 2 + 2 * j] = -abs(coh) / 200 * np.sign(coh) + 0.5
        x[: int(c["end"][i]), -3 + k] = 1.0
        a, b = per["decision"]
        y[a:b] = truth

    _check_common(task, build)
    # the delay is drawn from the list, floored to whole steps
    delays = (
        task.train.conditions["start_decision"] - task.train.conditions["start_delay"]
    )
    assert set(delays.tolist()) <= {5, 10, 15} and len(set(delays.tolist())) > 1


def test_delay_match_go_nogo_trials_direct():
    task = make_task("delay_match", NOISELESS)

    def build(x, y, per, c, i):
        for period, which in (("sample", "sample"), ("test", "test")):
            a, b = per[period]
            x[a:b, 1] = 1.0 if c[which][i] == 1 else 0.0
            x[a:b, 2] = 0.0 if c[which][i] == 1 else 1.0
        match = c["sample"][i] == c["test"][i]
        assert c["ground_truth"][i] == (1 if match else 2)
        a, b = per["decision"]
        y[a:b] = c["ground_truth"][i]

    _check_common(task, build)
    task = make_task("go_nogo", NOISELESS)

    def build_gng(x, y, per, c, i):
        a, b = per["stimulus"]
        x[a:b, 1 + c["ground_truth"][i]] = 1.0
        a, b = per["decision"]
        y[a:b] = c["ground_truth"][i]

    _check_common(task, build_gng)


def test_ready_set_go_trials_direct():
    task = make_task("ready_set_go", {**NOISELESS, "gain": 1.5})

    def build(x, y, per, c, i):
        for j, p in ((1, "ready"), (2, "set")):
            a, b = per[p]
            x[a:b, j] = 1.0
        measure = (per["measure"][1] - per["measure"][0]) * 20.0
        assert c["measure_ms"][i] == measure and c["target_ms"][i] == 1.5 * measure
        a, b = per["production"]
        assert b - a == int(2 * 1.5 * measure / 20 + 1e-9)
        go = a + int(1.5 * measure / 20 + 1e-9)
        y[go:b] = 1

    _check_common(task, build, response="production")


def test_input_noise_scale():
    # sigma_in / sqrt(dt) per step, in the stimulus period only; the sample
    # standard deviation of ~n values is within a few of its standard errors
    for dt in (10.0, 40.0):
        o = {"sigma_in": 0.5, "dt": dt, "num_train": 400, "num_test": 1, "cohs": [0]}
        s = make_task("decision", o).train
        stim = np.arange(s.num_steps)[:, None] >= s.conditions["start_stimulus"]
        stim &= np.arange(s.num_steps)[:, None] < s.conditions["start_delay"]
        z = s.xs[..., 1][stim] - 0.5
        expected = 0.5 / np.sqrt(dt)
        assert abs(z.std() / expected - 1) < 5 / np.sqrt(2 * z.size)
        assert np.all(s.xs[..., 1][~stim] == 0)


def test_scoring_neurogym_rules():
    """Perfect outputs score 1; a fixation break or a wrong choice scores 0;
    the psychometric ordering and the context slopes follow the conditions."""
    task = make_task("context", {**NOISELESS, "num_test": 400})
    s = task.test
    perfect = 10.0 * np.eye(3)[s.ys]
    m = task.metrics(perfect, s)
    assert m["accuracy"] == 1.0 and m["fixation_break_rate"] == 0.0
    for k in (1, 2):
        assert m[f"slope_ratio_context{k}"] > 10  # choices ignore the other stream
    broken = perfect.copy()
    first = int(s.conditions["start_stimulus"][0])
    broken[first, 0] = [0.0, 20.0, 0.0]
    r = responses(broken, s)
    assert r["broke_fixation"][0] and not r["broke_fixation"][1:].any()
    assert task.metrics(broken, s)["accuracy"] == pytest.approx(1 - 1 / 400)
    # choosing by the irrelevant stream inverts the ratio
    irr = s.conditions["irrelevant_coherence"]
    wrong = 10.0 * np.eye(3)[np.where(s.ys > 0, np.where(irr > 0, 1, 2), 0)]
    m = task.metrics(wrong, s)
    assert m["slope_ratio_context1"] < 0.1 and m["slope_ratio_context2"] < 0.1


def test_ready_set_go_metrics():
    task = make_task("ready_set_go", NOISELESS)
    s = task.test
    m = task.metrics(10.0 * np.eye(2)[s.ys], s)
    assert m["accuracy"] == 1.0 and m["interval_slope"] == pytest.approx(1.0)
    assert m["interval_error"] < 20.0 / 800  # within one step of 20 ms


@pytest.mark.parametrize(
    "name, options, key",
    [
        ("decision", {"cohs": [0, 120]}, "cohs"),
        ("decision", {"timing": {"stimulus": 10}}, "timing.stimulus"),
        ("context", {"timing": {"delay": {"uniform": [5, 100]}}}, "timing.delay"),
        ("decision", {"num_steps": 20}, "num_steps"),
        ("decision", {"timing": {"wait": 100}}, "wait"),
        ("go_nogo", {"sigma_in": -1}, "sigma_in"),
    ],
)
def test_bad_options(name, options, key):
    with pytest.raises(pydantic.ValidationError, match=key):
        TASK_OPTIONS[name].model_validate(options)


def test_zero_length_optional_periods():
    # the default decision delay and go/no-go fixation are 0 ms (absent)
    s = make_task("go_nogo", NOISELESS).train
    assert np.all(s.conditions["start_stimulus"] == 0)


def _neurogym_trials(name, env, task, kwargs_of, fixation_after):
    """Each noise-free trial of `task` rebuilt by NeuroGym's `env` from the
    same conditions: the same periods, inputs and labels (NeuroGym's
    `PerceptualDecisionMaking` and `ContextDecisionMaking` turn fixation off
    after the fixation period; `fixation_after` says whether to compare it
    there)."""
    s = task.train
    c = s.conditions
    for i in range(s.num_sequences):
        env.new_trial(**kwargs_of(c, i))
        end = int(c["end"][i])
        assert env.ob.shape[0] == end, name
        for p in env.start_ind:
            assert (env.start_ind[p], env.end_ind[p]) == (
                int(c[f"start_{p}"][i]),
                int(c[f"start_{p}"][i]) + env.end_ind[p] - env.start_ind[p],
            ), (name, p)
        ob = env.ob.astype(np.float64)
        mine = s.xs[:end, i]
        cols = slice(0, None) if fixation_after else slice(1, None)
        np.testing.assert_allclose(mine[:, cols], ob[:, cols], atol=1e-6, err_msg=name)
        a, b = env.start_ind["fixation"], env.end_ind["fixation"]
        np.testing.assert_array_equal(mine[a:b, 0], ob[a:b, 0])
        np.testing.assert_array_equal(s.ys[:end, i], env.gt, err_msg=name)


def test_against_neurogym():
    """NeuroGym's own trials of the same tasks, from the same conditions and
    timing: the same periods (in steps), channels, inputs and labels."""
    pytest.importorskip("neurogym")
    from neurogym.envs.native.contextdecisionmaking import ContextDecisionMaking
    from neurogym.envs.native.delaymatchsample import DelayMatchSample
    from neurogym.envs.native.gonogo import GoNogo
    from neurogym.envs.native.perceptualdecisionmaking import (
        PerceptualDecisionMaking,
    )

    dt, theta = 20, np.array([0.0, np.pi])
    opts = {"sigma_in": 0.0, "num_train": 20, "num_test": 1, "dt": dt}
    timing = {"fixation": 100, "stimulus": 400, "delay": 0, "decision": 100}
    env = PerceptualDecisionMaking(dt=dt, sigma=0.0, timing=timing)
    env.reset(seed=0)
    task = make_task("decision", {**opts, "timing": timing})
    _neurogym_trials(
        "decision",
        env,
        task,
        lambda c, i: {
            "ground_truth": int(c["ground_truth"][i]) - 1,
            "coh": float(c["coherence"][i]),
        },
        fixation_after=False,
    )
    timing = {"fixation": 300, "stimulus": 400, "delay": 200, "decision": 100}
    env = ContextDecisionMaking(dt=dt, sigma=0.0, use_expl_context=True, timing=timing)
    env.reset(seed=0)
    task = make_task("context", {**opts, "timing": timing, "coding": "ring"})

    def context_kwargs(c, i):
        k = int(c["context"][i]) - 1
        other = c["coherence_2"][i] if k == 0 else c["coherence_1"][i]
        return {
            "ground_truth": int(c["ground_truth"][i]),
            "other_choice": 1 if other > 0 else 2,
            "context": k,
            "coh_1": abs(float(c["coherence_1"][i])),
            "coh_2": abs(float(c["coherence_2"][i])),
        }

    _neurogym_trials("context", env, task, context_kwargs, fixation_after=False)
    env = GoNogo(dt=dt)
    env.reset(seed=0)
    task = make_task("go_nogo", opts)
    _neurogym_trials(
        "go_nogo",
        env,
        task,
        lambda c, i: {"ground_truth": int(c["ground_truth"][i])},
        fixation_after=True,
    )
    env = DelayMatchSample(dt=dt, sigma=0.0)
    env.reset(seed=0)
    task = make_task("delay_match", opts)
    _neurogym_trials(
        "delay_match",
        env,
        task,
        lambda c, i: {
            "ground_truth": int(c["ground_truth"][i]),
            "sample_theta": theta[int(c["sample"][i]) - 1],
        },
        fixation_after=True,
    )


def test_short_decision_training_beats_chance():
    """A few hundred Adam steps of BPTT on a small noisy E/I network: NeuroGym's
    accuracy on held-out trials well above chance (0.5; its standard error
    over 256 trials is 0.03, the bound is 5 of them above)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import optax

    import rnnode as rn

    task = make_task(
        "decision",
        {
            "dt": 50.0,
            "timing": {"fixation": 100, "stimulus": 300, "decision": 100},
            "cohs": [25.6, 51.2],
            "sigma_in": 0.5,
            "num_train": 512,
            "num_test": 256,
        },
    )
    key = jr.PRNGKey(0)
    dyn = rn.CTRNN(
        16,
        3,
        tau=100.0,
        form="rate",
        activation="relu",
        noise_std=0.05,
        excitatory=0.8,
        autapses=False,
        gain=1.2,
        key=key,
    )
    model = rn.Model(dyn, rn.Euler(50.0), rn.Linear(16, 3, key=jr.fold_in(key, 1)))
    s = task.train
    xs, ys, ws = (jnp.asarray(a) for a in (s.xs, s.ys, s.weights))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.adam(0.02)

    @jax.jit
    def train(params):
        def one(carry, i):
            params, state = carry
            k = jr.fold_in(key, i)
            idx = jr.choice(k, 512, (64,), replace=False)

            def loss(p):
                return rn.sequence_loss(
                    eqx.combine(p, static),
                    xs[:, idx],
                    ys[:, idx],
                    loss=rn.cross_entropy,
                    weights=ws[:, idx],
                    gradient=rn.BPTT(),
                    key=jr.fold_in(k, 1),
                )

            g = jax.grad(loss)(params)
            updates, state = opt.update(g, state)
            return (optax.apply_updates(params, updates), state), None

        with jax.numpy_dtype_promotion("standard"):  # optax's int32 step count
            (params, _), _ = jax.lax.scan(
                one, (params, opt.init(params)), jnp.arange(300)
            )
        return params

    trained = eqx.combine(train(params), static)
    _, outs = trained.rollout(jnp.asarray(task.test.xs), key=jr.PRNGKey(9))
    m = task.metrics(np.asarray(outs), task.test)
    assert m["accuracy"] > 0.5 + 5 * 0.5 / np.sqrt(256), m
