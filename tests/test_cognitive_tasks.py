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


def test_against_neurogym():
    """NeuroGym's own trials of the same task: the same periods (in steps),
    channels, stimulus means and labels."""
    neurogym = pytest.importorskip("neurogym")
    from neurogym.envs.native.perceptualdecisionmaking import (
        PerceptualDecisionMaking,
    )

    dt = 20
    env = PerceptualDecisionMaking(dt=dt, sigma=0.0)
    env.reset(seed=0)
    del neurogym
    for _ in range(5):
        trial = env.new_trial()
        ob, gt = env.ob, env.gt
        o = TASK_OPTIONS["decision"](sigma_in=0.0, num_train=1, num_test=1)
        from rnnode.data._cognitive import Layout, stimulus

        lay = Layout(o, 1, np.random.default_rng(0))
        assert lay.end[0] == ob.shape[0]
        for p in ("fixation", "stimulus", "decision"):
            assert (lay.start[p][0], lay.stop[p][0]) == (
                env.start_ind[p],
                env.end_ind[p],
            )
        mean = stimulus("ring", [env.theta[trial["ground_truth"]]], [trial["coh"]])
        a, b = env.start_ind["stimulus"], env.end_ind["stimulus"]
        np.testing.assert_allclose(ob[a:b, 1:], np.broadcast_to(mean, (b - a, 2)))
        assert np.all(ob[: env.end_ind["fixation"], 0] == 1)
        a, b = env.start_ind["decision"], env.end_ind["decision"]
        assert np.all(gt[a:b] == trial["ground_truth"] + 1) and np.all(gt[:a] == 0)
