"""Fixed points against closed forms: an exact line attractor (its zero mode,
left eigenvector and input projections), the folds of one unit
`dr/dt = -r + tanh(g r + u)` by continuation, per-start inputs and labels,
the duplicate and outlier rules on built data, and saving and loading."""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import rnnode as rn
from rnnode import analysis as an


def _line_attractor(key, n=4, m=2):
    # J = R diag(0, -0.5, -1, -2) R⁻¹: a line of fixed points along R[:, 0].
    kr, ku = jr.split(key)
    R = np.eye(n) + 0.3 * np.asarray(jr.normal(kr, (n, n)))
    lam = np.array([0.0, -0.5, -1.0, -2.0])
    J = R @ np.diag(lam) @ np.linalg.inv(R)
    U = np.asarray(jr.normal(ku, (n, m)))
    cell = rn.CTRNN(n, m, activation="identity", key=key)
    cell = eqx.tree_at(lambda c: (c.W, c.U), cell, (jnp.asarray(J + np.eye(n)), U))
    rho = R[:, 0] / np.linalg.norm(R[:, 0])
    left = np.linalg.inv(R)[0] * np.linalg.norm(R[:, 0])  # left · rho = 1
    return rn.Model(cell, rn.Euler(0.1)), rho, left, lam, U


def test_exact_line_attractor(getkey):
    model, rho, left, lam, U = _line_attractor(getkey())
    fps = an.find_fixed_points(
        model, jnp.zeros(2), num_starts=24, key=getkey(), method="newton"
    )
    assert len(fps) >= 3  # points all along the line, not one
    off_line = fps.points - np.outer(fps.points @ rho, rho)
    # ‖F‖ <= 1e-8 and the off-line modes decay at rates >= 0.5: within
    # κ(R) · 2e-8 of the line
    np.testing.assert_allclose(off_line, 0.0, atol=1e-7)
    assert np.ptp(fps.points @ rho) > 0.5
    for k in range(len(fps)):
        np.testing.assert_allclose(fps.eigenvalues[k].real, lam, atol=1e-9)
        r, sel = fps.right_eigenvectors[k][:, 0], fps.left_eigenvectors[k][0]
        # the slow mode's projector r ⊗ l is the known one (signs cancel)
        np.testing.assert_allclose(np.outer(r, sel), np.outer(rho, left), atol=1e-9)
        # the selection vector's projections of the inputs: l · U
        np.testing.assert_allclose(
            (sel @ fps.input_jacobians[k]) * (r @ rho), left @ U, atol=1e-9
        )
        np.testing.assert_allclose(fps.input_jacobians[k], U, atol=1e-12)
    np.testing.assert_allclose(
        np.einsum("kij,kjl->kil", fps.left_eigenvectors, fps.right_eigenvectors),
        np.broadcast_to(np.eye(4), (len(fps), 4, 4)),
        atol=1e-9,
    )


def _one_unit(g):
    cell = rn.CTRNN(1, 1, form="rate", key=jr.PRNGKey(0))
    cell = eqx.tree_at(
        lambda c: (c.W, c.U, c.b),
        cell,
        (jnp.full((1, 1), g), jnp.ones((1, 1)), jnp.zeros(1)),
    )
    return rn.Model(cell, rn.Euler(0.1))


def test_folds_of_one_unit_by_continuation():
    # r = tanh(g r + u) folds where g (1 - r²) = 1: r* = ±√(1 - 1/g),
    # u* = ∓(g r* - atanh r*).
    g = 2.0
    model = _one_unit(g)
    r_star = math.sqrt(1 - 1 / g)
    u_star = g * r_star - math.atanh(r_star)
    path = np.linspace(-1.0, 1.0, 41)[:, None]
    cont = an.continue_fixed_points(model, path, key=jr.PRNGKey(1), num_starts=8)
    assert len(cont.branches) == 1  # one S-shaped branch through both folds
    folds = sorted(cont.bifurcations, key=lambda b: b.input[0])
    assert [b.kind for b in folds] == ["fold", "fold"]
    np.testing.assert_allclose(
        [b.input[0] for b in folds], [-u_star, u_star], atol=1e-6
    )
    np.testing.assert_allclose(
        [b.point[0] for b in folds], [r_star, -r_star], atol=1e-6
    )
    for b in folds:
        assert abs(b.eigenvalue) < 1e-5
    branch = cont.branches[0]
    np.testing.assert_allclose(
        branch.points[:, 0],
        np.tanh(g * branch.points[:, 0] + branch.inputs[:, 0]),
        atol=1e-9,
    )
    runs = [branch.stability[0]]
    for s in branch.stability[1:]:
        if s != runs[-1]:
            runs.append(s)
    assert runs == ["stable", "unstable", "stable"]
    assert branch.stopped == "path_end"
    # a branch cut short says so
    short = an.continue_fixed_points(
        model, path, key=jr.PRNGKey(1), num_starts=8, max_points=5
    )
    assert [b.stopped for b in short.branches] == ["max_points"]
    assert len(short.branches[0].s) == 5
    assert branch.s[0] == 0.0 and branch.s[-1] == pytest.approx(2.0, abs=1e-12)
    fig = an.plot_bifurcation(cont)
    assert len(fig.axes[0].collections) == 2  # the two folds marked


