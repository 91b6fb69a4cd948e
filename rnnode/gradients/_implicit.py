"""Equilibria of recurrent models and their implicit (fixed-point) gradients.

An equilibrium under a constant input `x` is a fixed point `h* = G(h*, x; θ)` of

- a discrete cell: `G(h) = f(h, x)` (`ElmanRNN`, `GRU`, `LSTM`, …), or
- a continuous vector field: `G(r) = r + α F(0, r, x)` with `α = step_size`,
  whose fixed points are exactly the zeros `F(r*, x) = 0` (`CTRNN`, …). For a
  `CTRNN` with `τ = 1` and `α = 1` this is `G(r) = W φ(r) + U x + b`.

The forward solve iterates `G` (`FixedPointIteration`, optionally damped) or
accelerates it (`Anderson`), batched, under `lax.while_loop` with a tolerance and a
step limit.

**Implicit gradient.** Differentiating `h* = G(h*, θ)` gives
`dh*/dθ = (I - J)⁻¹ ∂G/∂θ` with `J = ∂G/∂h` at `h*`. For the cotangent `a` of
`h*` (a row vector) the parameter cotangent is `V ∂G/∂θ`, where `V` solves the
adjoint fixed point

    V = V J + a        (i.e.  V (I - J) = a),

solved here by the Neumann / Richardson iteration `V ← V J + a` using only
vector-Jacobian products `V ↦ V J` (`jax.vjp` of `G` at `h*`): `J` is never formed
or inverted. Alternatively `Implicit(linear_solver=lineax.GMRES(...))` hands
`(I - Jᵀ) Vᵀ = aᵀ` to lineax as a matrix-free operator.

**Convergence condition.** Undamped fixed-point iteration, and the Neumann
iteration of the adjoint, converge iff the spectral radius `ρ(J) < 1` at the
equilibrium (locally: `G` is a contraction there). With damping `β` the condition
is `ρ(I - β(I - J)) < 1`, i.e. every eigenvalue `λ` of `J` has `|1 - β(1 - λ)| < 1`:
for a vector field `J = I + α ∂F/∂r`, so any `F` whose Jacobian eigenvalues all
have negative real part (a stable equilibrium) satisfies it for a small enough
`α β`. `spectral_radius_estimate` checks `ρ(J)` cheaply (power iteration with
JVPs). A solve that does not converge is reported: it raises
`equinox.EquinoxRuntimeError` naming what to change, or with `throw=False` returns
its `RESULTS` code, with NaN-free values (the last finite iterate).
"""

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from .._dynamics import AbstractCell, AbstractDynamics, AbstractVectorField
from .._iterative import (
    RESULTS,
    IterativeSolution,
    default_tol,
    make_result,
    neumann_solve,
    raise_if_failed,
)
from .._losses import mse
from .._model import Model
from ._base import Autodiff

# `G(dynamics, x, h) -> G(h)` for one example.
FixedPointMap = Callable[[AbstractDynamics, Array, Array], Array]

