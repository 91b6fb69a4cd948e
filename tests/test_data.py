"""Tasks and data: the `rnnode.data` contract, determinism, splits, baselines, and
the physics behind the generated data (checked against rnnode's own models)."""

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pydantic
import pytest

import rnnode
from rnnode.data import TASK_OPTIONS, Split, Task, list_tasks, make_task

NAMES = [
    "oscillator_fit",
    "oscillator_ctrnn",
    "linear_example",
    "sine",
    "adding",
    "copy",
    "add",
    "digits",
    "sunspots",
    "steady_state",
    "flipflop",
    "henon",
    "mackey_glass",
    "lorenz",
    "laser",
    "decision",
    "context",
    "delay_match",
    "go_nogo",
    "ready_set_go",
]

COGNITIVE = {"decision", "context", "delay_match", "go_nogo", "ready_set_go"}

SMALL = {
    "oscillator_fit": dict(num_steps=30, num_train=3, num_test=2),
    "oscillator_ctrnn": dict(num_steps=30, num_train=3, num_test=2),
    "linear_example": dict(num_steps=20, num_train=3, num_test=2, hold_steps=4),
    "sine": dict(num_steps=30, num_train=3, num_test=2),
    "adding": dict(num_steps=12, num_train=16, num_test=8),
    "copy": dict(num_symbols=4, length=3, delay=4, num_train=16, num_test=8),
    "add": dict(num_steps=40, num_train=2, num_test=2),
    "digits": dict(num_train=60, num_test=30),
    "sunspots": dict(num_steps=12, warmup=2, stride=3),
    "steady_state": dict(num_train=16, num_test=8),
    "flipflop": dict(num_steps=30, num_train=4, num_test=4, p=0.2),
    "henon": dict(num_steps=20, num_train=3, num_val=2, num_test=2),
    "mackey_glass": dict(
        num_steps=20, num_train=3, num_val=2, num_test=2, transient=50.0
    ),
    "lorenz": dict(num_steps=20, num_train=3, num_val=2, num_test=2, transient=1.0),
    "laser": dict(num_steps=50, stride=100),
    "decision": dict(timing={"stimulus": 200}, num_train=6, num_test=4),
    "context": dict(timing={"delay": 100}, num_train=6, num_test=4),
    "delay_match": dict(timing={"delay": 100}, num_train=6, num_test=4),
    "go_nogo": dict(num_train=6, num_test=4),
    "ready_set_go": dict(timing={"measure": [200, 300]}, num_train=6, num_test=4),
}
DETERMINISTIC = ("sunspots", "laser")  # measured series: the seed is not used

_cache = {}


def small(name, seed=0):
    if (name, seed) not in _cache:
        _cache[name, seed] = make_task(name, SMALL[name], seed=seed)
    return _cache[name, seed]


def perfect_outputs(task, split):
    """Outputs that match the targets exactly (confident logits for labels)."""
    if task.loss == "mse":
        return np.array(split.ys)
    return 100.0 * np.eye(task.output_size)[split.ys]


def test_registry():
    assert [name for name, _ in list_tasks()] == NAMES
    assert list(TASK_OPTIONS) == NAMES
    for _, description in list_tasks():
        assert description and "\n" not in description
    for model in TASK_OPTIONS.values():
        assert model.model_config["extra"] == "forbid"
        model()  # the defaults are valid


