"""Fixed points of a network under a constant input, their linearisation and
stability (Sussillo & Barak, 2013, "Opening the black box")."""

import dataclasses
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from matplotlib.figure import Figure

from .._dynamics import AbstractVectorField
from .._model import Model
from ._common import new_figure

_METHODS = ("optimise", "newton")
STABILITIES = ("stable", "saddle", "unstable", "marginal")
"""The classes of `FixedPoints.stability`."""


@dataclasses.dataclass(frozen=True)
class FixedPoints:
    """The result of `find_fixed_points` (NumPy arrays, on the host).

    - `points`: `(K, n)` distinct fixed points.
    - `speeds`: `(K,)` `‖F(r)‖` at each (how far from exactly fixed).
    - `jacobians`: `(K, n, n)`: of the vector field `∂F/∂r` (continuous) or of the
      map `∂f/∂h` (discrete).
    - `eigenvalues`: `(K, n)` complex, of `jacobians`, by descending real part
      (continuous) or modulus (discrete).
    - `stability`: one of `"stable"`, `"unstable"`, `"saddle"`, `"marginal"` per
      point: all eigenvalues inside (`Re λ < 0`, resp. `|λ| < 1`); some outside
      and none inside; some outside and some inside; none outside but some
      within `1e-9` of the boundary.
    - `kind`: `"continuous"` or `"discrete"`; `x`: the constant input.
    - `candidates`, `candidate_speeds`: where every start ended, and its speed.
    - `tol`: the speed below which a candidate counted as a fixed point.
    """

    points: np.ndarray
    speeds: np.ndarray
    jacobians: np.ndarray
    eigenvalues: np.ndarray
    stability: tuple[str, ...]
    kind: str
    x: np.ndarray
    candidates: np.ndarray
    candidate_speeds: np.ndarray
    tol: float

    @property
    def num_converged(self) -> int:
        """How many starts ended at a fixed point (before deduplication)."""
        return int(np.sum(self.candidate_speeds <= self.tol))