def test_inputs_and_labels_per_start():
    # At u = 0: -r*, 0, r* (r* = tanh(g r*)); at u = 1 one point only.
    g = 2.0
    model = _one_unit(g)
    x = np.repeat([[0.0], [1.0]], 16, axis=0)
    labels = np.repeat(["rest", "pushed"], 16)
    fps = an.find_fixed_points(
        model, x, labels=labels, key=jr.PRNGKey(2), noise=2.0, method="newton"
    )
    rest, pushed = fps.with_label("rest"), fps.with_label("pushed")
    assert len(rest) == 3 and len(pushed) == 1
    np.testing.assert_allclose(rest.inputs, 0.0)
    np.testing.assert_allclose(pushed.inputs, 1.0)
    r = np.concatenate([rest.points, pushed.points])[:, 0]
    u = np.concatenate([rest.inputs, pushed.inputs])[:, 0]
    np.testing.assert_allclose(r, np.tanh(g * r + u), atol=1e-10)
    assert sorted(rest.stability) == ["stable", "stable", "unstable"]
    # per point: its start, its input and label; slowest first
    assert np.all(fps.candidate_labels[fps.start_index] == fps.labels)
    np.testing.assert_array_equal(fps.candidate_inputs[fps.start_index], fps.inputs)
    assert np.all(np.diff(fps.speeds) >= 0)
    assert fps.iterations.max() >= 1
    with pytest.raises(ValueError, match="read `inputs`"):
        _ = fps.x


def _built(**options):
    # dr/dt = -r (identity activation, W = 0): the speed of a point is its norm,
    # and with no steps the ends are the starts.
    cell = rn.CTRNN(2, 1, activation="identity", key=jr.PRNGKey(0))
    cell = eqx.tree_at(
        lambda c: (c.W, c.U), cell, (jnp.zeros((2, 2)), jnp.zeros((2, 1)))
    )
    starts = np.array(
        [
            [1.0, 0.0],
            [1.0 + 1e-6, 0.0],  # a duplicate of the first (slower: dropped)
            [1.0 - 2e-6, 0.0],  # a duplicate, the slowest: kept
            [0.0, 1.5],
            [0.0, 1.5 + 1e-6],  # same point, other label: not a duplicate
            [3.0, 3.0],  # slower than every tolerance
            [0.0, -0.5],
        ]
    )
    labels = np.array([0, 0, 0, 0, 1, 0, 0])
    return an.find_fixed_points(
        rn.Model(cell, rn.Euler(0.1)),
        jnp.zeros(1),
        starts=starts,
        labels=labels,
        tol=[1.0, 2.0],
        steps=0,
        newton_steps=0,
        unique_tol=1e-3,
        **options,
    )


