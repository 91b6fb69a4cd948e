"""Fixed points across training: found at each checkpoint (warm-started from
the previous checkpoint's points), matched from one checkpoint to the next,
and drawn as they appear, move and vanish."""

import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.optimize
from jaxtyping import ArrayLike, PRNGKeyArray

from .._model import Model
from ._common import new_figure
from ._fixed_point_result import STABILITIES, Affine, FixedPoints
from ._fixed_points import draw_starts, find_fixed_points


@dataclasses.dataclass(frozen=True)
class Tracks:
    """The result of `track_fixed_points`.

    - `steps`: the training step of each checkpoint.
    - `fixed_points`: one `FixedPoints` per checkpoint.
    - `ids`: per checkpoint `(K_i,)`, the track of each point: a point keeps the
      id of the point it was matched to at the previous checkpoint, or starts a
      new one; `num_tracks` ids in all.
    """

    steps: list[int]
    fixed_points: list[FixedPoints]
    ids: list[np.ndarray]
    num_tracks: int

    def track(self, i: int) -> list[tuple[int, np.ndarray, str]]:
        """Track `i` as `(step, point, stability)` per checkpoint it lives in."""
        out = []
        for step, fps, ids in zip(self.steps, self.fixed_points, self.ids, strict=True):
            for k in np.flatnonzero(ids == i):
                out.append((step, fps.points[k], fps.stability[k]))
        return out

    def counts(self) -> list[dict[str, int]]:
        """Per checkpoint, the number of points of each stability."""
        return [
            {s: f.stability.count(s) for s in STABILITIES} for f in self.fixed_points
        ]


def track_fixed_points(
    models: Sequence[Model],
    x: ArrayLike,
    *,
    key: PRNGKeyArray,
    steps: Sequence[int] | None = None,
    states: Callable[[Model], ArrayLike] | None = None,
    num_starts: int = 64,
    noise: float | None = None,
    max_distance: float | None = None,
    **search,
) -> Tracks:
    """Fixed points of each of `models` (e.g. a run's checkpoints, in training
    order) under the constant input `x`, matched between consecutive ones.

    At each checkpoint the starts are the previous checkpoint's points (so a
    point that moves is followed) plus `num_starts` fresh ones from
    `states(model)` (e.g. `lambda m: m.rollout(xs)[0]`) plus `noise`. Points
    of consecutive checkpoints are paired by the assignment of least total
    distance (Hungarian algorithm); a pair farther apart than `max_distance`
    (default: half the median distance between a point and its nearest
    neighbour at the earlier checkpoint, or ∞ with a single point) is not a
    pair: the old point vanishes and the new one appears.

    **Arguments:** `models`; `x`: the constant input; `key`; `steps`: the
    checkpoints' training steps (default `0, 1, …`); `states`, `num_starts`,
    `noise`, `max_distance` as above; `search`: more options of
    `find_fixed_points` (`tol`, `method`, ...).

    **Returns:** a `Tracks`.
    """
    models = list(models)
    if not models:
        raise ValueError("`models` is empty: give at least one checkpoint")
    steps = list(range(len(models))) if steps is None else list(steps)
    if len(steps) != len(models):
        raise ValueError("`steps` needs one entry per model")
    found, ids, prev, next_id = [], [], None, 0
    for model, k in zip(models, jr.split(key, len(models)), strict=True):
        dtype = jnp.result_type(model.init_state())
        visited = None if states is None else states(model)
        fresh = draw_starts(k, visited, num_starts, model.state_size, noise, dtype)
        starts = fresh
        if prev is not None and len(prev):
            starts = jnp.concatenate([jnp.asarray(prev.points, dtype), fresh])
        fps = find_fixed_points(model, x, starts=starts, **search)
        if prev is None or not len(prev) or not len(fps):
            new = np.arange(next_id, next_id + len(fps))
        else:
            new = _match(prev.points, fps.points, ids[-1], max_distance)
            unmatched = new < 0
            new[unmatched] = np.arange(next_id, next_id + unmatched.sum())
        next_id = max(next_id, int(new.max()) + 1) if new.size else next_id
        found.append(fps)
        ids.append(new)
        prev = fps
    return Tracks(steps, found, ids, next_id)


def plot_tracks(
    tracks: Tracks,
    *,
    coordinate: Callable[[np.ndarray], np.ndarray] | None = None,
    ylabel: str | None = None,
    title: str = "fixed points across training",
):
    """Left: one scalar of each point (default: the first principal component
    of the last checkpoint's points; or `coordinate(points (K, n)) → (K,)`)
    against the training step, a line per track, markers by stability (filled
    circle stable, cross saddle, open circle unstable, diamond marginal).
    Right: the number of points of each stability against the step.

    **Returns:** a matplotlib `Figure`.
    """
    if coordinate is None:
        last = next((f for f in reversed(tracks.fixed_points) if len(f) >= 2), None)
        if last is None:

            def coordinate(points):
                return points[:, 0]
        else:
            pca = Affine.pca(last.points, 1)

            def coordinate(points):
                return pca(points)[:, 0]

        ylabel = ylabel or "PC1 of the last checkpoint's points"
    fig, (ax, bx) = new_figure(2, width=5.0, height=3.8)
    per_track: dict[int, list] = {}
    styles = {
        "stable": dict(marker="o", color="k"),
        "saddle": dict(marker="x", color="tab:red"),
        "unstable": dict(marker="o", color="tab:red", facecolors="none"),
        "marginal": dict(marker="D", color="tab:blue"),
    }
    seen = set()
    for step, fps, ids in zip(
        tracks.steps, tracks.fixed_points, tracks.ids, strict=True
    ):
        if not len(fps):
            continue
        y = np.asarray(coordinate(fps.points)).reshape(-1)
        for k, i in enumerate(ids):
            per_track.setdefault(int(i), []).append((step, y[k]))
            s = fps.stability[k]
            style = dict(styles[s])
            if "facecolors" in style:
                style["edgecolors"] = style.pop("color")
            ax.scatter(
                step, y[k], s=18, zorder=3, label=None if s in seen else s, **style
            )
            seen.add(s)
    for pts in per_track.values():
        pts = np.asarray(pts)
        ax.plot(pts[:, 0], pts[:, 1], color="0.6", lw=0.8, zorder=1)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel or "coordinate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    counts = tracks.counts()
    for s in STABILITIES:
        values = [c[s] for c in counts]
        if any(values):
            bx.plot(tracks.steps, values, marker="o", label=s)
    bx.set_xlabel("training step")
    bx.set_ylabel("number of fixed points")
    bx.legend(fontsize=8)
    return fig


def _match(old, new, old_ids, max_distance) -> np.ndarray:
    d = np.linalg.norm(old[:, None] - new[None], axis=-1)
    if max_distance is None:
        if len(old) >= 2:
            nn = np.linalg.norm(old[:, None] - old[None], axis=-1)
            np.fill_diagonal(nn, np.inf)
            max_distance = 0.5 * float(np.median(nn.min(axis=1)))
        else:
            max_distance = np.inf
    rows, cols = scipy.optimize.linear_sum_assignment(d)
    out = np.full(len(new), -1)
    for r, c in zip(rows, cols, strict=True):
        if d[r, c] <= max_distance:
            out[c] = old_ids[r]
    return out
