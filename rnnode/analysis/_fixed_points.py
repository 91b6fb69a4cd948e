"""Fixed points and slow points of a network under constant inputs, their
linearisation and stability (Sussillo & Barak, 2013, "Opening the black box"),
at the level of Golub & Sussillo's FixedPointFinder (2018): one input and one
label per start, starts from visited states plus noise, several tolerances,
outliers, duplicates, input Jacobians and left eigenvectors."""

import warnings
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from .._dynamics import AbstractVectorField
from .._model import Model
from ._fixed_point_result import FixedPoints, classify

_METHODS = ("optimise", "newton")
_DENSE_MAX = 128  # above this many state variables, LM works in a Krylov space
_KRYLOV = 32  # the Krylov dimension for large states
_PATIENCE = 200  # Adam steps without a 0.1% better speed: stalled
_NEWTON_PATIENCE = 20  # Levenberg-Marquardt steps without a 1% better speed


def find_fixed_points(
    model: Model,
    x: Float[ArrayLike, "*starts input"],
    *,
    key: PRNGKeyArray | None = None,
    num_starts: int | None = None,
    starts: Float[ArrayLike, "starts state"] | None = None,
    states: Float[ArrayLike, "... state"] | None = None,
    noise: float | None = None,
    labels: ArrayLike | None = None,
    method: str = "optimise",
    tol: float | Sequence[float] | None = None,
    steps: int | None = None,
    learning_rate: float = 1e-2,
    newton_steps: int = 50,
    unique_tol: float | None = None,
    outlier_scale: float | None = 10.0,
    outlier_distance: float | None = None,
) -> FixedPoints:
    """Fixed points (and slow points) of the dynamics under constant inputs.

    Minimises `q(r) = ½‖F(r, x)‖²` from many starts at once, where `F` is the
    vector field (continuous models: `dr/dt = F(r, x)`, fixed points of the
    flow, whatever the integrator) or `F(h, x) = f(h, x) - h` (discrete cells).
    All starts run in one compiled, vectorised loop (`lax.while_loop`) that
    stops as soon as every start has converged (its speed `‖F‖` at most the
    smallest tolerance) or stalled. Ends at most the largest tolerance fast are
    de-duplicated (per input and label), outliers are set aside, and the rest
    are linearised: `∂F/∂r`, `∂F/∂u`, eigenvalues, right and left eigenvectors.

    **Arguments:**

    - `model`: an `rnnode.Model`.
    - `x`: the constant input, `(input,)` for all starts or `(starts, input)`
      one per start (e.g. one per context).
    - `key`: a JAX PRNG key (draws the starts; not needed with `starts`).
    - `num_starts`: how many starts (default: the number of rows of `x`, else 64).
    - `starts`: the starts themselves `(starts, n)`; otherwise they are drawn:
    - `states`: visited states `(..., n)` (e.g. `model.rollout(xs)[0]`); starts
      are drawn from them (with replacement) plus Gaussian `noise` (default 10%
      of their standard deviation). Without `states` the starts are
      `noise · N(0, I)` (default `noise = 1`).
    - `labels`: one label per start `(starts,)` (e.g. the context), carried to
      the points found from it; default all 0.
    - `method`: `"optimise"`: Adam on `q` (at most `steps`, default 2000, with a
      learning rate decaying 100-fold) until the speed is below `√tol` (`tol`
      when `newton_steps=0`) or stops improving, then Newton to polish; `"newton"`: Newton from the starts
      (at most `steps`, default 200). The steps are Levenberg-Marquardt's
      `d = -(JᵀJ + μI)⁻¹ JᵀF` with Nielsen's update of `μ` (a step is taken
      only if `q` decreases; a start stops when its speed has not improved by
      1% in 20 steps, a slow point): far from a root, short steps down the gradient of
      `q`, so far saddles are reached as by gradient descent; near one,
      Newton's step and its quadratic convergence. The linear solve is exact
      for up to 128 state variables; beyond, the same problem restricted to
      the 32-dimensional Krylov space of `J` and `F` (Arnoldi).
    - `tol`: the largest speed `‖F‖` kept, or a list of them: all points up to
      the largest are kept (slow points too), the search goes on to the
      smallest, and `FixedPoints.at_tol` selects. Default `max(1e-8, 100 ε)`
      with `ε` the machine epsilon of the model's dtype.
    - `learning_rate`: Adam's initial learning rate; `newton_steps`: at most
      this many Newton steps after Adam.
    - `unique_tol`: ends closer than this (Euclidean), with the same input and
      label, are one point (the slowest is kept); default `max(1e-5, 100 tol)`.
    - `outlier_scale`: FixedPointFinder's rule: a point farther from the
      starts' centroid than this many times the starts' mean distance to it is
      an outlier (`None`: off).
    - `outlier_distance`: the nearest-neighbour rule of Golub & Sussillo's JAX
      code: a point farther than this from every other point is an outlier
      (`None`, the default: off).

    **Returns:** a `FixedPoints`, slowest first. If no start converges, a
    warning names the smallest speed reached and what to try.

    **References:** Sussillo & Barak (2013), Neural Computation 25(3);
    Golub & Sussillo (2018), "FixedPointFinder", JOSS 3(31), 1003.
    """
    if not isinstance(model, Model):
        raise ValueError(f"expected an `rnnode.Model`, got {type(model).__name__}")
    if method not in _METHODS:
        raise ValueError(f"`method` must be `optimise` or `newton`, got {method!r}")
    n, m = model.state_size, model.input_size
    dtype = jnp.result_type(model.init_state())
    x = jnp.asarray(x, dtype=dtype)
    if x.ndim not in (1, 2) or x.shape[-1] != m:
        raise ValueError(
            f"`x` must have shape ({m},) or (starts, {m}), got {tuple(x.shape)}"
        )
    if starts is not None:
        starts = jnp.asarray(starts, dtype=dtype)
        if starts.ndim != 2 or starts.shape[1] != n:
            raise ValueError(f"`starts` must have shape (starts, {n})")
    S = _num_starts(num_starts, x, starts)
    xs = jnp.broadcast_to(x, (S, m)) if x.ndim == 1 else x
    if xs.shape[0] != S:
        raise ValueError(f"`x` has {xs.shape[0]} rows but there are {S} starts")
    labels = np.zeros(S, dtype=int) if labels is None else np.asarray(labels)
    if labels.shape != (S,):
        raise ValueError(f"`labels` must have shape ({S},), got {labels.shape}")
    tols = _tolerances(tol, dtype)
    unique_tol = max(1e-5, 100 * tols[-1]) if unique_tol is None else unique_tol
    if starts is None:
        if key is None:
            raise ValueError("pass `key=` to draw the starts (or pass `starts=`)")
        starts = draw_starts(key, states, S, n, noise, dtype)

    if method == "optimise":
        adam = 2000 if steps is None else steps
        newton = newton_steps
    else:
        adam, newton = 0, 200 if steps is None else steps
    ends, speeds, iters = _search(
        model,
        xs,
        starts,
        tol=tols[0],
        switch=float(np.sqrt(tols[0]) if newton else tols[0]),
        adam_steps=adam,
        newton_steps=newton,
        learning_rate=learning_rate,
    )
    ends, speeds, iters = map(np.asarray, (ends, speeds, iters))
    speeds = np.where(np.isfinite(speeds), speeds, np.inf)
    xs_np = np.asarray(xs)
    fates = np.full(S, "slow", dtype=object)
    kept = _deduplicate(ends, xs_np, labels, speeds, tols[-1], unique_tol, fates)
    kept = _exclude_outliers(
        ends, np.asarray(starts), kept, outlier_scale, outlier_distance, fates
    )
    if not kept.size:
        warnings.warn(
            f"`find_fixed_points`: none of {S} starts reached ‖F‖ <= tol = "
            f"{tols[-1]:g} (smallest {np.min(speeds):.3g}); increase `steps` or "
            "`num_starts`, try `method='newton'`, or raise `tol` to accept slow "
            "points",
            stacklevel=2,
        )
    lin = _linearise(model, ends[kept], xs_np[kept], dtype)
    return FixedPoints(
        points=ends[kept].reshape(kept.size, n),
        inputs=xs_np[kept].reshape(kept.size, m),
        labels=labels[kept],
        speeds=speeds[kept],
        iterations=iters[kept],
        start_index=kept,
        **lin,
        tols=tuple(tols),
        starts=np.asarray(starts),
        candidates=ends,
        candidate_speeds=speeds,
        candidate_iterations=iters,
        candidate_inputs=xs_np,
        candidate_labels=labels,
        fates=tuple(str(f) for f in fates),
    )