def find_fixed_points(
    model: Model,
    x: Float[ArrayLike, " input"],
    *,
    num_starts: int = 64,
    key: PRNGKeyArray,
    method: str = "optimise",
    tol: float | None = None,
    states: Float[ArrayLike, "... state"] | None = None,
    noise: float | None = None,
    steps: int | None = None,
    learning_rate: float = 1e-2,
    newton_steps: int = 20,
    unique_tol: float | None = None,
) -> FixedPoints:
    """Fixed points of the dynamics under the constant input `x`.

    Minimises `q(r) = ½‖F(r)‖²` from many starts, where `F` is the vector field
    (continuous models: `dr/dt = F(r)`, fixed points of the flow, whatever the
    integrator) or `F(h) = f(h, x) - h` (discrete cells). Candidates whose speed
    `‖F‖` is at most `tol` are deduplicated, linearised and classified.

    **Arguments:**

    - `model`: an `rnnode.Model`; `x`: the constant input `(input,)`.
    - `num_starts`: how many starts.
    - `key`: a JAX PRNG key (draws the starts).
    - `method`: `"optimise"`: Adam on `q` for `steps` (default 2000) steps with a
      decaying learning rate, then `newton_steps` Newton steps to polish;
      `"newton"`: `steps` (default 50) damped Newton steps (Levenberg-Marquardt
      with a backtracking search on `q`, so a step never increases `q`).
    - `tol`: the largest `‖F(r)‖` accepted as a fixed point; default
      `max(1e-8, 100 ε)` with `ε` the machine epsilon of the model's dtype
      (`1e-8` in float64, about `1e-5` in float32).
    - `states`: visited states `(..., n)` (e.g. `model.rollout(xs)[0]`); starts
      are drawn from them plus Gaussian `noise` (default 10% of their standard
      deviation). Without `states` the starts are `noise · N(0, I)` (default
      `noise = 1`).
    - `learning_rate`: Adam's initial learning rate (decays 100-fold).
    - `unique_tol`: candidates closer than this (Euclidean) are one fixed point;
      default `max(1e-5, 100 tol)`.

    **Returns:** a `FixedPoints`. If no start converges, a warning names the
    smallest speed reached and what to try.
    """
    if not isinstance(model, Model):
        raise ValueError(f"expected an `rnnode.Model`, got {type(model).__name__}")
    if method not in _METHODS:
        raise ValueError(f"`method` must be `optimise` or `newton`, got {method!r}")
    if not (isinstance(num_starts, int) and num_starts >= 1):
        raise ValueError(f"`num_starts` must be a positive integer, got {num_starts!r}")
    n = model.state_size
    x = jnp.asarray(x)
    if x.shape != (model.input_size,):
        raise ValueError(f"`x` must have shape ({model.input_size},), got {x.shape}")
    dtype = jnp.result_type(model.init_state())
    x = x.astype(dtype)
    if tol is None:
        tol = max(1e-8, 100 * float(jnp.finfo(dtype).eps))
    if unique_tol is None:
        unique_tol = max(1e-5, 100 * tol)
    skey, nkey = jr.split(key)
    if states is None:
        base = jnp.zeros((num_starts, n), dtype=dtype)
        noise = 1.0 if noise is None else noise
    else:
        states = jnp.asarray(states, dtype=dtype).reshape(-1, n)
        idx = jr.randint(skey, (num_starts,), 0, states.shape[0])
        base = states[idx]
        noise = 0.1 * float(jnp.std(states)) if noise is None else noise
    starts = base + noise * jr.normal(nkey, (num_starts, n), dtype=dtype)

    if method == "optimise":
        steps = 2000 if steps is None else steps
        ends = _optimise(model, x, starts, steps, learning_rate)
        ends = _newton(model, x, ends, newton_steps)
    else:
        ends = _newton(model, x, starts, 50 if steps is None else steps)
    F, kind = _residual(model, x)
    speeds = np.asarray(jnp.linalg.norm(jax.vmap(F)(ends), axis=-1))
    ends = np.asarray(ends)
    speeds = np.where(np.isfinite(speeds), speeds, np.inf)

    good = np.flatnonzero(speeds <= tol)
    good = good[np.argsort(speeds[good])]
    kept: list[int] = []
    for i in good:
        if all(np.linalg.norm(ends[i] - ends[j]) > unique_tol for j in kept):
            kept.append(int(i))
    if not kept:
        warnings.warn(
            f"`find_fixed_points`: none of {num_starts} starts reached "
            f"‖F‖ <= tol = {tol:g} (smallest {np.min(speeds):.3g}); increase "
            "`steps` or `num_starts`, try `method='newton'`, or raise `tol` to "
            "accept slow points",
            stacklevel=2,
        )
    points = ends[kept].reshape(len(kept), n)
    jac = jax.vmap(jax.jacfwd(F))(jnp.asarray(points, dtype=dtype))
    if kind == "discrete":
        jac = jac + jnp.eye(n, dtype=dtype)
    jac = np.asarray(jac)
    eig = np.linalg.eigvals(jac) if len(kept) else np.zeros((0, n), complex)
    key_fn = (lambda e: -e.real) if kind == "continuous" else (lambda e: -np.abs(e))
    eig = np.stack([e[np.argsort(key_fn(e))] for e in eig]) if len(kept) else eig
    return FixedPoints(
        points=points,
        speeds=speeds[kept],
        jacobians=jac,
        eigenvalues=eig,
        stability=tuple(_classify(e, kind) for e in eig),
        kind=kind,
        x=np.asarray(x),
        candidates=ends,
        candidate_speeds=speeds,
        tol=float(tol),
    )


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
):
    """Fixed points on the first `dims` (2 or 3) principal components of
    `trajectories` (states `(time, state)` or `(time, batch, state)`, drawn as
    lines), marked by stability: filled circles stable, open circles unstable,
    crosses saddles, diamonds marginal; short segments (±) along each saddle's
    unstable directions (the real parts of their eigenvectors). Without
    trajectories the components are those of the fixed points. With `dims=3`
    the axes are 3-D, as in Sussillo & Barak (2013), Fig. 2.

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


def _residual(model: Model, x: Array):
    dyn = model.dynamics
    if isinstance(dyn, AbstractVectorField):
        return (lambda r: dyn(0.0, r, x)), "continuous"
    return (lambda h: dyn(h, x) - h), "discrete"


@eqx.filter_jit
def _optimise(model, x, starts, steps, learning_rate):
    F, _ = _residual(model, x)

    def q(r):
        return 0.5 * jnp.sum(F(r) ** 2)

    schedule = optax.exponential_decay(learning_rate, steps, 0.01)
    opt = optax.adam(schedule)

    def one(r):
        def body(carry, _):
            r, state = carry
            g = jax.grad(q)(r)
            upd, state = opt.update(g, state, r)
            return (optax.apply_updates(r, upd), state), None

        (r, _), _ = jax.lax.scan(body, (r, opt.init(r)), None, length=steps)
        return r

    # optax mixes integer step counts with floats, which strict promotion refuses.
    with jax.numpy_dtype_promotion("standard"):
        return jax.vmap(one)(starts)


@eqx.filter_jit
def _newton(model, x, starts, steps):
    F, _ = _residual(model, x)
    n = starts.shape[1]

    def q(r):
        f = F(r)
        q = 0.5 * jnp.sum(f**2)
        return jnp.where(jnp.isfinite(q), q, jnp.inf)

    alphas = 0.5 ** jnp.arange(12, dtype=starts.dtype)

    def one(r):
        def body(r, _):
            f, J = F(r), jax.jacfwd(F)(r)
            # Levenberg-Marquardt: Newton's step where J is well conditioned,
            # a short gradient step where it is (near) singular.
            JtJ = J.T @ J
            mu = 1e-10 * (1.0 + jnp.trace(JtJ))
            step = jnp.linalg.solve(JtJ + mu * jnp.eye(n, dtype=r.dtype), J.T @ f)
            trials = r[None] - alphas[:, None] * step[None]
            qs = jax.vmap(q)(trials)
            best = jnp.argmin(qs)
            r_new = jnp.where(qs[best] < q(r), trials[best], r)
            return r_new, None

        r, _ = jax.lax.scan(body, r, None, length=steps)
        return r

    return jax.vmap(one)(starts)


def _classify(eig: np.ndarray, kind: str, eps: float = 1e-9) -> str:
    d = eig.real if kind == "continuous" else np.abs(eig) - 1.0
    inside, outside = np.sum(d < -eps), np.sum(d > eps)
    if outside:
        return "saddle" if inside else "unstable"
    return "stable" if inside == eig.size else "marginal"
