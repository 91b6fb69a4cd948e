"""Fixed points of a recurrent model under a constant input, and the solvers
that find them.

An equilibrium under a constant input `x` is a fixed point `h* = G(h*, x; θ)` of

- a discrete cell: `G(h) = f(h, x)` (`ElmanRNN`, `GRU`, `LSTM`, …), or
- a continuous vector field: `G(r) = r + α F(0, r, x)` with `α = step_size`,
  whose fixed points are exactly the zeros `F(r*, x) = 0` (`CTRNN`, …). For a
  `CTRNN` with `τ = 1` and `α = 1` this is `G(r) = W φ(r) + U x + b`.

The forward solve iterates `G` (`FixedPointIteration`, optionally damped) or
accelerates it (`Anderson`), batched, under `lax.while_loop` with a tolerance and a
step limit (or, for reverse mode through the iterations, a bounded `lax.scan`).
It converges when `G` is a contraction near the equilibrium (spectral radius of
`J = ∂G/∂h` below 1; with damping `β`, of `I - β(I - J)`). A solve that does not
converge is reported by its `RESULTS` code, with NaN-free values (the last finite
iterate).

The gradient strategies that differentiate `h*` are in
`rnnode/gradients/_implicit.py`; the entry points `equilibrium` and
`equilibrium_loss` in `rnnode/_equilibrium.py`.
"""

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PyTree

from ._dynamics import AbstractCell, AbstractDynamics, AbstractVectorField
from ._iterative import RESULTS, default_tol, make_result

# `G(dynamics, x, h) -> G(h)` for one example.
FixedPointMap = Callable[[AbstractDynamics, Array, Array], Array]

FORWARD_MESSAGES = (
    "",
    "equilibrium: the fixed-point solve did not reach its tolerance within "
    "`max_steps`. It converges when the map G is a contraction near the equilibrium "
    "(spectral radius of J = ∂G/∂h below 1; with damping β, of I - β(I - J)). "
    "Increase the solver's `max_steps`, add damping "
    "(`FixedPointIteration(damping=0.5)`), use `Anderson()`, use a smaller "
    "`step_size` for a continuous model, or make the network contractive (smaller "
    "recurrent weights / gain). `rnnode.spectral_radius_estimate` estimates ρ(J). "
    "Pass `throw=False` to get the result code instead.",
    "equilibrium: the fixed-point iteration diverged (non-finite values): the "
    "spectral radius of J = ∂G/∂h is probably ≥ 1. Add damping "
    "(`FixedPointIteration(damping=0.5)`), use `Anderson()`, a smaller `step_size` "
    "for a continuous model, or smaller recurrent weights / gain. Pass "
    "`throw=False` to get the result code instead.",
    "equilibrium: the solver failed.",
)


class EquilibriumSolution(eqx.Module):
    """The result of `equilibrium(..., return_info=True)`; every field has the batch
    axis of `x` (none for a single `(m,)` input).

    - `value`: the equilibrium state `h*` (the last finite iterate if the solve failed).
    - `result`: a `rnnode.RESULTS` item; `sol.result == RESULTS.successful` tests
      success elementwise, `sol.result._value` is the integer code (0 = success).
    - `residual`: `max |G(h*) - h*|` (for a vector field `α max |F(h*)|`).
    - `num_steps`: the number of iterations taken.
    """

    value: Float[Array, "*batch state"]
    result: RESULTS
    residual: Float[Array, "*batch"]
    num_steps: Int[Array, "*batch"]


class AbstractFixedPointSolver(eqx.Module):
    """How a fixed point `y = G(y)` is found. One example at a time: `init(y0)`
    makes the solver's state, and `step(y, g, state)` proposes the next iterate
    from the current one `y` and its image `g = G(y)`. The loop (batched, with the
    stopping test `|G(y) - y| ≤ atol + rtol |y|` elementwise) is shared."""

    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float | None]
    max_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def init(self, y: Float[Array, " n"]) -> PyTree[Array]:
        """The solver's state before the first step."""

    @abc.abstractmethod
    def step(
        self, y: Float[Array, " n"], g: Float[Array, " n"], state: PyTree[Array]
    ) -> tuple[Float[Array, " n"], PyTree[Array]]:
        """The next iterate and state, from `y`, `g = G(y)` and the state."""


class FixedPointIteration(AbstractFixedPointSolver):
    """Damped fixed-point (Picard / Krasnosel'skii–Mann) iteration
    `y ← y + β (G(y) - y)` with `β = damping` (1: plain iteration `y ← G(y)`).

    Converges linearly, at the rate `ρ(I - β(I - J))`, when that spectral radius is
    below 1. `rtol`, `atol` default to `eps ** 0.75` of the state's dtype
    (≈1.8e-12 in float64)."""

    damping: float = eqx.field(static=True, default=1.0)
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=1000)

    def __check_init__(self):
        _check_solver(self)

    def init(self, y):
        del y
        return None

    def step(self, y, g, state):
        if self.damping == 1.0:
            return g, state
        return y + self.damping * (g - y), state


