"""The flip-flop end to end: the task against a direct simulation of its rule, its
options, `rnnode analyse --what fixed_points` (flags, table, JSON) on a small
trained run, and the fixed points of a hand-built network whose attractors are
known (two decoupled bistable units)."""

import importlib.util
import itertools
import json
import math
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pydantic
import pytest

import rnnode as rn
from rnnode import analysis as an
from rnnode.cli import main
from rnnode.data import TASK_OPTIONS, Split, Task, make_task
from rnnode.train import load_config, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(bits=3, num_steps=40, p=0.1, num_train=6, num_test=4)


def _rule(xs):
    """The flip-flop's rule, one step and one channel at a time."""
    T, N, K = xs.shape
    ys = np.zeros((T, N, K))
    for n in range(N):
        for k in range(K):
            held = 0.0
            for t in range(T):
                if xs[t, n, k] != 0:
                    held = 1.0 if xs[t, n, k] > 0 else -1.0
                ys[t, n, k] = held
    return ys


def test_targets_follow_the_rule():
    task = make_task("flipflop", SMALL, seed=2)
    assert (task.input_size, task.output_size, task.dt) == (3, 3, 0.5)
    assert task.rest_input == (0.0, 0.0, 0.0)
    for split in (task.train, task.test):
        assert set(np.unique(split.xs)) <= {-1.0, 0.0, 1.0}
        np.testing.assert_array_equal(split.ys, _rule(split.xs))
        np.testing.assert_allclose(split.weights, 1 / 40)
    # Both signs occur, and some targets are 0 (before a channel's first pulse).
    ys = task.train.ys
    assert (ys == 1).any() and (ys == -1).any() and (ys[0] == 0).any()


def test_pulse_rate_is_p():
    task = make_task("flipflop", dict(bits=4, num_steps=200, p=0.2, num_train=50))
    xs = task.train.xs
    rate = np.mean(xs != 0)  # 40000 Bernoulli(0.2) draws: std 0.002
    assert abs(rate - 0.2) < 0.01
    assert abs(np.mean(xs[xs != 0] > 0) - 0.5) < 0.02


def test_sign_accuracy_leaves_out_target_zero_steps():
    task = make_task("flipflop", SMALL, seed=1)
    split = task.test
    ys = split.ys
    out = np.array(ys)
    out[ys == 0] = -3.0  # no sign to match there: not counted
    metrics = task.metrics(out, split)
    assert metrics["sign_accuracy"] == 1.0 and metrics["chance_sign_accuracy"] == 0.5
    signed = np.argwhere(ys != 0)
    for t, n, k in signed[:5]:
        out[t, n, k] = -0.1 * ys[t, n, k]  # the wrong sign
    metrics = task.metrics(out, split)
    assert metrics["sign_accuracy"] == pytest.approx(1 - 5 / len(signed), abs=1e-15)
    expected = np.mean((out - ys) ** 2)
    assert metrics["mse"] == pytest.approx(expected, rel=1e-12)
    # No pulse at all: nothing to score the sign of.
    quiet = Split(xs=np.zeros((3, 2, 3)), ys=np.zeros((3, 2, 3)), weights=np.ones(3))
    assert math.isnan(task.metrics(np.zeros((3, 2, 3)), quiet)["sign_accuracy"])


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        (dict(p=0.0), "p", "probability in \\(0, 1\\]"),
        (dict(p=1.5), "p", "probability in \\(0, 1\\]"),
        (dict(bits=0), "bits", "greater than or equal to 1"),
        (dict(bits=2.5), "bits", "must be an integer"),
        (dict(num_steps=True), "num_steps", "must be an integer"),
        (dict(dt=-1.0), "dt", "greater than 0"),
        (dict(flips=2), "flips", "Extra inputs"),
    ],
)
def test_options_are_validated(options, key, message):
    with pytest.raises(pydantic.ValidationError, match=message) as info:
        TASK_OPTIONS["flipflop"].model_validate(options)
    assert info.value.errors()[0]["loc"] == (key,)


def test_rest_input_must_match_the_input_size():
    task = make_task("flipflop", SMALL)
    fields = {f: getattr(task, f) for f in Task.__dataclass_fields__}
    with pytest.raises(ValueError, match="`Task.rest_input`"):
        Task(**{**fields, "rest_input": (0.0, 0.0)})