_FORWARD_MESSAGES = (
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
_ADJOINT_MESSAGES = (
    "",
    "Implicit: the adjoint solve `V = V J + a` (J = ∂G/∂h at the equilibrium) did "
    "not reach `tol` within `max_steps`. It converges iff the spectral radius "
    "ρ(J) < 1 (with damping β: ρ(I - β(I - J)) < 1); a forward solve with Anderson "
    "or damping may converge where this does not. Increase `Implicit(max_steps=...)`, "
    "use `Implicit(damping=0.5)`, pass `Implicit(linear_solver=lineax.GMRES(...))`, "
    "or make the network contractive (smaller recurrent weights / gain).",
    "Implicit: the adjoint solve `V = V J + a` diverged (non-finite values): the "
    "spectral radius of J = ∂G/∂h at the equilibrium is ≥ 1. Use "
    "`Implicit(damping=...)`, `Implicit(linear_solver=lineax.GMRES(...))`, or a "
    "contractive network.",
    "Implicit: the lineax solve of `(I - Jᵀ) Vᵀ = aᵀ` did not succeed (not "
    "converged or singular): increase the linear solver's `max_steps` or loosen its "
    "tolerances; `I - J` is singular if J has an eigenvalue 1.",
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


# ---------------------------------------------------------------------------
# Forward solvers
# ---------------------------------------------------------------------------


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


def _forward_solve(
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


def _batch_map(G: FixedPointMap, dynamics, xs):
    return lambda hs: jax.vmap(G, in_axes=(None, 0, 0))(dynamics, xs, hs)


# ---------------------------------------------------------------------------
# Gradient strategies
# ---------------------------------------------------------------------------


class AbstractEquilibriumGradient(eqx.Module):
    """How the equilibrium `h*(θ, x)` is differentiated (passed as `gradient=` to
    `equilibrium` / `equilibrium_loss`)."""

    @abc.abstractmethod
    def solve(
        self,
        G: FixedPointMap,
        dynamics: AbstractDynamics,
        xs: Float[Array, "N m"],
        h0: Float[Array, "N n"],
        solver: AbstractFixedPointSolver,
    ) -> EquilibriumSolution:
        """The batched equilibrium, differentiable in `dynamics` and `xs` by this
        strategy's method (`h0` is not differentiated)."""


class Implicit(AbstractEquilibriumGradient):
    """Implicit-function-theorem gradient of the equilibrium (custom VJP).

    The forward pass stores only `h*`. The backward pass solves the adjoint
    `V = V J + a` (`a`: cotangent of `h*`, `J = ∂G/∂h` at `h*`) by the
    Neumann / Richardson iteration `V ← V + β (V J + a - V)`, using only `jax.vjp`
    of `G` (never forming or inverting `J`), then returns `V ∂G/∂θ` (one more
    vjp, for the whole batch at once). Memory is independent of the number of
    forward iterations. Converges iff `ρ(I - β(I - J)) < 1` (β = 1: `ρ(J) < 1`).

    **Arguments:**

    - `tol`: stop when `max |V J + a - V| ≤ tol · max |a|` (per example); default
      `eps ** 0.75` (≈1.8e-12 in float64).
    - `max_steps`: step limit of the adjoint iteration.
    - `linear_solver`: `None` (the Neumann iteration) or any lineax solver for
      `(I - Jᵀ) Vᵀ = aᵀ` (a `lineax.FunctionLinearOperator`), e.g.
      `lineax.GMRES(rtol=1e-12, atol=1e-12)`; converges without `ρ(J) < 1` as
      long as `I - J` is nonsingular.
    - `throw`: raise `equinox.EquinoxRuntimeError` if the adjoint solve fails;
      with `False`, the (possibly inaccurate) gradient is returned — inspect it
      with `implicit_adjoint`.
    - `damping`: `β` above.

    Reverse mode only (a custom VJP): `jax.jvp` / `jax.jacfwd` through it are not
    supported; `Unrolled()` supports both modes.
    """

    tol: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=1000)
    linear_solver: lx.AbstractLinearSolver | None = None
    throw: bool = eqx.field(static=True, default=True)
    damping: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if not (isinstance(self.max_steps, int) and self.max_steps >= 0):
            raise ValueError(
                f"`max_steps` must be a non-negative integer, got {self.max_steps}"
            )
        if self.tol is not None and not self.tol >= 0:
            raise ValueError(f"`tol` must be non-negative, got {self.tol}")
        if not self.damping > 0:
            raise ValueError(f"`damping` must be positive, got {self.damping}")
        if self.linear_solver is not None and not isinstance(
            self.linear_solver, lx.AbstractLinearSolver
        ):
            raise ValueError(
                "`linear_solver` must be a lineax solver (e.g. `lineax.GMRES(...)`), "
                f"got {self.linear_solver!r}"
            )

    def solve(self, G, dynamics, xs, h0, solver):
        return _implicit_equilibrium((dynamics, xs), h0, G, solver, self)

    def adjoint(
        self,
        G: FixedPointMap,
        dynamics: AbstractDynamics,
        xs: Float[Array, "N m"],
        h_star: Float[Array, "N n"],
        a: Float[Array, "N n"],
    ) -> IterativeSolution:
        """Solve `V = V J + a` per example, with `J = ∂G/∂h` at `h_star`; no
        error is raised here."""

        def one(x, h, ai):
            _, vjp_h = jax.vjp(lambda hh: G(dynamics, x, hh), h)
            vecmat = lambda v: vjp_h(v)[0]
            if self.linear_solver is None:
                return neumann_solve(
                    vecmat,
                    ai,
                    tol=self.tol,
                    max_steps=self.max_steps,
                    damping=self.damping,
                    throw=False,
                )
            op = lx.FunctionLinearOperator(
                lambda v: v - vecmat(v), jax.eval_shape(lambda: ai)
            )
            sol = lx.linear_solve(op, ai, self.linear_solver, throw=False)
            v = sol.value
            r = op.mv(v) - ai
            residual = jnp.max(jnp.abs(r))
            ok = (sol.result == lx.RESULTS.successful) & jnp.all(jnp.isfinite(v))
            v = jnp.where(ok, v, jnp.where(jnp.isfinite(v), v, 0.0))
            steps = sol.stats.get("num_steps", None)
            steps = (
                jnp.asarray(-1, jnp.int32)
                if steps is None
                else jnp.asarray(steps).astype(jnp.int32)
            )
            return IterativeSolution(
                value=v,
                result=make_result(ok, False, True),
                residual=residual,
                num_steps=steps,
            )

        return jax.vmap(one)(xs, h_star, a)


@eqx.filter_custom_vjp
def _implicit_equilibrium(params, h0, G, solver, gradient):
    dynamics, xs = params
    return _forward_solve(_batch_map(G, dynamics, xs), h0, solver, kind="lax")


@_implicit_equilibrium.def_fwd
def _implicit_equilibrium_fwd(perturbed, params, h0, G, solver, gradient):
    del perturbed
    sol = _implicit_equilibrium.fn(params, h0, G, solver, gradient)
    return sol, sol.value


@_implicit_equilibrium.def_bwd
def _implicit_equilibrium_bwd(
    h_star, grad_obj, perturbed, params, h0, G, solver, gradient
):
    del perturbed, h0, solver
    dynamics, xs = params
    a = grad_obj.value
    if a is None:
        a = jnp.zeros_like(h_star)
    adj = gradient.adjoint(G, dynamics, xs, h_star, a)
    V = adj.value
    if gradient.throw:
        V = raise_if_failed(V, adj.result, _ADJOINT_MESSAGES)
    _, vjp_p = eqx.filter_vjp(lambda p: _batch_map(G, p[0], p[1])(h_star), params)
    (grads,) = vjp_p(V)
    return grads


class Unrolled(AbstractEquilibriumGradient):
    """Reverse-mode autodiff through the solver's iterations: the reference for
    `Implicit`. Runs the same loop as a `lax.scan` of the solver's `max_steps`
    steps (each skipped by a `lax.cond` once every example has stopped), of `kind`
    `"bounded"` (stores every iteration: memory `O(max_steps · N · n)`) or
    `"checkpointed"` (stores `√max_steps` of them and recomputes the rest: less
    memory, about one more forward pass of time). Its gradient is the derivative
    of the truncated iteration, which tends to the implicit one as the forward
    solve converges."""

    kind: str = eqx.field(static=True, default="bounded")

    def __check_init__(self):
        if self.kind not in ("bounded", "checkpointed"):
            raise ValueError(
                f"`kind` must be 'bounded' or 'checkpointed', got {self.kind!r}"
            )

    def solve(self, G, dynamics, xs, h0, solver):
        return _forward_solve(_batch_map(G, dynamics, xs), h0, solver, kind=self.kind)


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


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


def _prepare(model, x, h0, step_size):
    if isinstance(model, Model):
        dynamics = model.dynamics
        default_h0 = model.init_state()
    elif isinstance(model, AbstractDynamics):
        dynamics = model
        default_h0 = None
    else:
        raise ValueError(
            f"`model` must be an rnnode Model or dynamics, got {type(model)}"
        )
    G = fixed_point_map(dynamics, step_size=step_size)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"inputs must be floating point, got dtype {x.dtype}")
    if x.ndim not in (1, 2) or x.shape[-1] != dynamics.input_size:
        raise ValueError(
            f"`x` must have shape ({dynamics.input_size},) or (N, "
            f"{dynamics.input_size}), got {x.shape}"
        )
    batched = x.ndim == 2
    xs = x if batched else x[None]
    N, n = xs.shape[0], dynamics.state_size
    if h0 is None:
        h0 = default_h0 if default_h0 is not None else jnp.zeros((n,), xs.dtype)
    h0 = jnp.asarray(h0, dtype=xs.dtype)
    if h0.shape not in ((n,), (N, n)) or (not batched and h0.ndim != 1):
        raise ValueError(
            f"`h0` must have shape ({n},)"
            + (f" or ({N}, {n})" if batched else "")
            + f", got {h0.shape}"
        )
    h0 = jax.lax.stop_gradient(jnp.broadcast_to(h0, (N, n)))
    return dynamics, G, xs, h0, batched


@eqx.filter_jit
def equilibrium(
    model: Model | AbstractDynamics,
    x: Float[ArrayLike, "*batch input"],
    *,
    solver: AbstractFixedPointSolver = FixedPointIteration(),
    gradient: AbstractEquilibriumGradient = Implicit(),
    h0: Float[ArrayLike, "*batch state"] | None = None,
    step_size: float = 1.0,
    throw: bool = True,
    return_info: bool = False,
) -> Float[Array, "*batch state"] | EquilibriumSolution:
    """The equilibrium state under a constant input, differentiable by `gradient`.

    Finds `h* = f(h*, x)` for a discrete cell, or `F(r*, x) = 0` for a vector field
    (as the fixed point of `G(r) = r + step_size · F(0, r, x)`).

    **Arguments:**

    - `model`: a `Model` (its `dynamics` is used; its `init_state()` is the default
      start) or the dynamics themselves.
    - `x`: one input `(m,)` or a batch `(N, m)` (solved together, each example
      stopping on its own).
    - `solver`: `FixedPointIteration(damping=..., rtol=..., atol=...,
      max_steps=...)` (default) or `Anderson(memory=..., ...)`.
    - `gradient`: `Implicit(...)` (default) or `Unrolled()`; `rnnode.Autodiff()`
      is accepted and means `Unrolled()`.
    - `h0`: the starting state(s), `(n,)` or `(N, n)`; not differentiated.
    - `step_size`: `α` of the map for a vector field (ignored for a cell). Any
      `α > 0` has the same equilibria and gradients; it changes convergence
      (`J = I + α ∂F/∂r`). For a `CTRNN` with `τ = 1`, `α = 1` iterates
      `r ← W φ(r) + U x + b`.
    - `throw`: raise `equinox.EquinoxRuntimeError` if the forward solve fails
      (see the message for what to change); with `False` return the last finite
      iterate (and the code, with `return_info=True`).
    - `return_info`: return an `EquilibriumSolution(value, result, residual,
      num_steps)` instead of `h*`.

    Converges when the map is contractive near the equilibrium (spectral radius of
    `∂G/∂h` below 1, or a stable `F` with a small enough `step_size`); see
    `spectral_radius_estimate`. Works under `jit`, `vmap` and `grad`.
    """
    if not isinstance(solver, AbstractFixedPointSolver):
        raise ValueError(
            f"`solver` must be `FixedPointIteration(...)` or `Anderson(...)`, got "
            f"{solver!r}"
        )
    if isinstance(gradient, Autodiff):
        gradient = Unrolled()  # plain reverse mode, through the iterations
    if not isinstance(gradient, AbstractEquilibriumGradient):
        raise ValueError(
            "`gradient` of an equilibrium must be `rnnode.Implicit(...)` or "
            "`rnnode.Unrolled()` (autodiff through the iterations; the sequence "
            f"strategies do not apply), got {gradient!r}"
        )
    dynamics, G, xs, h0, batched = _prepare(model, x, h0, step_size)
    sol = gradient.solve(G, dynamics, xs, h0, solver)
    if throw:
        sol = raise_if_failed(sol, sol.result, _FORWARD_MESSAGES)
    if not batched:
        sol = jax.tree.map(lambda a: a[0], sol)
    return sol if return_info else sol.value


@eqx.filter_jit
def equilibrium_loss(
    model: Model,
    xs: Float[ArrayLike, "*batch input"],
    ys: PyTree[ArrayLike],
    *,
    loss: Callable[[Array, Array], Float[Array, ""]] = mse,
    gradient: AbstractEquilibriumGradient = Implicit(),
    solver: AbstractFixedPointSolver = FixedPointIteration(),
    h0: Float[ArrayLike, "*batch state"] | None = None,
    step_size: float = 1.0,
    throw: bool = True,
) -> Float[Array, ""]:
    """The mean over the batch of `loss(model.output(h*(x)), y)`.

    `xs` is `(m,)` or `(N, m)`, `ys` the matching targets `(k,)` / `(N, k)` (or
    integer labels for `cross_entropy`). A time-major `(1, N, m)` input with
    `(1, N, …)` targets (an equilibrium task's split) is accepted and its time axis
    dropped. Other arguments as in `equilibrium`; `jax.grad` of this uses
    `gradient`.
    """
    xs = jnp.asarray(xs)
    ys = jax.tree.map(jnp.asarray, ys)
    if xs.ndim == 3 and xs.shape[0] == 1:
        xs = xs[0]
        ys = jax.tree.map(lambda y: y[0], ys)
    hs = equilibrium(
        model,
        xs,
        solver=solver,
        gradient=gradient,
        h0=h0,
        step_size=step_size,
        throw=throw,
    )
    if isinstance(model, Model):
        output = model.output
    else:
        output = model.observe
    if xs.ndim == 1:
        return loss(output(hs), ys)
    for leaf in jax.tree.leaves(ys):
        if leaf.shape[:1] != xs.shape[:1]:
            raise ValueError(
                f"targets must share the inputs' batch axis {xs.shape[:1]}, got "
                f"shape {leaf.shape}"
            )
    per = jax.vmap(lambda h, y: loss(output(h), y))(hs, ys)
    return jnp.mean(per)


@eqx.filter_jit
def implicit_adjoint(
    model: Model | AbstractDynamics,
    x: Float[ArrayLike, "*batch input"],
    h_star: Float[ArrayLike, "*batch state"],
    a: Float[ArrayLike, "*batch state"],
    *,
    gradient: Implicit = Implicit(),
    step_size: float = 1.0,
) -> IterativeSolution:
    """The adjoint solve of `Implicit` on its own, with its diagnostics: `V` with
    `V = V J + a`, `J = ∂G/∂h` at `h_star` (per example). Returns an
    `IterativeSolution(value, result, residual, num_steps)`; never raises. Use it to
    inspect a backward pass run with `Implicit(throw=False)`."""
    dynamics, G, xs, _, batched = _prepare(model, x, None, step_size)
    h_star = jnp.asarray(h_star, dtype=xs.dtype).reshape(xs.shape[0], -1)
    a = jnp.asarray(a, dtype=xs.dtype).reshape(h_star.shape)
    sol = gradient.adjoint(G, dynamics, xs, h_star, a)
    if not batched:
        sol = jax.tree.map(lambda v: v[0], sol)
    return sol


@eqx.filter_jit
def spectral_radius_estimate(
    model: Model | AbstractDynamics,
    x: Float[ArrayLike, "*batch input"],
    h: Float[ArrayLike, "*batch state"] | None = None,
    *,
    step_size: float = 1.0,
    num_iterations: int = 200,
    key: PRNGKeyArray | None = None,
) -> Float[Array, "*batch"]:
    """Estimate the spectral radius `ρ(∂G/∂h)` of the fixed-point map at `h`
    (default: the equilibrium, found with `throw=False`) by power iteration with
    Jacobian-vector products: `ρ ≈ (Π ‖J v_k‖)^(1/K)` over the last half of the
    `num_iterations` normalised iterates (robust to complex eigenvalue pairs;
    accuracy improves like `1/K`). Cost: `num_iterations` JVPs. Fixed-point
    iteration and the `Implicit` adjoint converge when it is below 1.
    """
    dynamics, G, xs, h0, batched = _prepare(model, x, None, step_size)
    if h is None:
        hs = equilibrium(
            dynamics,
            xs,
            h0=h0,
            step_size=step_size,
            throw=False,
            gradient=Implicit(),
        )
    else:
        hs = jnp.broadcast_to(jnp.asarray(h, dtype=xs.dtype), h0.shape)
    hs = jax.lax.stop_gradient(hs)
    if key is None:
        key = jr.PRNGKey(0)
    v0 = jr.normal(key, hs.shape, dtype=hs.dtype)
    K = max(int(num_iterations), 2)

    def one(x, h, v):
        def jv(u):
            return jax.jvp(lambda hh: G(dynamics, x, hh), (h,), (u,))[1]

        def body(v, _):
            w = jv(v)
            nw = jnp.linalg.norm(w)
            safe = jnp.where(nw > 0, nw, 1.0)
            return w / safe, jnp.log(jnp.where(nw > 0, nw, jnp.finfo(h.dtype).tiny))

        v = v / jnp.linalg.norm(v)
        _, logs = jax.lax.scan(body, v, None, length=K)
        return jnp.exp(jnp.mean(logs[K // 2 :]))

    rho = jax.vmap(one)(xs, hs, v0)
    return rho if batched else rho[0]