class Anderson(AbstractFixedPointSolver):
    """Anderson acceleration (type II) with memory `m`.

    Keeps the last `m` iterates `y_i` and images `g_i = G(y_i)`, with residuals
    `f_i = g_i - y_i`, and takes the affine combination minimising the combined
    residual, by regularised least squares:
    `c = argmin_{Σc=1} ‖Σ c_i f_i‖² + λ ‖c‖²` (with `H = F Fᵀ / tr(F Fᵀ) + λ I`,
    `c ∝ H⁻¹ 1`, by Cholesky), then `y ← Σ c_i (β g_i + (1 - β) y_i)`.
    `λ = max(regularisation, 100 eps)` is relative to the residuals' scale. The first step is a
    (damped) fixed-point step. Falls back to the plain step if the small system is
    degenerate. Usually needs far fewer steps than `FixedPointIteration`, and can
    converge where it does not.
    """

    memory: int = eqx.field(static=True, default=5)
    regularisation: float = eqx.field(static=True, default=1e-10)
    damping: float = eqx.field(static=True, default=1.0)
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=1000)

    def __check_init__(self):
        _check_solver(self)
        if not (isinstance(self.memory, int) and self.memory >= 1):
            raise ValueError(f"`memory` must be a positive integer, got {self.memory}")
        if not self.regularisation >= 0:
            raise ValueError(
                f"`regularisation` must be non-negative, got {self.regularisation}"
            )

    def init(self, y):
        m = self.memory
        buf = jnp.zeros((m,) + y.shape, y.dtype)
        return buf, buf, jnp.asarray(0, jnp.int32)

    def step(self, y, g, state):
        X, Gb, k = state
        m = self.memory
        slot = k % m
        X = X.at[slot].set(y)
        Gb = Gb.at[slot].set(g)
        valid = jnp.arange(m, dtype=jnp.int32) < jnp.minimum(k + 1, m)
        F = jnp.where(valid[:, None], Gb - X, 0.0)
        H = F @ F.T
        tr = jnp.trace(H)
        H = H / jnp.where(tr > 0, tr, 1.0)
        eye = jnp.eye(m, dtype=y.dtype)
        lam = max(self.regularisation, 100 * float(jnp.finfo(y.dtype).eps))
        H = H + lam * eye
        H = jnp.where(valid[:, None] & valid[None, :], H, eye)
        # H is symmetric positive definite: Cholesky (cheaper than LU to compile)
        c = jax.scipy.linalg.cho_solve(
            (jnp.linalg.cholesky(H), True), valid.astype(y.dtype)
        )
        s = jnp.sum(c)
        ok = (
            jnp.isfinite(s)
            & (jnp.abs(s) > jnp.finfo(y.dtype).tiny)
            & jnp.all(jnp.isfinite(c))
        )
        onehot = (jnp.arange(m, dtype=jnp.int32) == slot).astype(y.dtype)
        c = jnp.where(ok, c / jnp.where(ok, s, 1.0), onehot)
        y_next = c @ Gb
        if self.damping != 1.0:
            y_next = self.damping * y_next + (1 - self.damping) * (c @ X)
        return y_next, (X, Gb, k + 1)


def _check_solver(solver):
    if not (isinstance(solver.max_steps, int) and solver.max_steps >= 0):
        raise ValueError(
            f"`max_steps` must be a non-negative integer, got {solver.max_steps}"
        )
    if not solver.damping > 0:
        raise ValueError(f"`damping` must be positive, got {solver.damping}")
    for name in ("rtol", "atol"):
        v = getattr(solver, name)
        if v is not None and not v >= 0:
            raise ValueError(f"`{name}` must be non-negative, got {v}")


def _where(pred, new, old):
    """Per-example select: `pred` has shape `(N,)`; leaves have leading axis N."""

    def sel(a, b):
        p = pred.reshape(pred.shape + (1,) * (a.ndim - 1))
        return jnp.where(p, a, b)

    return jax.tree.map(sel, new, old)


def _all_finite_rows(a: Array) -> Array:
    return jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), axis=1)


