"""The time-series tasks against their defining equations, the measured series
against their sources, and the NMSE against a direct computation."""

import numpy as np
import pydantic
import pytest

from rnnode.data import make_task, nmse

RAW = {"normalise": "none"}


def series(task, split="train"):
    """`(T + 1, N)`: the inputs followed by the last target (horizon 1)."""
    s = task.splits[split]
    return np.concatenate([s.xs[:, :, 0], s.ys[-1:, :, 0]])


def test_henon_obeys_its_map():
    a, b = 1.3, 0.25
    task = make_task("henon", {**RAW, "a": a, "b": b, "num_steps": 60}, seed=2)
    x = series(task)
    # with y_n = b x_{n-1}:  x_{n+2} = 1 - a x_{n+1}^2 + b x_n, exactly
    np.testing.assert_allclose(x[2:], 1 - a * x[1:-1] ** 2 + b * x[:-2], atol=1e-12)
    assert np.ptp(x) > 1.0  # on the attractor, not at a fixed point
    np.testing.assert_array_equal(task.train.ys[:-1], task.train.xs[1:])


def test_mackey_glass_obeys_its_delay_equation():
    h, tau = 0.01, 2.0
    o = {**RAW, "dt": h, "step": h, "tau": tau, "transient": 5.0, "num_steps": 600}
    x = series(make_task("mackey_glass", {**o, "num_train": 2}, seed=1))
    lag = round(tau / h)
    t = np.arange(lag + 1, len(x) - 1)
    slope = (x[t + 1] - x[t - 1]) / (2 * h)
    delayed = x[t - lag]
    rhs = 0.2 * delayed / (1 + delayed**10) - 0.1 * x[t]
    # central differences against the right-hand side: O(h²) apart
    np.testing.assert_allclose(slope, rhs, atol=2e-5)
    assert np.abs(rhs).max() > 1e-2  # a moving solution, so the check can fail


def test_lorenz_obeys_its_equations():
    h = 0.001
    o = {**RAW, "dt": h, "step": h, "transient": 1.0, "num_steps": 400}
    x, y, z = (
        series(make_task("lorenz", {**o, "observe": c, "num_train": 2}, seed=4))
        for c in "xyz"
    )
    d = lambda v: (v[2:] - v[:-2]) / (2 * h)  # noqa: E731
    x, y, z, dx, dy, dz = x[1:-1], y[1:-1], z[1:-1], d(x), d(y), d(z)
    scale = np.abs(dx).max()
    np.testing.assert_allclose(dx, 10 * (y - x), atol=1e-3 * scale)
    np.testing.assert_allclose(dy, x * (28 - z) - y, atol=1e-3 * scale)
    np.testing.assert_allclose(dz, x * y - 8 / 3 * z, atol=1e-3 * scale)


def test_series_options_sampling_and_normalisation():
    fine = make_task("lorenz", {**RAW, "step": 0.01, "transient": 1.0}, seed=0)
    coarse = make_task("lorenz", {**RAW, "step": 0.03, "transient": 1.0}, seed=0)
    # the same trajectories, sampled every third integration step
    np.testing.assert_allclose(coarse.train.xs[:20], fine.train.xs[::3][:20])
    assert coarse.dt == 0.03
    task = make_task("henon", {"num_steps": 30, "horizon": 3, "warmup": 5}, seed=0)
    whole = np.concatenate([task.train.xs, task.train.ys[-3:]])  # every sample
    assert abs(whole.mean()) < 1e-12 and whole.std() == pytest.approx(1)
    np.testing.assert_allclose(task.train.ys[:-3], task.train.xs[3:])
    np.testing.assert_array_equal(task.train.weights[:5], 0)
    raw = make_task("henon", {**RAW, "num_steps": 30, "horizon": 3}, seed=0)
    info = task.info
    np.testing.assert_allclose(
        task.test.xs * info["scale"] + info["shift"], raw.test.xs, atol=1e-12
    )
    box = make_task("henon", {"normalise": "minmax", "num_steps": 30}, seed=0)
    whole = np.concatenate([box.train.xs, box.train.ys[-1:]])
    assert whole.min() == pytest.approx(-1) and whole.max() == pytest.approx(1)


@pytest.mark.parametrize(
    "name, options, key",
    [
        ("lorenz", {"step": 0.015}, "step"),
        ("mackey_glass", {"tau": 17.05}, "tau"),
        ("henon", {"num_steps": 10, "warmup": 10}, "warmup"),
        ("laser", {"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
        ("laser", {"num_steps": 1500}, "num_steps"),
    ],
)
def test_bad_series_options_name_the_key(name, options, key):
    with pytest.raises(pydantic.ValidationError, match=key):
        make_task(name, options)


def test_laser_is_the_santa_fe_series_in_time_order():
    from reservoirpy.datasets import santafe_laser

    raw = santafe_laser().ravel().astype(float)
    task = make_task("laser", {**RAW, "num_steps": 100})
    periods = task.info["periods"]
    assert periods["train"][1] == periods["val"][0]
    assert periods["val"][1] == periods["test"][0]
    assert periods["test"][1] == len(raw) == 10_093
    v0, t0 = periods["val"][0], periods["test"][0]
    np.testing.assert_array_equal(task.val.xs[:, 0, 0], raw[v0 : v0 + 100])
    np.testing.assert_array_equal(task.test.ys[:, 1, 0], raw[t0 + 101 : t0 + 201])
    np.testing.assert_array_equal(task.train.xs[:, 1, 0], raw[10:110])  # stride
    # no validation or test sample enters a training window
    last_target = (task.train.num_sequences - 1) * 10 + 100
    assert last_target < periods["train"][1] <= last_target + 10


def test_monthly_sunspots():
    task = make_task("sunspots", {"resolution": "monthly", "num_steps": 24})
    info = task.info
    assert info["train_period"][0] == 1749 and info["test_period"][1] == "2009-06"
    months = 3126
    np.testing.assert_allclose(
        task.train.xs[:3, 0, 0] * info["std"] + info["mean"], [58.0, 62.6, 70.0]
    )
    n_test = round(0.2 * months)
    assert task.test.num_sequences == n_test - 24 - 1 + 1


def test_nmse_against_a_direct_computation():
    task = make_task("henon", {"num_steps": 30, "warmup": 4, "num_test": 5}, seed=1)
    split = task.test
    out = np.random.default_rng(0).normal(size=split.ys.shape)
    y, o = split.ys[4:], out[4:]  # the scored steps
    direct = np.sum((o - y) ** 2) / np.sum((y - y.mean()) ** 2)
    assert nmse(out, split) == pytest.approx(direct, rel=1e-12)
    metrics = task.metrics(out, split)
    assert metrics["nmse"] == pytest.approx(direct, rel=1e-12)
    assert nmse(np.full_like(split.ys, y.mean()), split) == pytest.approx(1.0)
    assert nmse(split.ys, split) == 0.0
    x = split.xs[4:]
    assert metrics["persistence_nmse"] == pytest.approx(
        np.sum((x - y) ** 2) / np.sum((y - y.mean()) ** 2), rel=1e-12
    )
