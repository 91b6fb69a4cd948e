"""Iterative linear solves without inversion: the row-vector equation `V A = a`,
solved by repeated multiplication only (a Neumann series / Richardson iteration).

Sign convention. The issue writes the iteration as `V = V A - a`. We solve

    V A = a      by      V_{k+1} = V_k (I - A) + a,

which is that form with `A' = I - A` and `a' = -a` (`V = V A' - a'`). Its fixed
point satisfies `V A = a`; the error obeys `E_{k+1} = E_k (I - A)`, so the
iteration converges from any start **if and only if the spectral radius
`ρ(I - A) < 1`** (every eigenvalue of `A` inside the disc of radius 1 about 1).
Damping `β` iterates `V ← V + β (a - V A)`, i.e. uses `I - βA`; it converges iff
`ρ(I - βA) < 1`.

Scalar case: `v ← v (1 - a) + 1` converges to `1/a` if and only if `0 < a < 2`.

`neumann_solve` is the same iteration written for a general linear map: it solves
`V = V M + a` from `V ↦ V M` (a vector-Jacobian product in the implicit gradient),
converging iff `ρ(M) < 1`; its partial sums are the Neumann series
`a (I + M + M² + …) = a (I - M)⁻¹`.

Both report an `IterativeSolution(value, result, residual, num_steps)`; `result` is
a `RESULTS` item. A solve that fails raises `equinox.EquinoxRuntimeError` unless
`throw=False`, in which case the last finite iterate is returned with its code.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PyTree


class RESULTS(eqx.Enumeration):
    """Outcome codes of the iterative solves (`equilibrium`, its adjoint, and
    `iterative_inverse`). Compare with `sol.result == rnnode.RESULTS.successful`;
    the integer code is `sol.result._value` (0 = successful)."""

    successful = ""
    max_steps_reached = "The iteration did not converge within `max_steps`."
    diverged = "The iteration diverged (produced non-finite values)."
    linear_solver_failed = "The linear solver did not succeed."


# Index-aligned message tables for `eqx.branched_error_if`, per context.
_INVERSE_MESSAGES = (
    "",
    "iterative_inverse: `V ← V (I - A) + a` did not reach `tol` within `max_steps`. "
    "It converges iff the spectral radius ρ(I - βA) < 1 (β = damping; scalar case "
    "0 < βa < 2). Increase `max_steps`, or choose a damping β so that every "
    "eigenvalue λ of A satisfies |1 - βλ| < 1.",
    "iterative_inverse: `V ← V (I - A) + a` diverged: the spectral radius "
    "ρ(I - βA) is ≥ 1 (β = damping; scalar case: a must lie in (0, 2/β)). Rescale "
    "A or use a smaller damping β.",
    "iterative_inverse: the linear solver did not succeed.",
)
_NEUMANN_MESSAGES = (
    "",
    "neumann_solve: `V ← V M + a` did not reach `tol` within `max_steps`. It "
    "converges iff the spectral radius ρ(M) < 1 (with damping β: ρ(I - β(I - M)) "
    "< 1). Increase `max_steps` or use damping.",
    "neumann_solve: `V ← V M + a` diverged: the spectral radius ρ(M) is ≥ 1.",
    "neumann_solve: the linear solver did not succeed.",
)


class IterativeSolution(eqx.Module):
    """What an iterative solve returns.

    - `value`: the solution (the last finite iterate if the solve failed).
    - `result`: a `RESULTS` item (`RESULTS.successful` when converged).
    - `residual`: the max-norm of the final residual (`a - V A`, or `V M + a - V`).
    - `num_steps`: the number of iterations taken.
    """

    value: PyTree[Array]
    result: RESULTS
    residual: Float[Array, "..."]
    num_steps: Int[Array, "..."]


def make_result(
    converged: ArrayLike, diverged: ArrayLike, failed: ArrayLike | None = None
) -> RESULTS:
    """A (possibly batched) `RESULTS` item from boolean masks: successful where
    `converged`, else `diverged`, else `linear_solver_failed` where `failed`, else
    `max_steps_reached`."""
    code = jnp.where(
        diverged, RESULTS.diverged._value, RESULTS.max_steps_reached._value
    )
    if failed is not None:
        code = jnp.where(failed, RESULTS.linear_solver_failed._value, code)
    code = jnp.where(converged, RESULTS.successful._value, code)
    return eqx.tree_at(
        lambda r: r._value, RESULTS.successful, jnp.asarray(code, jnp.int32)
    )


def default_tol(dtype) -> float:
    """The default tolerance `eps(dtype) ** 0.75` (≈1.8e-12 in float64, ≈6.5e-6 in
    float32)."""
    return float(np.finfo(dtype).eps) ** 0.75


def tree_max_abs(tree: PyTree[Array]) -> Float[Array, ""]:
    leaves = [jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree) if jnp.size(x) > 0]
    if not leaves:
        return jnp.asarray(0.0)
    return jnp.max(jnp.stack(leaves))


def tree_all_finite(tree: PyTree[Array]) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack(leaves))


def _tree_axpy(alpha, x, y):
    """`alpha * x + y` leafwise."""
    return jax.tree.map(lambda u, v: alpha * u + v, x, y)


def _linear_fixed_point(
    residual_fn: Callable[[PyTree], PyTree],
    v0: PyTree,
    scale: Float[Array, ""],
    *,
    tol: float,
    max_steps: int,
    damping: float,
) -> IterativeSolution:
    """Iterate `V ← V + β r(V)` until `max|r(V)| ≤ tol · scale`.

    `r` is the residual, affine in `V`. Stops early on non-finite iterates and
    keeps the last finite one."""
    r0 = residual_fn(v0)
    threshold = tol * scale

    def cond(carry):
        _, _, res, steps, diverged = carry
        return (res > threshold) & (steps < max_steps) & ~diverged

    def body(carry):
        v, r, res, steps, _ = carry
        v_new = _tree_axpy(damping, r, v)
        r_new = residual_fn(v_new)
        ok = tree_all_finite(r_new) & tree_all_finite(v_new)
        v, r = jax.tree.map(lambda a, b: jnp.where(ok, a, b), (v_new, r_new), (v, r))
        res = jnp.where(ok, tree_max_abs(r_new), res)
        return v, r, res, steps + ok.astype(steps.dtype), ~ok

    init = (v0, r0, tree_max_abs(r0), jnp.asarray(0, jnp.int32), ~tree_all_finite(r0))
    v, _, res, steps, diverged = jax.lax.while_loop(cond, body, init)
    converged = res <= threshold
    result = make_result(converged, diverged)
    return IterativeSolution(value=v, result=result, residual=res, num_steps=steps)


def raise_if_failed(token: PyTree, result: RESULTS, messages: tuple[str, ...]):
    """Thread an `eqx.branched_error_if` onto `token` that raises the message of
    `result` (indexed like `RESULTS`) when it is not successful. If `token` is a
    solution module with a `value` field, the error is threaded onto its `value`."""
    index = jax.lax.stop_gradient(result._value)
    pred = index != RESULTS.successful._value
    if isinstance(token, eqx.Module) and hasattr(token, "value"):
        value = eqx.branched_error_if(token.value, pred, index, messages)
        return eqx.tree_at(lambda s: s.value, token, value)
    return eqx.branched_error_if(token, pred, index, messages)


@eqx.filter_jit
def neumann_solve(
    vecmat: Callable[[PyTree], PyTree],
    a: PyTree[ArrayLike],
    *,
    tol: float | None = None,
    max_steps: int = 10_000,
    damping: float = 1.0,
    throw: bool = True,
) -> IterativeSolution:
    """Solve `V = V M + a` given only the map `V ↦ V M` (e.g. a `jax.vjp`).

    Iterates `V ← V + β (V M + a - V)` from `V = 0` (`β = damping`; `β = 1` gives
    the partial sums of the Neumann series `a Σ_k M^k`), stopping when
    `max|V M + a - V| ≤ tol · max|a|`. Converges iff `ρ(I - β(I - M)) < 1`; for
    `β = 1` iff the spectral radius `ρ(M) < 1`.

    **Arguments:** `vecmat` (linear, pytree to pytree of the same structure), `a`
    (pytree), `tol` (relative; default `eps ** 0.75`), `max_steps`, `damping`,
    `throw` (raise `equinox.EquinoxRuntimeError` on failure; otherwise return the
    code).

    **Returns:** an `IterativeSolution`.
    """
    a = jax.tree.map(jnp.asarray, a)
    if tol is None:
        tol = default_tol(jax.tree.leaves(a)[0].dtype)
    _check_options(tol, max_steps, damping)

    def residual(v):
        return jax.tree.map(lambda vm, ai, vi: vm + ai - vi, vecmat(v), a, v)

    v0 = jax.tree.map(jnp.zeros_like, a)
    sol = _linear_fixed_point(
        residual,
        v0,
        tree_max_abs(a),
        tol=tol,
        max_steps=max_steps,
        damping=damping,
    )
    if throw:
        sol = raise_if_failed(sol, sol.result, _NEUMANN_MESSAGES)
    return sol


@eqx.filter_jit
def iterative_inverse(
    A: Float[ArrayLike, "*n n"],
    a: Float[ArrayLike, "*k n"] | None = None,
    *,
    tol: float | None = None,
    max_steps: int = 10_000,
    damping: float = 1.0,
    throw: bool = True,
    return_info: bool = False,
) -> Array | IterativeSolution:
    """Solve `V A = a` without inversion or division, by `V ← V (I - A) + a`.

    This is the issue's `V = V A - a` iteration with the sign convention
    `A → I - A`, `a → -a` (see the module docstring). With damping `β` it iterates
    `V ← V + β (a - V A)`.

    **Convergence:** if and only if the spectral radius `ρ(I - βA) < 1`. Scalar
    case: `v ← v (1 - a) + 1` gives `1/a` for `0 < a < 2` (with damping,
    `0 < βa < 2`); e.g. `iterative_inverse(0.5)` is 2. Each step costs one product
    with `A`; the error shrinks by about `ρ(I - βA)` per step.

    **Arguments:**

    - `A`: a scalar or a square `(n, n)` matrix.
    - `a`: the right-hand side: for a matrix `A`, a row vector `(n,)` or rows
      `(k, n)` (then each row `V_i` solves `V_i A = a_i`); `None` means the identity
      (so the result is `A⁻¹`, or `1/A` for a scalar).
    - `tol`: stop when `max|a - V A| ≤ tol · max|a|`; default `eps ** 0.75`
      (≈1.8e-12 in float64).
    - `max_steps`: the step limit.
    - `damping`: `β` above.
    - `throw`: raise `equinox.EquinoxRuntimeError` (with a message naming the
      condition) if the iteration fails; otherwise return the last finite iterate.
    - `return_info`: return an `IterativeSolution(value, result, residual,
      num_steps)` instead of the value alone.
    """
    A = jnp.asarray(A)
    if not jnp.issubdtype(A.dtype, jnp.inexact):
        A = A.astype(float)
    if A.ndim == 0:
        if a is None:
            a = jnp.ones((), A.dtype)
        a = jnp.asarray(a, dtype=A.dtype)

        def vA(v):
            return v * A

    elif A.ndim == 2 and A.shape[0] == A.shape[1]:
        n = A.shape[0]
        if a is None:
            a = jnp.eye(n, dtype=A.dtype)
        a = jnp.asarray(a, dtype=A.dtype)
        if a.ndim not in (1, 2) or a.shape[-1] != n:
            raise ValueError(
                f"`a` must have shape ({n},) or (k, {n}) for A of shape {A.shape}, "
                f"got {a.shape}"
            )

        def vA(v):
            return v @ A

    else:
        raise ValueError(f"`A` must be a scalar or a square matrix, got {A.shape}")
    if tol is None:
        tol = default_tol(A.dtype)
    _check_options(tol, max_steps, damping)
    sol = _inverse_solve((A, a), tol, max_steps, damping, throw)
    if throw:
        sol = raise_if_failed(sol, sol.result, _INVERSE_MESSAGES)
    return sol if return_info else sol.value


def _vA(v, A):
    return v * A if A.ndim == 0 else v @ A


@eqx.filter_custom_vjp
def _inverse_solve(Aa, tol, max_steps, damping, throw):
    """`V A = a` by `V ← V + β (a - V A)`; differentiable in `A` and `a` by the
    implicit function theorem (the backward pass is the same iteration with `Aᵀ`)."""
    del throw
    A, a = Aa
    return _linear_fixed_point(
        lambda v: a - _vA(v, A),
        jnp.zeros_like(a),
        jnp.max(jnp.abs(a)),
        tol=tol,
        max_steps=max_steps,
        damping=damping,
    )


@_inverse_solve.def_fwd
def _inverse_solve_fwd(perturbed, Aa, tol, max_steps, damping, throw):
    del perturbed
    sol = _inverse_solve.fn(Aa, tol, max_steps, damping, throw)
    return sol, sol.value


@_inverse_solve.def_bwd
def _inverse_solve_bwd(V, grad_obj, perturbed, Aa, tol, max_steps, damping, throw):
    # V A = a  ⇒  dV = (da - V dA) A⁻¹.  For the cotangent W of V, U = W A⁻ᵀ solves
    # U Aᵀ = W (the same iteration with Aᵀ, converging iff ρ(I - βA) < 1), and
    # ā = U, Ā = -Vᵀ U.
    del perturbed
    A, a = Aa
    W = grad_obj.value
    if W is None:
        return None, None
    At = A if A.ndim == 0 else A.T
    sol = _linear_fixed_point(
        lambda u: W - _vA(u, At),
        jnp.zeros_like(W),
        jnp.max(jnp.abs(W)),
        tol=tol,
        max_steps=max_steps,
        damping=damping,
    )
    U = sol.value
    if throw:
        U = raise_if_failed(U, sol.result, _INVERSE_MESSAGES)
    if A.ndim == 0:
        gA = -V * U
    elif V.ndim == 1:
        gA = -jnp.outer(V, U)
    else:
        gA = -V.T @ U
    return gA, U


def _check_options(tol, max_steps, damping):
    if not (isinstance(max_steps, (int, np.integer)) and max_steps >= 0):
        raise ValueError(f"`max_steps` must be a non-negative integer, got {max_steps}")
    if isinstance(tol, (int, float)) and not tol >= 0:
        raise ValueError(f"`tol` must be non-negative, got {tol}")
    if isinstance(damping, (int, float)) and not damping > 0:
        raise ValueError(f"`damping` must be positive, got {damping}")
