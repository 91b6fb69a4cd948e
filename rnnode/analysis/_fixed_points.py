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

from .._dynamics import AbstractVectorField
from .._model import Model
from ._common import new_figure

_METHODS = ("optimise", "newton")


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


def plot_fixed_points(
    fixed_points: FixedPoints,
    trajectories: Float[ArrayLike, "... state"] | None = None,
    *,
    title: str = "fixed points",
):
    """Fixed points on the first two principal components of `trajectories`
    (states `(time, state)` or `(time, batch, state)`, drawn as lines), marked by
    stability: filled circles stable, open circles unstable, crosses saddles,
    diamonds marginal; short segments along each saddle's unstable directions.
    Without trajectories the components are those of the fixed points.

    **Returns:** a matplotlib `Figure`.
    """
    fp = fixed_points
    n = fp.candidates.shape[1]
    data = fp.points if trajectories is None else np.asarray(trajectories)
    flat = data.reshape(-1, n)
    mean = flat.mean(axis=0) if flat.shape[0] else np.zeros(n)
    comps, var = np.eye(n)[:2], np.zeros(2)
    if flat.shape[0] >= 2:
        _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
        comps, var = vt[:2], s[:2] ** 2 / max(np.sum(s**2), 1e-300)
    if comps.shape[0] == 1:  # a one-unit network: plot against zero
        comps = np.concatenate([comps, np.zeros((1, n))])
        var = np.concatenate([var, [0.0]])

    def proj(a):
        return (np.asarray(a).reshape(-1, n) - mean) @ comps.T

    fig, (ax,) = new_figure(width=5.5, height=5.0)
    if trajectories is not None:
        traj = np.asarray(trajectories)
        traj = traj[:, None] if traj.ndim == 2 else traj
        for b in range(traj.shape[1]):
            p = proj(traj[:, b])
            ax.plot(p[:, 0], p[:, 1], color="0.6", lw=0.8, zorder=1)
    scale = max(float(np.ptp(proj(flat), axis=0).max()), 1e-12) if flat.size else 1.0
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
            ax.scatter(
                p[:, 0], p[:, 1], s=50, zorder=3, label=f"{label} ({len(idx)})", **style
            )
    for i, s in enumerate(fp.stability):
        if s != "saddle":
            continue
        w, v = np.linalg.eig(fp.jacobians[i])
        outside = w.real > 0 if fp.kind == "continuous" else np.abs(w) > 1
        for j in np.flatnonzero(outside):
            d = np.real(v[:, j])
            d = 0.1 * scale * d / max(np.linalg.norm(d), 1e-300)
            seg = proj(np.stack([fp.points[i] - d, fp.points[i] + d]))
            ax.plot(seg[:, 0], seg[:, 1], color="tab:red", lw=1.2, zorder=2)
    ax.set_xlabel(f"PC1 ({100 * var[0]:.0f}% var.)")
    ax.set_ylabel(f"PC2 ({100 * var[1]:.0f}% var.)")
    ax.set_title(title)
    if fp.stability:
        ax.legend(loc="best", fontsize=8)
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
