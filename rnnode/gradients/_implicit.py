"""Implicit (fixed-point) gradients of an equilibrium `h* = G(h*, x; θ)` (see
`rnnode/_fixed_point.py` for the map `G` and its forward solvers), and
`Unrolled`, the reference that differentiates through the solver's iterations.

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

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from .._dynamics import AbstractDynamics
from .._fixed_point import (
    AbstractFixedPointSolver,
    EquilibriumSolution,
    FixedPointMap,
    batch_map,
    forward_solve,
)
from .._iterative import IterativeSolution, make_result, neumann_solve, raise_if_failed

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
    return forward_solve(batch_map(G, dynamics, xs), h0, solver, kind="lax")


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
    _, vjp_p = eqx.filter_vjp(lambda p: batch_map(G, p[0], p[1])(h_star), params)
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
        return forward_solve(batch_map(G, dynamics, xs), h0, solver, kind=self.kind)