@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    task = small(name)
    assert isinstance(task, Task) and task.name == name
    assert task.loss in ("mse", "cross_entropy")
    assert task.kind in ("sequence", "equilibrium")
    assert task.dt > 0
    json.dumps(task.info)  # the trainer may save it beside the results
    assert list(task.splits) == ["train", "val", "test"]
    for split in task.splits.values():
        assert isinstance(split, Split)
        T, N, m = split.xs.shape
        assert split.xs.dtype == np.float64 and m == task.input_size
        if task.loss == "mse":
            assert split.ys.dtype == np.float64
            assert split.ys.shape == (T, N, task.output_size)
        else:
            assert np.issubdtype(split.ys.dtype, np.integer)
            assert split.ys.shape == (T, N)
            assert 0 <= split.ys.min() and split.ys.max() < task.output_size
        assert split.weights.dtype == np.float64
        assert split.weights.shape in ((T,), (T, N))
        assert np.all(split.weights >= 0)
        np.testing.assert_allclose(split.weights.sum(axis=0), 1.0)
        assert np.all(np.isfinite(split.xs)) and np.all(np.isfinite(split.ys))
        if task.kind == "equilibrium":
            assert T == 1 and split.weights.shape == (1,)
        assert not split.xs.flags.writeable
        with pytest.raises(ValueError):
            split.xs[0, 0, 0] = 1.0


@pytest.mark.parametrize("name", NAMES)
def test_perfect_outputs_score_perfectly(name):
    task = small(name)
    for split in task.splits.values():
        metrics = task.metrics(perfect_outputs(task, split), split)
        assert all(isinstance(v, float) for v in metrics.values())
        if task.loss == "mse":
            assert metrics["mse"] == 0.0
            assert metrics["baseline_mse"] > 0
        else:
            assert metrics["accuracy"] == 1.0
            assert metrics["cross_entropy"] == pytest.approx(0.0, abs=1e-12)
            if name in COGNITIVE:  # NeuroGym's accuracy: a choice per trial
                assert metrics.get("chance_accuracy", 0.5) == 0.5
            else:
                assert metrics["chance_accuracy"] == 1.0 / task.output_size
            assert metrics["chance_cross_entropy"] == pytest.approx(
                math.log(task.output_size)
            )


@pytest.mark.parametrize("name", NAMES)
def test_metrics_reject_wrong_shapes(name):
    task = small(name)
    outputs = perfect_outputs(task, task.test)
    with pytest.raises(ValueError, match="outputs"):
        task.metrics(outputs[:, :-1], task.test)
    with pytest.raises(ValueError, match="outputs"):
        task.metrics(np.concatenate([outputs, outputs], axis=-1), task.test)


