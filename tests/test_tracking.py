"""Fixed points tracked across a family of networks whose points are known:
one unit `dr/dt = -r + tanh(g r)` as `g` grows through 1 (a pitchfork)."""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.optimize

import rnnode as rn
from rnnode import analysis as an


def _unit(g):
    cell = rn.CTRNN(1, 1, form="rate", key=jr.PRNGKey(0))
    cell = eqx.tree_at(
        lambda c: (c.W, c.U, c.b),
        cell,
        (jnp.full((1, 1), g), jnp.zeros((1, 1)), jnp.zeros(1)),
    )
    return rn.Model(cell, rn.Euler(0.1))


def test_pitchfork_across_checkpoints():
    gains = [0.5, 0.8, 1.5, 2.0, 2.5]
    tracks = an.track_fixed_points(
        [_unit(g) for g in gains],
        jnp.zeros(1),
        key=jr.PRNGKey(0),
        steps=[10 * i for i in range(5)],
        num_starts=16,
        noise=2.0,
        method="newton",
    )
    assert [len(f) for f in tracks.fixed_points] == [1, 1, 3, 3, 3]
    assert tracks.num_tracks == 3
    # 0 keeps its id throughout; ±r*(g) appear at g = 1.5 and are followed
    zero = [
        ids[np.argmin(np.abs(f.points[:, 0]))]
        for f, ids in zip(tracks.fixed_points, tracks.ids, strict=True)
    ]
    assert len(set(zero)) == 1
    for i in set(range(3)) - set(zero):
        track = tracks.track(i)
        assert [s for s, _, _ in track] == [20, 30, 40]
        for (_, p, stab), g in zip(track, gains[2:], strict=True):
            r = scipy.optimize.brentq(lambda r: math.tanh(g * r) - r, 1e-3, 1.0)
            assert abs(abs(p[0]) - r) < 1e-8 and stab == "stable"
        assert len({np.sign(p[0]) for _, p, _ in track}) == 1  # never swaps sides
    assert tracks.counts()[2] == {
        "stable": 2,
        "saddle": 0,
        "unstable": 1,
        "marginal": 0,
    }
    fig = an.plot_tracks(tracks)
    assert len(fig.axes) == 2