def residual(model: Model):
    """`(F, kind)`: the function `F(r, x)` whose zeros are the fixed points,
    and `"continuous"` (the vector field) or `"discrete"` (`f(h, x) - h`)."""
    dyn = model.dynamics
    if isinstance(dyn, AbstractVectorField):
        return (lambda r, x: dyn(0.0, r, x)), "continuous"
    return (lambda h, x: dyn(h, x) - h), "discrete"


def linearisation(model: Model, points: ArrayLike, inputs: ArrayLike, dtype=None):
    """The Jacobians at `points` `(K, n)` under `inputs` `(K, m)`: a dict of
    `jacobians` `(K, n, n)` (of the map for discrete cells), `input_jacobians`
    `(K, n, m)`, `eigenvalues` `(K, n)` (sorted: descending real part, resp.
    modulus), `right_eigenvectors` (unit columns), `left_eigenvectors` (rows,
    `L R = I`) and `stability`."""
    dtype = jnp.result_type(model.init_state()) if dtype is None else dtype
    return _linearise(model, np.asarray(points), np.asarray(inputs), dtype)


def newton_polish(
    model: Model,
    points: Float[ArrayLike, "k state"],
    inputs: Float[ArrayLike, "k input"],
    *,
    tol: float,
    steps: int = 50,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Newton steps (as in `find_fixed_points`) from `points` under `inputs`,
    each until its speed is at most `tol`. **Returns:** `(ends, speeds,
    iterations)` as NumPy arrays."""
    dtype = jnp.result_type(model.init_state())
    out = _search(
        model,
        jnp.asarray(inputs, dtype=dtype),
        jnp.asarray(points, dtype=dtype),
        tol=tol,
        switch=tol,
        adam_steps=0,
        newton_steps=steps,
        learning_rate=0.0,
    )
    return tuple(np.asarray(a) for a in out)


def _num_starts(num_starts, x, starts) -> int:
    given = [s for s in (num_starts,) if s is not None]
    if starts is not None:
        given.append(starts.shape[0])
    if x.ndim == 2:
        given.append(x.shape[0])
    S = given[0] if given else 64
    if not (isinstance(S, int) and S >= 1):
        raise ValueError(f"`num_starts` must be a positive integer, got {S!r}")
    if any(g != S for g in given):
        raise ValueError(
            f"`num_starts`, the rows of `starts` and the rows of `x` disagree: {given}"
        )
    return S


def _tolerances(tol, dtype) -> list[float]:
    if tol is None:
        return [max(1e-8, 100 * float(jnp.finfo(dtype).eps))]
    tols = [tol] if np.ndim(tol) == 0 else list(tol)
    if not tols or not all(np.isfinite(t) and t > 0 for t in tols):
        raise ValueError(f"`tol` must be a positive number or a list of them: {tol}")
    return sorted(float(t) for t in tols)


def draw_starts(key, states, S, n, noise, dtype):
    """`S` starts: `states` `(..., n)` drawn with replacement plus `noise` (default
    10% of their std), or `noise · N(0, I)` (default 1) without states."""
    skey, nkey = jr.split(key)
    if states is None:
        base = jnp.zeros((S, n), dtype=dtype)
        noise = 1.0 if noise is None else noise
    else:
        states = jnp.asarray(states, dtype=dtype).reshape(-1, n)
        base = states[jr.randint(skey, (S,), 0, states.shape[0])]
        noise = 0.1 * float(jnp.std(states)) if noise is None else noise
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"`noise` must be >= 0, got {noise}")
    return base + noise * jr.normal(nkey, (S, n), dtype=dtype)


@eqx.filter_jit
def _search(model, xs, starts, *, tol, switch, adam_steps, newton_steps, learning_rate):
    F, _ = residual(model)
    S, n = starts.shape

    def speed_of(R):
        s = jnp.linalg.norm(jax.vmap(F)(R, xs), axis=-1)
        return jnp.where(jnp.isfinite(s), s, jnp.inf)

    iters = jnp.zeros(S, dtype=jnp.int32)
    R = starts
    if adam_steps > 0:
        R, iters = _adam(F, xs, R, iters, switch, adam_steps, learning_rate)
    if newton_steps > 0:
        R, iters = _newton(F, xs, R, iters, tol, newton_steps, n <= _DENSE_MAX)
    return R, speed_of(R), iters


def _adam(F, xs, R, iters, switch, steps, learning_rate):
    opt = optax.adam(optax.exponential_decay(learning_rate, steps, 0.01))

    def speed_and_grad(r, x):
        f, vjp = jax.vjp(lambda r: F(r, x), r)
        s = jnp.linalg.norm(f)
        return jnp.where(jnp.isfinite(s), s, jnp.inf), vjp(f)[0]

    def cond(c):
        t, _, _, _, _, active, _ = c
        return (t < steps) & jnp.any(active)

    def body(c):
        t, R, state, best, since, active, iters = c
        sp, G = jax.vmap(speed_and_grad)(R, xs)
        improved = sp < best * (1 - 1e-3)
        best = jnp.where(improved, sp, best)
        since = jnp.where(improved, 0, since + 1)
        active = active & (sp > switch) & (since < _PATIENCE)
        G = jnp.where(active[:, None] & jnp.isfinite(G), G, 0.0)
        upd, state = opt.update(G, state, R)
        R = jnp.where(active[:, None], R + upd, R)
        return t + 1, R, state, best, since, active, iters + active.astype(jnp.int32)

    S = R.shape[0]
    inf = jnp.full(S, jnp.inf, dtype=R.dtype)
    init = (0, R, opt.init(R), inf, jnp.zeros(S, jnp.int32), inf > 0, iters)
    # optax mixes integer step counts with floats, which strict promotion refuses.
    with jax.numpy_dtype_promotion("standard"):
        _, R, _, _, _, _, iters = jax.lax.while_loop(cond, body, init)
    return R, iters


def _newton(F, xs, R, iters, tol, steps, dense):
    # Levenberg-Marquardt with Nielsen's damping update: d = -(JᵀJ + μI)⁻¹ JᵀF.
    # Large μ: a short step down the gradient of q, as Adam takes (so the
    # starts go where gradient descent on q goes); small μ: Newton's step.
    def one(r, x, mu, nu, active):
        def f_of(r):
            return F(r, x)

        def q(r):
            v = 0.5 * jnp.sum(f_of(r) ** 2)
            return jnp.where(jnp.isfinite(v), v, jnp.inf)

        f, vjp = jax.vjp(f_of, r)
        g = vjp(f)[0]
        if dense:
            J = jax.jacfwd(f_of)(r)
            A = J.T @ J
            d = jnp.linalg.solve(A + mu * jnp.eye(r.shape[0], dtype=r.dtype), -g)
        else:
            # Levenberg-Marquardt inside the Krylov space of J and F: with
            # J V = W H (Arnoldi, W = [V, v]), min ‖F + J V y‖² + μ‖y‖² is
            # min ‖β e₁ + H y‖² + μ‖y‖², a (k+1) × k problem.
            V, H, beta = _arnoldi(lambda v: jax.jvp(f_of, (r,), (v,))[1], f)
            k = H.shape[1]
            e1 = jnp.zeros(k + 1, r.dtype).at[0].set(beta)
            y = jnp.linalg.solve(H.T @ H + mu * jnp.eye(k, dtype=r.dtype), -H.T @ e1)
            d = V[:k].T @ y
        d = jnp.where(jnp.all(jnp.isfinite(d)), d, jnp.zeros_like(d))
        q0, q1 = 0.5 * jnp.sum(f**2), q(r + d)
        predicted = 0.5 * (d @ (mu * d - g))
        rho = (q0 - q1) / jnp.maximum(predicted, jnp.finfo(r.dtype).tiny)
        ok = active & (q1 < q0)
        r = jnp.where(ok, r + d, r)
        shrink = jnp.maximum(1 / 3, 1 - (2 * rho - 1) ** 3)
        mu = jnp.where(ok, mu * shrink, jnp.where(active, mu * nu, mu))
        nu = jnp.where(ok, 2.0, jnp.where(active, 2 * nu, nu))
        return r, jnp.sqrt(2 * jnp.where(ok, q1, q0)), mu, nu, ok

    def cond(c):
        k, _, _, _, active, _, _, _ = c
        return (k < steps) & jnp.any(active)

    def body(c):
        k, R, mu, nu, active, iters, best, since = c
        R, s, mu, nu, moved = jax.vmap(one)(R, xs, mu, nu, active)
        iters = iters + moved.astype(jnp.int32)
        # stalled: no 1% better speed in `_NEWTON_PATIENCE` steps (a slow point)
        improved = s < 0.99 * best
        best = jnp.where(improved, s, best)
        since = jnp.where(improved, 0, since + 1)
        active = active & (s > tol) & (mu < 1e20) & (since < _NEWTON_PATIENCE)
        return k + 1, R, mu, nu, active, iters, best, since

    f0 = jax.vmap(F)(R, xs)
    s0 = jnp.linalg.norm(f0, axis=-1)
    # μ₀ = 10⁻³ max diag(JᵀJ), with max diag(JᵀJ) ≈ ‖J‖² ≥ (‖JᵀF‖ / ‖F‖)²
    g0 = jax.vmap(lambda r, x, f: jax.vjp(lambda r: F(r, x), r)[1](f)[0])(R, xs, f0)
    scale = jnp.sum(g0**2, axis=-1) / jnp.maximum(s0**2, jnp.finfo(R.dtype).tiny)
    mu = 1e-3 * jnp.where(jnp.isfinite(scale) & (scale > 0), scale, 1.0)
    nu = jnp.full_like(mu, 2.0)
    active = ~(s0 <= tol)
    since = jnp.zeros(R.shape[0], jnp.int32)
    init = (0, R, mu, nu, active, iters, jnp.where(active, s0, 0.0), since)
    _, R, _, _, _, iters, _, _ = jax.lax.while_loop(cond, body, init)
    return R, iters


def _arnoldi(matvec, b):
    """`_KRYLOV` Arnoldi steps (modified Gram-Schmidt) on `matvec` from `b`:
    `(V, H, ‖b‖)` with `A V[:k]ᵀ = V[:k+1]ᵀ H`."""
    n = b.shape[0]
    k = min(_KRYLOV, n)
    beta = jnp.linalg.norm(b)
    tiny = jnp.finfo(b.dtype).tiny
    V = jnp.zeros((k + 1, n), b.dtype).at[0].set(b / jnp.maximum(beta, tiny))
    H = jnp.zeros((k + 1, k), b.dtype)

    def step(j, carry):
        V, H = carry
        w = matvec(V[j])
        # all k+1 rows at once, masked to the first j + 1 (twice: stable MGS)
        mask = (jnp.arange(k + 1) <= j).astype(b.dtype)
        h = (V @ w) * mask
        w = w - h @ V
        h2 = (V @ w) * mask
        w = w - h2 @ V
        h = h + h2
        nw = jnp.linalg.norm(w)
        h = h.at[j + 1].set(nw)
        V = V.at[j + 1].set(jnp.where(nw > tiny, w / jnp.maximum(nw, tiny), 0.0))
        return V, H.at[:, j].set(h)

    V, H = jax.lax.fori_loop(0, k, step, (V, H))
    return V, H, beta


def _deduplicate(ends, xs, labels, speeds, tol, unique_tol, fates) -> np.ndarray:
    good = np.flatnonzero(speeds <= tol)
    good = good[np.argsort(speeds[good], kind="stable")]
    if not good.size:
        return good
    p = ends[good]
    d2 = np.sum(p**2, 1)[:, None] + np.sum(p**2, 1)[None] - 2 * p @ p.T
    close = d2 <= unique_tol**2
    close &= np.all(xs[good][:, None] == xs[good][None], axis=-1)
    close &= labels[good][:, None] == labels[good][None]
    removed = np.zeros(good.size, bool)
    kept = []
    for i in range(good.size):
        if removed[i]:
            continue
        kept.append(good[i])
        removed |= close[i]
    fates[good] = "duplicate"
    fates[kept] = "kept"
    return np.asarray(kept, dtype=int)


def _exclude_outliers(ends, starts, kept, scale, distance, fates) -> np.ndarray:
    out = np.zeros(kept.size, bool)
    if scale is not None and kept.size:
        centroid = starts.mean(axis=0)
        mean_dist = np.mean(np.linalg.norm(starts - centroid, axis=1))
        if mean_dist > 0:
            out |= np.linalg.norm(ends[kept] - centroid, axis=1) > scale * mean_dist
    if distance is not None and kept.size >= 2:
        p = ends[kept]
        d = np.linalg.norm(p[:, None] - p[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        out |= d.min(axis=1) > distance
    fates[kept[out]] = "outlier"
    return kept[~out]


@eqx.filter_jit
def _jacobians(model, points, inputs):
    F, kind = residual(model)
    J = jax.vmap(jax.jacfwd(F, argnums=0))(points, inputs)
    if kind == "discrete":
        J = J + jnp.eye(points.shape[1], dtype=points.dtype)
    return J, jax.vmap(jax.jacfwd(F, argnums=1))(points, inputs)


def _linearise(model, points, inputs, dtype) -> dict:
    _, kind = residual(model)
    K, n, m = points.shape[0], model.state_size, model.input_size
    if K:
        J, Ju = _jacobians(
            model, jnp.asarray(points, dtype=dtype), jnp.asarray(inputs, dtype=dtype)
        )
        J, Ju = np.asarray(J), np.asarray(Ju)
        eig, right = np.linalg.eig(J)
    else:
        J, Ju = np.zeros((0, n, n)), np.zeros((0, n, m))
        eig, right = np.zeros((0, n), complex), np.zeros((0, n, n), complex)
    eig, right = eig.astype(complex), right.astype(complex)
    order = np.argsort(-(eig.real if kind == "continuous" else np.abs(eig)), axis=1)
    eig = np.take_along_axis(eig, order, axis=1)
    right = np.take_along_axis(right, order[:, None, :], axis=2)
    left = np.linalg.inv(right) if K else right
    return dict(
        jacobians=J,
        input_jacobians=Ju,
        eigenvalues=eig,
        right_eigenvectors=right,
        left_eigenvectors=left,
        stability=tuple(classify(e, kind) for e in eig),
        kind=kind,
    )