def test_metrics_score_only_the_weighted_steps():
    task = small("adding")
    outputs = perfect_outputs(task, task.test)
    outputs[:-1] += 5.0  # wrong everywhere but the scored last step
    assert task.metrics(outputs, task.test)["mse"] == 0.0
    outputs[-1] += 0.5
    assert task.metrics(outputs, task.test)["mse"] == pytest.approx(0.25)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    first = make_task(name, SMALL[name], seed=3)
    again = make_task(name, SMALL[name], seed=3)
    other = make_task(name, SMALL[name], seed=4)
    for split in first.splits:
        a, b, c = (t.splits[split] for t in (first, again, other))
        for field in ("xs", "ys", "weights"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        if name not in DETERMINISTIC:
            assert not np.array_equal(a.xs, c.xs)
    assert first.info == again.info


def test_test_set_does_not_depend_on_num_train():
    a = make_task("adding", dict(num_train=5, num_test=7))
    b = make_task("adding", dict(num_train=9, num_test=7))
    np.testing.assert_array_equal(a.test.xs, b.test.xs)


@pytest.mark.parametrize(
    "name",
    ["oscillator_fit", "linear_example", "sine", "adding", "steady_state", "add"]
    + ["flipflop", "henon", "mackey_glass", "lorenz", "decision", "context"],
)
def test_train_val_test_disjoint_sequences(name):
    task = small(name)
    flat = {
        k: s.xs.transpose(1, 0, 2).reshape(s.num_sequences, -1)
        for k, s in task.splits.items()
    }
    for a, b in (("train", "test"), ("val", "test"), ("train", "val")):
        assert not (flat[a][:, None, :] == flat[b][None, :, :]).all(-1).any(), (a, b)


def test_validation_generator_leaves_train_and_test_as_they_were():
    # tasks spawn the validation generator after the others, and spawning one
    # more child leaves the first ones as they were: saved runs' data hold
    from rnnode.data._base import rngs

    for a, b in zip(rngs(7, 2), rngs(7, 3)[:2], strict=True):
        np.testing.assert_array_equal(
            a.integers(2**62, size=4), b.integers(2**62, size=4)
        )


def test_digits_split_is_disjoint_stratified_and_complete():
    task = make_task("digits", seed=1)
    sizes = [s.num_sequences for s in task.splits.values()]
    assert sum(sizes) == 1797
    assert task.test.num_sequences == math.ceil(0.25 * 1797)
    assert task.val.num_sequences == math.ceil(0.1 * 1797)
    flat = lambda s: s.xs.transpose(1, 0, 2).reshape(s.num_sequences, 64)  # noqa: E731
    rows = [flat(s) for s in task.splits.values()]
    # load_digits has no duplicate images, so disjoint splits share no rows
    assert len(np.unique(np.concatenate(rows), axis=0)) == 1797
    counts = [np.bincount(s.ys[-1], minlength=10) for s in task.splits.values()]
    np.testing.assert_allclose(counts[2] / counts[0], 450 / 1167, atol=0.05)
    np.testing.assert_allclose(counts[1] / counts[0], 180 / 1167, atol=0.05)
    # the test images do not depend on the validation split
    other = make_task("digits", {"val_fraction": 0.3}, seed=1)
    np.testing.assert_array_equal(other.test.xs, task.test.xs)
    assert np.all(task.train.ys == task.train.ys[-1])  # the label at every row
    np.testing.assert_array_equal(task.train.weights, [0] * 7 + [1])
    assert 0 <= task.train.xs.min() and task.train.xs.max() <= 1
    chance = task.metrics(np.zeros((8, task.test.num_sequences, 10)), task.test)
    assert chance["chance_accuracy"] == 0.1
    assert chance["cross_entropy"] == pytest.approx(math.log(10))


def test_digits_read_pixel_by_pixel():
    rows, pixels = (
        make_task("digits", {"read": r}, seed=1) for r in ("rows", "pixels")
    )
    assert pixels.train.xs.shape == (64, rows.train.num_sequences, 1)
    assert pixels.input_size == 1
    # the same images, row-major, one pixel a step; scored at the last step
    flat = rows.train.xs.transpose(1, 0, 2).reshape(-1, 64)
    np.testing.assert_array_equal(pixels.train.xs[:, :, 0].T, flat)
    np.testing.assert_array_equal(pixels.train.weights, [0] * 63 + [1])
    np.testing.assert_array_equal(pixels.train.ys[-1], rows.train.ys[-1])


def test_sunspots_windows_and_persistence():
    from statsmodels.datasets import sunspots

    raw = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    options = dict(num_steps=15, horizon=3, warmup=4)
    task = make_task("sunspots", options)
    info = task.info
    assert info["train_period"][0] == 1700 and info["test_period"][1] == 2008
    # in time order, the validation years between the training and test years
    assert info["train_period"][1] + 1 == info["val_period"][0]
    assert info["val_period"][1] + 1 == info["test_period"][0]
    n_fit = info["train_period"][1] - 1700 + 1
    n_train = info["val_period"][1] - 1700 + 1  # all before the test years
    assert n_fit == 309 - round(0.2 * 309) - round(0.1 * 309)
    assert n_train == 309 - round(0.2 * 309)
    assert info["mean"] == pytest.approx(raw[:n_train].mean())
    v0 = info["std"] * task.val.xs[:, 0, 0] + info["mean"]
    np.testing.assert_allclose(v0, raw[n_fit : n_fit + 15])
    original = lambda a: a * info["std"] + info["mean"]  # noqa: E731
    # train windows come from the training years, test windows from the test years
    train_values = np.unique(original(task.train.xs))
    assert np.all(np.isin(np.round(train_values, 6), np.round(raw[:n_fit], 6)))
    test0 = original(task.test.xs[:, 0, 0])
    np.testing.assert_allclose(test0, raw[n_train : n_train + 15])
    np.testing.assert_allclose(
        original(task.test.ys[:, 0, 0]), raw[n_train + 3 : n_train + 18]
    )
    assert task.test.num_sequences == (309 - n_train) - 15 - 3 + 1
    np.testing.assert_allclose(task.train.weights[:4], 0)
    # the persistence forecast y_t is what outputs = inputs score
    for split in (task.train, task.test):
        metrics = task.metrics(np.array(split.xs), split)
        assert metrics["mse"] == pytest.approx(metrics["persistence_mse"])
        assert metrics["persistence_mse_original"] == pytest.approx(
            metrics["persistence_mse"] * info["std"] ** 2
        )
        assert metrics["rmse_original"] == pytest.approx(
            math.sqrt(metrics["mse_original"])
        )
    one_step = make_task("sunspots").metrics
    default = make_task("sunspots")
    m = one_step(np.zeros_like(default.test.ys), default.test)
    assert m["persistence_mse"] < m["baseline_mse"]  # persistence is a fair bar


def test_adding_baseline_is_one_sixth():
    task = make_task("adding", dict(num_steps=10, num_train=1, num_test=20_000))
    split = task.test
    values, markers = split.xs[..., 0], split.xs[..., 1]
    np.testing.assert_array_equal(markers.sum(0), 2.0)
    half = split.num_steps // 2
    np.testing.assert_array_equal(markers[:half].sum(0), 1.0)
    np.testing.assert_allclose(split.ys[-1, :, 0], (values * markers).sum(0))
    metrics = task.metrics(np.zeros_like(split.ys), split)
    # the variance of a sum of two U[0,1] is 1/6; the sample variance of 20 000
    # draws has a standard error of about 0.0014
    assert metrics["baseline_mse"] == pytest.approx(1 / 6, abs=0.006)
    assert metrics["mse"] == pytest.approx(metrics["baseline_mse"] + 1.0, abs=0.03)


def test_copy_layout_and_chance():
    task = make_task("copy", dict(num_symbols=6, length=4, delay=3, num_test=5000))
    split = task.test
    T = 2 * 4 + 3 + 1
    assert split.xs.shape == (T, 5000, 8)
    np.testing.assert_array_equal(split.xs.sum(-1), 1.0)  # one-hot
    tokens = split.xs.argmax(-1)
    recall = slice(T - 4, T)
    np.testing.assert_array_equal(split.ys[recall], tokens[:4])
    assert (
        np.all(tokens[4:7] == 6) and np.all(tokens[7] == 7) and np.all(tokens[8:] == 6)
    )
    np.testing.assert_array_equal(split.ys[: T - 4], 0)
    np.testing.assert_allclose(split.weights, [0] * (T - 4) + [0.25] * 4)
    guess = np.zeros((T, 5000, 6))
    guess[..., 2] = 1.0  # always guess one symbol: right about 1/6 of the time
    metrics = task.metrics(guess, split)
    assert metrics["chance_accuracy"] == 1 / 6
    assert metrics["accuracy"] == pytest.approx(1 / 6, abs=0.015)
    assert metrics["sequence_accuracy"] < 0.01


def _binary_entropy(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0


def test_add_floors_from_the_definition():
    # P(y=1) given (x_{t-5}, x_{t-9}) is 0.5, 0.25, 1, 0.75 (each 1/4); the
    # marginal is 0.625; knowing x_{t-5} only, 0.375 or 0.875
    H = _binary_entropy
    task = make_task("add", dict(num_steps=200_000, num_test=1), seed=3)
    assert task.info["floors"] == pytest.approx(
        {
            "floor_nothing": H(0.625),
            "floor_first": (H(0.375) + H(0.875)) / 2,
            "floor_both": (H(0.5) + H(0.25) + 0 + H(0.75)) / 4,
        },
        rel=1e-12,
    )
    assert task.info["floors"] == pytest.approx(
        {"floor_nothing": 0.6616, "floor_first": 0.5192, "floor_both": 0.4545},
        abs=1e-4,
    )
    # the data follow the definition: the predictors that know nothing, the
    # first dependency, or both, score their floors on a long stream (the
    # per-step losses have a standard deviation below 1, so 200 000 steps give
    # a standard error below 0.003)
    split = task.test
    x = split.xs[:, 0, 0]
    np.testing.assert_array_equal(split.xs.sum(-1), 1.0)  # one-hot [x, 1 - x]
    np.testing.assert_array_equal(split.weights[:9], 0.0)  # no full history yet
    x5, x9 = np.roll(x, 5), np.roll(x, 9)
    predictions = {
        "floor_nothing": np.full_like(x, 0.625),
        "floor_first": 0.375 + 0.5 * x5,
        "floor_both": 0.5 + 0.5 * x5 - 0.25 * x9,
    }
    metrics = None
    for floor, p in predictions.items():
        p = np.clip(p, 1e-12, 1 - 1e-12)
        logits = np.stack([np.log1p(-p), np.log(p)], axis=-1)[:, None]
        metrics = task.metrics(logits, split)
        assert metrics["cross_entropy"] == pytest.approx(metrics[floor], abs=0.01)
    assert metrics["accuracy"] == pytest.approx(0.75, abs=0.01)
    # other lags move the dependencies (and with t1 = t2 the label reads one input)
    other = make_task("add", dict(t1=2, t2=3, num_steps=50_000), seed=1).test
    x, y = other.xs[:, 0, 0], other.ys[:, 0]
    both = (np.roll(x, 2) == 1) & (np.roll(x, 3) == 1)
    assert y[10:][both[10:]].mean() == pytest.approx(0.75, abs=0.03)
    same = make_task("add", dict(t1=4, t2=4, num_steps=20), seed=1).info["floors"]
    assert (
        same["floor_first"]
        == same["floor_both"]
        == pytest.approx((H(0.5) + H(0.75)) / 2)
    )


def test_oscillator_matches_rnnode_model():
    options = dict(dt=0.05, num_steps=120, num_train=2, num_test=2, noise=0.0)
    options |= dict(mass=1.5, damping=0.4, stiffness=3.0, initial_state=(0.3, -0.2))
    task = make_task("oscillator_fit", options)
    p = task.info["true_params"]
    model = rnnode.Model(
        rnnode.DampedOscillator(p["mass"], p["damping"], p["stiffness"]),
        rnnode.RK4(0.05, interpolation="linear"),
        initial_state=task.info["initial_state"],
    )
    _, outs = model.rollout(jnp.asarray(task.train.xs))
    # error of the linearly interpolated drive, O(dt²), on states of size ~1
    np.testing.assert_allclose(outs, task.train.ys, atol=2e-3)
    assert task.output_size == 2
    metrics = task.metrics(np.asarray(outs), task.train)
    assert metrics["mse"] < 1e-6 * metrics["baseline_mse"]
    # the drive and its timing: xs[i] = F(i dt), a sum of sines of amplitude 1
    assert np.max(np.abs(task.train.xs)) <= 2.0


def test_oscillator_noise_and_observation():
    clean = make_task("oscillator_ctrnn", dict(noise=0.0, num_steps=50))
    noisy = make_task("oscillator_ctrnn", dict(noise=0.1, num_steps=50))
    assert clean.output_size == 1 and clean.info["observed"] == ["x"]
    np.testing.assert_array_equal(clean.train.xs, noisy.train.xs)
    residual = noisy.train.ys - clean.train.ys
    assert np.std(residual) == pytest.approx(0.1, rel=0.1)
    metrics = noisy.metrics(clean.train.ys, noisy.train)
    assert metrics["noise_mse"] == pytest.approx(0.01)
    assert metrics["mse"] == pytest.approx(0.01, rel=0.15)
    cosine = make_task("oscillator_fit", dict(drive="cosine", drive_frequency=2.0))
    t = cosine.dt * np.arange(cosine.train.num_steps)
    np.testing.assert_allclose(cosine.train.xs[:, 0, 0], np.cos(2.0 * t))


def test_linear_example_matches_rnnode_model():
    task = make_task("linear_example", dict(w=0.7, b=-0.2, size=2, num_train=3))
    xs = task.train.xs
    # piecewise constant in segments of hold_steps = 10
    np.testing.assert_array_equal(xs[:10], np.broadcast_to(xs[:1], xs[:10].shape))
    model = rnnode.Model(rnnode.LinearExample(0.7, -0.2, size=2), rnnode.RK4(task.dt))
    _, outs = model.rollout(jnp.asarray(xs))
    # RK4's local error is dt⁵/120 ≈ 1e-7 a step, against the exact exponential
    np.testing.assert_allclose(outs, task.train.ys, atol=1e-6)


def test_sine_targets():
    task = make_task("sine", dict(frequency_range=(2.0, 4.0), amplitude=0.5))
    xs, ys = task.train.xs, task.train.ys
    np.testing.assert_array_equal(xs, np.broadcast_to(xs[:1], xs.shape))  # constant
    omega = xs[0, :, 0] * task.info["omega_max"]
    assert np.all((2.0 <= omega) & (omega <= 4.0))
    t = task.dt * np.arange(1, task.train.num_steps + 1)
    np.testing.assert_allclose(ys[..., 0], 0.5 * np.sin(t[:, None] * omega))


def test_steady_state_targets_are_teacher_equilibria():
    task = make_task("steady_state", dict(hidden_size=6, input_size=3, output_size=2))
    teacher = {k: np.asarray(v) for k, v in task.info["teacher"].items()}
    assert np.linalg.norm(teacher["W"], 2) == pytest.approx(0.5)
    ctrnn = rnnode.CTRNN(6, 3, key=jnp.zeros(2, dtype=jnp.uint32))
    ctrnn = eqx.tree_at(
        lambda c: (c.W, c.U, c.b),
        ctrnn,
        (
            jnp.asarray(teacher["W"]),
            jnp.asarray(teacher["U"]),
            jnp.asarray(teacher["b"]),
        ),
    )
    xs, ys = task.test.xs[0], task.test.ys[0]
    field = jax.jit(jax.vmap(lambda r, x: ctrnn(0.0, r, x)))
    # solve for r* independently: Newton on rnnode's CTRNN vector field
    r = np.zeros((len(xs), 6))
    for _ in range(20):
        F = np.asarray(field(jnp.asarray(r), jnp.asarray(xs)))
        J = -np.eye(6) + teacher["W"] * (1 - np.tanh(r[:, None, :]) ** 2)
        r = r - np.linalg.solve(J, F[..., None])[..., 0]
    assert np.max(np.abs(field(jnp.asarray(r), jnp.asarray(xs)))) < 1e-12
    np.testing.assert_allclose(r @ teacher["V"].T + teacher["c"], ys, atol=1e-10)


def test_split_validation_and_take():
    xs, ys, w = np.zeros((4, 3, 2)), np.zeros((4, 3, 1)), np.full(4, 0.25)
    split = Split(xs=xs, ys=ys, weights=w)
    sub = split.take(np.array([0, 2]))
    assert sub.xs.shape == (4, 2, 2) and sub.weights.shape == (4,)
    with pytest.raises(ValueError, match="xs"):
        Split(xs=np.zeros((4, 3)), ys=ys, weights=w)
    with pytest.raises(ValueError, match="ys"):
        Split(xs=np.zeros((4, 3, 2)), ys=np.zeros((4, 2, 1)), weights=w)
    with pytest.raises(ValueError, match="weights"):
        Split(xs=np.zeros((4, 3, 2)), ys=ys, weights=np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        Split(xs=np.zeros((4, 3, 2)), ys=ys, weights=-np.ones(4))


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task `mnist`.*adding"):
        make_task("mnist")


@pytest.mark.parametrize(
    "name, options, key",
    [
        ("adding", {"num_stepz": 10}, "num_stepz"),  # unknown key
        ("adding", {"num_steps": 1}, "num_steps"),
        ("adding", {"num_train": 2.5}, "num_train"),
        ("adding", {"num_train": True}, "num_train"),
        ("oscillator_fit", {"dt": -0.1}, "dt"),
        ("oscillator_fit", {"noise": float("nan")}, "noise"),
        ("oscillator_fit", {"observe": "velocity"}, "observe"),
        ("oscillator_fit", {"frequency_range": (3.0, 1.0)}, "frequency_range"),
        ("sine", {"frequency_range": (0.0, 1.0)}, "frequency_range"),
        ("copy", {"num_symbols": 1}, "num_symbols"),
        ("add", {"t1": 3, "t2": 9, "num_steps": 9}, "num_steps"),
        ("add", {"t1": -1}, "t1"),
        ("digits", {"test_fraction": 1.0}, "test_fraction"),
        ("digits", {"num_train": 5000}, "num_train"),
        ("sunspots", {"warmup": 20}, "warmup"),
        ("sunspots", {"num_steps": 100}, "num_steps"),
        ("sunspots", {"horizon": 50}, "horizon"),
        ("steady_state", {"contraction": 1.0}, "contraction"),
    ],
)
def test_invalid_options_name_the_key(name, options, key):
    with pytest.raises(pydantic.ValidationError) as info:
        make_task(name, options)
    assert isinstance(info.value, ValueError)
    assert [e["loc"] for e in info.value.errors()] == [(key,)]
    # the training helper validates `task.options` with the same models
    with pytest.raises(pydantic.ValidationError):
        TASK_OPTIONS[name].model_validate(options)


def test_shared_options_base():
    """The options most tasks share come from one base, typed and checked the
    same way, with each task's own defaults."""
    from rnnode.data._base import TaskOptions, shared_options

    Base = shared_options(dt=0.5, num_train=3, num_test=2)
    assert issubclass(Base, TaskOptions) and list(Base.model_fields) == [
        "dt",
        "num_train",
        "num_test",
    ]
    assert Base().model_dump() == {"dt": 0.5, "num_train": 3, "num_test": 2}
    for bad in ({"dt": 0.0}, {"num_train": 0}, {"num_test": 2.0}, {"num_steps": 4}):
        with pytest.raises(pydantic.ValidationError) as info:
            Base(**bad)
        assert [e["loc"] for e in info.value.errors()] == [(next(iter(bad)),)]
    with pytest.raises(TypeError, match="not a shared task option: dtt"):
        shared_options(dtt=0.1)
    defaults = {n: TASK_OPTIONS[n]().num_train for n in ("sine", "adding", "copy")}
    assert defaults == {"sine": 32, "adding": 1000, "copy": 1000}
    assert TASK_OPTIONS["oscillator_ctrnn"]().num_train == 32  # its own override
    with pytest.raises(pydantic.ValidationError):
        TASK_OPTIONS["adding"](num_steps=1)  # adding's own, stricter num_steps


def test_options_instances_and_bad_seed():
    options = TASK_OPTIONS["adding"](num_steps=5, num_train=2, num_test=2)
    assert make_task("adding", options).train.xs.shape == (5, 2, 2)
    with pytest.raises(ValueError, match="options"):
        make_task("adding", TASK_OPTIONS["copy"]())
    with pytest.raises(ValueError, match="seed"):
        make_task("adding", seed=-1)