def test_config_errors_name_the_option(capsys):
    assert main(["train", "flipflop", "task.options.p=2"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "rnnode: error: task.options.p: must be a probability in (0, 1], got 2.0"
    )


# The analysis command on a small trained run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flipflop") / "run"
    cfg = load_config(
        "flipflop",
        [
            "task.options.num_steps=20",
            "task.options.num_train=8",
            "task.options.num_test=4",
            "model.hidden_size=6",
            "train.batch_size=8",
            "train.steps=4",
            "train.steps_per_call=2",
            "train.eval_every=2",
            "train.checkpoint_every=4",
            f"out_dir={out}",
        ],
    )
    summary = train(cfg, progress=False)
    assert summary["status"] == "finished"
    return out


def _table_rows(text):
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit() and parts[1] in an.STABILITIES:
            rows.append(parts)
    return rows


def test_analyse_fixed_points_flags_table_and_json(run, capsys):
    args = ["analyse", str(run), "--what", "fixed_points", "--sequences", "2"]
    assert main([*args, "--input", "0.5,0,-1", "--tol", "1e-7", "--starts", "12"]) == 0
    out = capsys.readouterr().out
    data = json.loads((run / "analysis" / "fixed_points.json").read_text())
    assert data["input"] == [0.5, 0.0, -1.0]
    assert data["tol"] == 1e-7 and data["num_starts"] == 12
    assert data["kind"] == "continuous"
    assert (run / "analysis" / "fixed_points.png").stat().st_size > 5000
    # The table, not the JSON, on the terminal: one row per point.
    assert f"{run}: fixed points at input (0.5,0,-1)" in out
    assert '"points"' not in out and "max Re λ" in out
    counts = ", ".join(
        f"{data['counts'][s]} {s}" for s in an.STABILITIES if data["counts"][s]
    )
    assert f"{data['num_fixed_points']} fixed points ({counts}) from 12 starts" in out
    rows = _table_rows(out)
    assert len(rows) == data["num_fixed_points"] >= 1
    for parts in rows:
        i = min(
            range(len(rows)), key=lambda j: abs(data["speeds"][j] - float(parts[2]))
        )
        assert parts[1] == data["stability"][i]
        assert float(parts[3]) == pytest.approx(
            data["leading_eigenvalues"][i], abs=1e-3
        )
        readout = [float(v) for v in " ".join(parts[4:]).strip("()").split(",")]
        np.testing.assert_allclose(readout, data["readouts"][i], atol=0.006)
        assert data["speeds"][i] <= 1e-7
    # The default input is the task's resting input (the same number of starts:
    # nothing is compiled again).
    assert main([*args, "--starts", "12"]) == 0
    out = capsys.readouterr().out
    assert "fixed points at input (0, 0, 0: the task's resting input)" in out
    data = json.loads((run / "analysis" / "fixed_points.json").read_text())
    assert data["input"] == [0.0, 0.0, 0.0] and data["tol"] == 1e-8


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--input", "1,2"], "--input: the model takes 3 input(s), got 2 value(s)"),
        (["--input", "a,b,c"], "--input: expected comma-separated numbers"),
        (["--input", "0,nan,0"], "--input: the values must be finite"),
        (["--tol", "0"], "--tol: must be > 0, got 0.0"),
        (["--tol", "nan"], "--tol: must be > 0, got nan"),
        (["--starts", "0"], "--starts: must be >= 1, got 0"),
        (
            ["--what", "lyapunov", "--tol", "1e-6"],
            "--tol: only used by --what fixed_points, not lyapunov",
        ),
        (["--tols", "1e-4,nan"], "--tols: each must be a finite number > 0"),
        (["--tols", "1e-4,x"], "--tols: expected comma-separated numbers"),
        (["--tol", "1e-6", "--tols", "1e-4"], "--tols: give either --tol or --tols"),
        (["--noise", "-1"], "--noise: must be a finite number >= 0, got -1.0"),
        (["--selection", "a"], "--selection: expected comma-separated input indices"),
        (["--selection", "7"], "--selection: input indices must be in [0, 3)"),
        (
            ["--what", "lyapunov", "--per-context"],
            "--per-context: only used by --what fixed_points, not lyapunov",
        ),
        (
            ["--per-context"],
            "--per-context: task flipflop has no `context` condition",
        ),
        (
            ["--what", "line_attractor"],
            "--what line_attractor: task flipflop has no `context` condition",
        ),
    ],
)
def test_analyse_flag_errors_exit_2(run, flags, message, capsys):
    what = [] if "--what" in flags else ["--what", "fixed_points"]
    assert main(["analyse", str(run), *what, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rnnode: error: {message}"), err


# A hand-built network with known attractors


def test_fixed_points_of_two_decoupled_bistable_units(tmp_path):
    # dr/dt = -r + w tanh(r), W = w I, w > 1: per unit 0 (unstable) and ±r*
    # (stable), r* = w tanh(r*); together 4 stable points (±r*, ±r*), 4 saddles
    # (0, ±r*), (±r*, 0) and an unstable node at 0.
    w = 2.0
    r_star = 1.0
    for _ in range(100):  # Newton on g(r) = w tanh(r) - r
        r_star -= (w * math.tanh(r_star) - r_star) / (w / math.cosh(r_star) ** 2 - 1)
    assert abs(w * math.tanh(r_star) - r_star) < 1e-14
    k1, k2 = jr.split(jr.PRNGKey(0))
    cell = eqx.tree_at(
        lambda c: (c.W, c.U),
        rn.CTRNN(2, 2, key=k1),
        (w * jnp.eye(2), jnp.eye(2)),
    )
    readout = eqx.tree_at(
        lambda r: (r.weight, r.bias), rn.Linear(2, 2, key=k2), (jnp.eye(2), jnp.ones(2))
    )
    model = rn.Model(cell, rn.Euler(0.1), readout)
    # One sequence per fixed point: a kick of (3a, 3b), a, b in {-1, 0, 1}, then
    # rest. A unit not kicked stays at 0 exactly, so the trajectories run along
    # the saddles' stable manifolds and the starts drawn near them find all nine.
    kicks = np.array([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)], dtype=float)
    xs = np.zeros((40, 9, 2))
    xs[:5] = 3.0 * kicks
    result = an.run_analysis(
        model,
        xs,
        what="fixed_points",
        out_dir=tmp_path,
        x=jnp.zeros(2),
        tol=1e-10,
        num_starts=64,
        key=jr.PRNGKey(2),
    )
    assert result["counts"] == {"stable": 4, "saddle": 4, "unstable": 1, "marginal": 0}
    assert result["num_fixed_points"] == 9
    lam_star = -1 + w * (1 - math.tanh(r_star) ** 2)  # < 0
    expected = {
        (a, b): (
            ("stable", lam_star)
            if a and b
            else ("unstable", w - 1)
            if not (a or b)
            else ("saddle", w - 1)
        )
        for a in (-r_star, 0.0, r_star)
        for b in (-r_star, 0.0, r_star)
    }
    found = set()
    for p, stability, lead, eig, out in zip(
        result["points"],
        result["stability"],
        result["leading_eigenvalues"],
        np.asarray(result["eigenvalues"]),  # all real here: a plain list
        result["readouts"],
        strict=True,
    ):
        match = min(expected, key=lambda e: math.dist(e, p))
        np.testing.assert_allclose(p, match, atol=1e-9)
        assert (stability, pytest.approx(lead, abs=1e-9)) == expected[match]
        diag = sorted((-1 + w * (1 - math.tanh(c) ** 2) for c in match), reverse=True)
        np.testing.assert_allclose(eig, diag, atol=1e-9)
        np.testing.assert_allclose(out, np.asarray(p) + 1.0, atol=1e-12)
        found.add(match)
    assert found == set(expected)
    table = an.fixed_point_table(result)
    assert table.splitlines()[0] == (
        "9 fixed points (4 stable, 4 saddle, 1 unstable) from 64 starts, "
        f"{result['num_converged']} converged to speed ‖F‖ <= 1e-10"
    )
    assert [r[1] for r in _table_rows(table)] == ["stable"] * 4 + ["saddle"] * 4 + [
        "unstable"
    ]
    short = an.fixed_point_table(result, max_rows=3)
    assert len(_table_rows(short)) == 3
    assert short.endswith("… 6 more in the JSON file")
    none = {**result, "num_fixed_points": 0, "num_converged": 0, "stability": []}
    none["counts"] = dict.fromkeys(an.STABILITIES, 0)
    assert an.fixed_point_table(none).splitlines() == [
        "0 fixed points from 64 starts, 0 converged to speed ‖F‖ <= 1e-10",
        "(more starts, or a larger tolerance, may find some)",
    ]


def test_three_d_figure_draws_each_unstable_direction(tmp_path):
    cell = eqx.tree_at(
        lambda c: (c.W, c.U),
        rn.CTRNN(3, 1, key=jr.PRNGKey(0)),
        (2.0 * jnp.eye(3), jnp.zeros((3, 1))),
    )
    model = rn.Model(cell, rn.Euler(0.1))
    fps = an.find_fixed_points(
        model,
        jnp.zeros(1),
        num_starts=200,
        key=jr.PRNGKey(3),
        noise=2.0,
        method="newton",
    )
    # 3 bistable units: 27 points; a saddle with j units at 0 has j unstable
    # directions: 12 with one, 6 with two.
    assert sorted(fps.stability).count("saddle") == 18
    hs = model.rollout(jnp.zeros((30, 4, 1)), h0=jnp.array([0.5, -0.2, 0.1]))[0]
    fig = an.plot_fixed_points(fps, hs, dims=3)
    (ax,) = fig.axes
    assert ax.name == "3d"
    segments = [ln for ln in ax.get_lines() if ln.get_color() == "tab:red"]
    assert len(segments) == 12 * 1 + 6 * 2
    with pytest.raises(ValueError, match="`dims` must be 2 or 3"):
        an.plot_fixed_points(fps, dims=4)


def test_fixed_point_options_belong_to_fixed_points(tmp_path):
    model = rn.Model(rn.CTRNN(3, 1, key=jr.PRNGKey(0)), rn.Euler(0.1))
    with pytest.raises(ValueError, match="`tol` is an option of `what='fixed_points'`"):
        an.run_analysis(
            model, jnp.zeros((5, 1)), what="lyapunov", out_dir=tmp_path, tol=1e-6
        )


def test_experiment_describes_the_cube():
    spec = importlib.util.spec_from_file_location(
        "flipflop_experiment", ROOT / "experiments" / "flipflop.py"
    )
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    # A made-up record: the 8 corners (stable) and 12 edge midpoints (saddles,
    # one unstable direction each) of the cube, readouts scaled by 0.9.
    corners = [np.array(c, float) for c in itertools.product((1, -1), repeat=3)]
    edges = [
        np.array(c, float)
        for c in itertools.product((1, 0, -1), repeat=3)
        if sum(v == 0 for v in c) == 1
    ]
    readouts = [0.9 * c for c in corners + edges]
    eig = [[-0.1, -0.2, -0.3]] * 8 + [[0.1, -0.2, -0.3]] * 11 + [[0.1, 0.2, -0.3]]
    record = {
        "kind": "continuous",
        "counts": {"stable": 8, "saddle": 12, "unstable": 0, "marginal": 0},
        "stability": ["stable"] * 8 + ["saddle"] * 12,
        "readouts": [r.tolist() for r in readouts],
        "eigenvalues": eig,
    }
    found = experiment.describe(record)
    assert found["num_stable"] == 8 and found["num_saddles"] == 12
    assert found["all_corners_once"]
    assert found["max_distance_to_corner"] == pytest.approx(0.1 * math.sqrt(3))
    assert [p["signs"] for p in found["stable_points"]][:2] == ["+++", "++-"]
    assert found["saddles_by_channels_near_zero"] == {"1": 12}
    # the last saddle has two unstable directions but one channel near 0
    assert not found["saddle_unstable_dims_equal_channels_near_zero"]
    record["eigenvalues"][-1] = [0.1, -0.2, -0.3]
    assert experiment.describe(record)["saddle_unstable_dims_equal_channels_near_zero"]
    record["stability"][0] = "saddle"  # a corner lost
    assert not experiment.describe(record)["all_corners_once"]