def forward_solve(
    G_batch: Callable[[Array], Array],
    y0: Float[Array, "N n"],
    solver: AbstractFixedPointSolver,
    *,
    kind: str,
) -> EquilibriumSolution:
    """Solve `y = G(y)` for a batch `(N, n)`: one loop over the batch, each example
    frozen once it has converged (or diverged), stopping when none is active.
    `kind` is `"lax"` (no reverse mode), `"bounded"` or `"checkpointed"` (reverse
    mode through the iterations, see `_bounded_loop`)."""
    dtype = y0.dtype
    rtol = default_tol(dtype) if solver.rtol is None else solver.rtol
    atol = default_tol(dtype) if solver.atol is None else solver.atol
    max_steps = solver.max_steps

    def converged(y, g):
        return jnp.all(jnp.abs(g - y) <= atol + rtol * jnp.abs(y), axis=-1)

    g0 = G_batch(y0)
    N = y0.shape[0]
    diverged0 = ~_all_finite_rows(g0)
    steps0 = jnp.zeros((N,), jnp.int32)

    def still_active(y, g, steps, diverged):
        return ~converged(y, g) & ~diverged & (steps < max_steps)

    # carry: (y, g = G(y), solver state, steps, diverged, active)
    carry0 = (
        y0,
        g0,
        jax.vmap(solver.init)(y0),
        steps0,
        diverged0,
        still_active(y0, g0, steps0, diverged0),
    )

    def cond(carry):
        return jnp.any(carry[-1])

    def body(carry):
        y, g, state, steps, diverged, act = carry
        y_new, state_new = jax.vmap(solver.step)(y, g, state)
        g_new = G_batch(y_new)
        ok = _all_finite_rows(y_new) & _all_finite_rows(g_new)
        upd = act & ok
        y, g, state = _where(upd, (y_new, g_new, state_new), (y, g, state))
        steps = steps + upd.astype(jnp.int32)
        diverged = diverged | (act & ~ok)
        return y, g, state, steps, diverged, still_active(y, g, steps, diverged)

    if kind == "lax":
        y, g, _, steps, diverged, _ = jax.lax.while_loop(cond, body, carry0)
    else:
        y, g, _, steps, diverged, _ = _bounded_loop(
            cond, body, carry0, max_steps, checkpointed=kind == "checkpointed"
        )
    conv = converged(y, g)
    result = make_result(conv, diverged)
    residual = jnp.max(jnp.abs(g - y), axis=-1)
    residual = jnp.where(jnp.isfinite(residual), residual, jnp.inf)
    return EquilibriumSolution(
        value=y,
        result=result,
        residual=jax.lax.stop_gradient(residual),
        num_steps=steps,
    )


def _bounded_loop(cond, body, carry, max_steps: int, *, checkpointed: bool):
    """`lax.while_loop(cond, body, carry)` cut off at `max_steps` iterations, in a
    form reverse mode can differentiate: a `lax.scan` of `max_steps` steps, each a
    `lax.cond` that skips the work once `cond` is false. Reverse mode stores every
    step's residuals (memory `O(max_steps)`); with `checkpointed=True` the steps
    are scanned in segments of about `√max_steps`, each under `jax.checkpoint`, so
    only the segment boundaries are stored and a segment is recomputed in the
    backward pass (memory `O(√max_steps)`, about one more forward pass of time)."""

    # Under `jax.checkpoint` a step stores only its input carry for reverse mode and
    # recomputes its insides (a few arrays fewer per step, and faster on a CPU).
    body = jax.checkpoint(body)

    def step(carry, _):
        return jax.lax.cond(cond(carry), body, lambda c: c, carry), None

    if max_steps == 0:
        return carry
    if not checkpointed:
        return jax.lax.scan(step, carry, None, length=max_steps)[0]
    seg = max(1, math.isqrt(max_steps - 1) + 1)  # ⌈√max_steps⌉
    num, rest = divmod(max_steps, seg)

    @jax.checkpoint
    def segment(carry, _):
        return jax.lax.scan(step, carry, None, length=seg)[0], None

    carry = jax.lax.scan(segment, carry, None, length=num)[0]
    if rest:
        carry = jax.lax.scan(step, carry, None, length=rest)[0]
    return carry


def batch_map(G: FixedPointMap, dynamics, xs):
    return lambda hs: jax.vmap(G, in_axes=(None, 0, 0))(dynamics, xs, hs)


def fixed_point_map(
    dynamics: AbstractDynamics, *, step_size: float = 1.0
) -> FixedPointMap:
    """The map `G(dynamics, x, h)` whose fixed points are the equilibria: `f(h, x)`
    for a cell, `h + step_size · F(0, h, x)` for a vector field."""
    if isinstance(dynamics, AbstractCell):
        return lambda dyn, x, h: dyn(h, x)
    if isinstance(dynamics, AbstractVectorField):
        if not step_size > 0:
            raise ValueError(f"`step_size` must be positive, got {step_size}")

        def G(dyn, x, h):
            return h + step_size * dyn(jnp.zeros((), h.dtype), h, x)

        return G
    raise ValueError(
        f"`model` must be a Model or rnnode dynamics (a cell or a vector field), "
        f"got {type(dynamics)}"
    )