def test_duplicates_outliers_and_tolerances():
    fps = _built(outlier_scale=None)
    assert fps.fates == (
        "duplicate",
        "duplicate",
        "kept",
        "kept",
        "kept",
        "slow",
        "kept",
    )
    np.testing.assert_array_equal(fps.start_index, [6, 2, 3, 4])  # slowest first
    np.testing.assert_allclose(fps.speeds, [0.5, 1 - 2e-6, 1.5, 1.5 + 1e-6])
    assert len(fps.at_tol(1.0)) == 2 and fps.tols == (1.0, 2.0)
    # FixedPointFinder's rule: farther from the starts' centroid than
    # `scale` times their mean distance to it.
    starts = fps.starts
    c = starts.mean(axis=0)
    mean = np.mean(np.linalg.norm(starts - c, axis=1))
    dist = np.linalg.norm(fps.points - c, axis=1)
    scale = float(np.sort(dist)[-2] / mean + 1e-3)  # the farthest one only
    out = _built(outlier_scale=scale)
    far = fps.start_index[np.argmax(dist)]
    assert out.fates[far] == "outlier" and len(out) == 3
    # The nearest-neighbour rule: (0, -0.5) and (1, 0) are 1.12 apart, 2.0
    # and 1.8 from the pair at (0, 1.5), which are each other's neighbours.
    nn = _built(outlier_scale=None, outlier_distance=1.5)
    assert len(nn) == 4
    nn = _built(outlier_scale=None, outlier_distance=0.9)
    assert sorted(nn.start_index.tolist()) == [3, 4]


def test_save_load_select_join(tmp_path):
    fps = _built(outlier_scale=None)
    path = fps.save(tmp_path / "fps")
    assert path.name == "fps.npz"
    back = an.FixedPoints.load(path)
    for field in fps.__dataclass_fields__:
        a, b = getattr(fps, field), getattr(back, field)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, field
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b, field
    two = an.FixedPoints.join([fps, fps.select([1, 0])])
    assert len(two) == 6 and len(two.fates) == 14
    np.testing.assert_array_equal(two.start_index[4:], fps.start_index[[1, 0]] + 7)
    np.testing.assert_array_equal(two.candidates[two.start_index], two.points)
    assert "4 continuous fixed points" in fps.summary()
    proj = an.Affine(np.array([[1.0, 0.0]]), np.zeros(2))
    np.testing.assert_allclose(fps.project(proj)[:, 0], fps.points[:, 0])


def test_run_analysis_per_context_and_line_attractor(getkey, tmp_path):
    # The exact line attractor again, through `run_analysis`: two "contexts"
    # with the same input; the selection vector's projections are left · U.
    model, rho, left, lam, U = _line_attractor(getkey())
    xs = np.zeros((6, 4, 2))
    contexts = np.array([2, 1, 2, 1])
    rec = an.run_analysis(
        model,
        xs,
        what="fixed_points",
        out_dir=tmp_path,
        contexts=contexts,
        stimulus=[0, 1],
        starts_from="noise",
        num_starts=8,
        method="newton",
        key=getkey(),
    )
    assert set(rec["labels"]) == {1, 2} and rec["num_starts"] == 16
    np.testing.assert_allclose(
        rec["selection_projections"],
        np.broadcast_to(left @ U, (rec["num_fixed_points"], 2)),
        atol=1e-9,
    )
    table = an.fixed_point_table(rec)
    assert "label" in table.splitlines()[1] and "sel·u1" in table.splitlines()[1]
    # visited states spread by random input, which is 0 at the first step
    # (the analysed input: any other would leave no fixed point on the line)
    noisy = 0.3 * np.asarray(jr.normal(getkey(), (6, 4, 2)))
    noisy[0] = 0.0
    rec = an.run_analysis(
        model,
        noisy,
        what="line_attractor",
        out_dir=tmp_path,
        contexts=contexts,
        stimulus=[0, 1],
        tol=1e-2,  # slow points: within 1e-2 / 0.5 of the line
        num_starts=16,
        noise=1.0,
        key=getkey(),
    )
    for c in rec["contexts"]:
        assert c["num_slow_points"] >= 2 and c["variance_on_line"] > 0.99
        assert abs(c["slow_eigenvalue_median"]) < 1e-9
        assert c["next_eigenvalue_median"] == pytest.approx(lam[1], abs=1e-9)
        # signs follow the line's (arbitrary) orientation
        np.testing.assert_allclose(
            np.abs(c["projections_median"]), np.abs(left @ U), atol=1e-9
        )
    # context 1's relevant input is stimulus 0, context 2's is stimulus 1
    for c, j in zip(rec["contexts"], (0, 1), strict=True):
        assert c["relevant_projection_median"] == pytest.approx(abs((left @ U)[j]))
        assert c["irrelevant_projection_median"] == pytest.approx(
            abs((left @ U)[1 - j])
        )
    assert "var. on line" in an.line_attractor_table(rec)
