"""Figures of fixed points: on a PCA (or any affine map) of trajectories, with
their stability and the unstable directions of saddles."""

import numpy as np
from jaxtyping import ArrayLike, Float
from matplotlib.figure import Figure

from ._common import new_figure
from ._fixed_point_result import Affine, FixedPoints


def leading_eigenvalues(fixed_points: FixedPoints) -> np.ndarray:
    """The eigenvalue that decides each point's stability, one number per point:
    the largest real part `max Re λ` of the vector field's Jacobian (continuous
    models; unstable if `> 0`), or the largest modulus `max |λ|` of the map's
    Jacobian (discrete cells; unstable if `> 1`)."""
    eig = fixed_points.eigenvalues
    if not len(eig):
        return np.zeros(0)
    if fixed_points.kind == "continuous":
        return eig.real.max(axis=1)
    return np.abs(eig).max(axis=1)


def plot_fixed_points(
    fixed_points: FixedPoints,
    trajectories: Float[ArrayLike, "... state"] | None = None,
    *,
    title: str = "fixed points",
    dims: int = 2,
    transform: Affine | None = None,
):
    """Fixed points on the first `dims` (2 or 3) principal components of
    `trajectories` (states `(time, state)` or `(time, batch, state)`, drawn as
    lines), marked by stability: filled circles stable, open circles unstable,
    crosses saddles, diamonds marginal; short segments (±) along each saddle's
    unstable directions (the real parts of their eigenvectors). Without
    trajectories the components are those of the fixed points. With `dims=3`
    the axes are 3-D, as in Sussillo & Barak (2013), Fig. 2. `transform` (an
    `Affine`, e.g. `Affine.pca(...)` of other trajectories) replaces the PCA.

    **Returns:** a matplotlib `Figure`.
    """
    if dims not in (2, 3):
        raise ValueError(f"`dims` must be 2 or 3, got {dims!r}")
    fp = fixed_points
    n = fp.candidates.shape[1]
    data = fp.points if trajectories is None else np.asarray(trajectories)
    flat = data.reshape(-1, n)
    mean = flat.mean(axis=0) if flat.shape[0] else np.zeros(n)
    comps, var = np.eye(n)[:dims], np.zeros(dims)
    if flat.shape[0] >= 2:
        _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
        comps, var = vt[:dims], s[:dims] ** 2 / max(np.sum(s**2), 1e-300)
    if transform is not None:
        comps, mean = transform.components[:dims], transform.mean
        var = (
            np.zeros(dims)
            if transform.explained is None
            else transform.explained[:dims]
        )
    if comps.shape[0] < dims:  # fewer units than axes: plot against zero
        missing = dims - comps.shape[0]
        comps = np.concatenate([comps, np.zeros((missing, n))])
        var = np.concatenate([var, np.zeros(missing)])

    def proj(a):
        return ((np.asarray(a).reshape(-1, n) - mean) @ comps.T).T

    if dims == 3:
        fig = Figure(figsize=(6.4, 5.6), layout="constrained")
        ax = fig.add_subplot(projection="3d")
    else:
        fig, (ax,) = new_figure(width=5.5, height=5.0)
    box = None
    if dims == 3 and flat.shape[0] >= 2:
        # Brief excursions (e.g. the kicks of input pulses) would shrink the
        # fixed points to a dot: the box is the fixed points' with a margin
        # (or 98% of the states without them); lines leaving it are cut.
        ref = proj(fp.points) if len(fp.points) >= 2 else proj(flat)
        lo, hi = np.percentile(ref, [0, 100] if len(fp.points) >= 2 else [1, 99], 1)
        pad = 0.3 * np.maximum(hi - lo, max(1e-3 * max(hi - lo), 1e-12))
        box = (lo - pad, hi + pad)
    if trajectories is not None:
        traj = np.asarray(trajectories)
        traj = traj[:, None] if traj.ndim == 2 else traj
        alpha = 0.8 if traj.shape[1] < 4 else 0.5
        for b in range(traj.shape[1]):
            p = proj(traj[:, b])
            if box is not None:  # break the line where it leaves the box
                outside = np.any((p < box[0][:, None]) | (p > box[1][:, None]), axis=0)
                p = np.where(outside, np.nan, p)
            ax.plot(*p, color="0.55", lw=0.7, alpha=alpha, zorder=1)
    scale = max(float(np.ptp(proj(flat), axis=1).max()), 1e-12) if flat.size else 1.0
    if box is not None:
        scale = float(np.max(box[1] - box[0]))
    styles = {
        "stable": dict(marker="o", facecolors="k", edgecolors="k"),
        "unstable": dict(marker="o", facecolors="none", edgecolors="k"),
        "saddle": dict(marker="x", c="tab:red"),
        "marginal": dict(marker="D", c="tab:blue"),
    }
    for label, style in styles.items():
        idx = [i for i, s in enumerate(fp.stability) if s == label]
        if idx:
            p = proj(fp.points[idx])
            ax.scatter(*p, s=45, zorder=3, label=f"{label} ({len(idx)})", **style)
    label = "saddles' unstable directions"
    length = (0.15 if dims == 3 else 0.1) * scale  # half a segment
    for i, s in enumerate(fp.stability):
        if s != "saddle":
            continue
        w, v = np.linalg.eig(fp.jacobians[i])
        outside = w.real > 0 if fp.kind == "continuous" else np.abs(w) > 1
        for j in np.flatnonzero(outside):
            d = np.real(v[:, j])
            d = length * d / max(np.linalg.norm(d), 1e-300)
            seg = proj(np.stack([fp.points[i] - d, fp.points[i] + d]))
            ax.plot(*seg, color="tab:red", lw=1.5, zorder=2, label=label)
            label = None  # one legend entry for all
    for axis, k in zip("xyz", range(dims), strict=False):
        getattr(ax, f"set_{axis}label")(f"PC{k + 1} ({100 * var[k]:.0f}% var.)")
        if box is not None:
            getattr(ax, f"set_{axis}lim")(box[0][k], box[1][k])
    ax.set_title(title)
    if fp.stability:
        ax.legend(loc="upper left", fontsize=8)
    return fig
