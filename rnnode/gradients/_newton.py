"""The trajectory as a fixed point: Newton's method on the whole sequence at once,
each iteration a linear recurrence solved in parallel over time. The machinery
shared by `DEER` and `ELK`.

For `h_t = f(h_{t-1}, x_t)`, `t = 1 … T`, the states `h = (h_1, …, h_T)` are the
root of the residual `r_t(h) = h_t − f(h_{t-1}, x_t)`. Linearising `f` about the
current iterate `h⁽ⁱ⁾` gives a *linear* recurrence for the next one,

    h_t = A_t h_{t-1} + b_t,   A_t = ∂f/∂h (h⁽ⁱ⁾_{t-1}),   b_t = f(h⁽ⁱ⁾_{t-1}) − A_t h⁽ⁱ⁾_{t-1},

which a parallel associative scan solves in depth `O(log T)` (`DEER`, Lim et
al., 2024), or which a Levenberg–Marquardt trust region turns into a
linear-Gaussian smoothing problem (`ELK`, Gonzalez et al., 2024). After `k`
Newton iterations the first `k` states are exact (each depends only on the exact
ones before it), so undamped Newton needs at most `T` iterations; Gonzalez et
al. (2025) showed that it needs few when the dynamics are predictable (largest
Lyapunov exponent negative) and up to `T` when they are chaotic.

**The gradient** at the solution needs no Newton iteration: the adjoint
`λ_t = a_t ∂l_t/∂h_t + A_{t+1}ᵀ λ_{t+1}` (the `V = V J + a` of implicit gradients,
for the whole trajectory) is one reverse linear scan of the dense `A_tᵀ` (quasi
methods: a quasi-Newton iteration of the same linear system with the diagonal of
`A_t`, by vector-Jacobian products, also exact after at most `T` iterations), and
`dL/dθ = Σ_t (∂f_t/∂θ)ᵀ λ_t + Σ_t a_t ∂l_t/∂θ` is one vector-Jacobian product of
the step `vmap`-ped over time at the solution.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from .._iterative import (
    RESULTS,
    default_tol,
    make_result,
    raise_if_failed,
    tree_all_finite,
)
from .._linear_scan import linear_scan
from .._model import Model, check_inputs
from .._step_inputs import AbstractStepInputs
from ._base import AbstractGradient
from ._rtrl_structured import has_structure, structured_jacobians


class TrajectorySolution(eqx.Module):
    """The result of a parallel-in-time solve (`parallel_rollout`).

    - `value`: the states `h_1 … h_T`, `(time, state)` or `(time, batch, state)`
      (the last finite iterate if the solve failed).
    - `result`: a `rnnode.RESULTS` item: `successful`, `max_steps_reached` or
      `diverged` (non-finite values; the last finite iterate is kept).
    - `residual`: `max_t |h_t − f(h_{t-1}, x_t)|` of `value`.
    - `num_steps`: the number of Newton iterations taken.
    - `residuals`: the residual after each iteration, `(max_steps + 1,)` (entry
      0 is the initial guess's), NaN after the last one (to see quadratic
      convergence, or its absence).
    """

    value: Float[Array, "time *batch state"]
    result: RESULTS
    residual: Float[Array, "*batch"]
    num_steps: Int[Array, "*batch"]
    residuals: Float[Array, "*batch steps"]


_MESSAGES = (
    "",
    "{name}: Newton on the trajectory did not reach its tolerance within "
    "`max_steps` iterations. Undamped `DEER()` is exact after at most T "
    "iterations; it needs many when the dynamics are chaotic (largest Lyapunov "
    "exponent > 0, see `rnnode.analysis.parallelisability`). Increase "
    "`max_steps` (`None` means T), loosen `rtol`/`atol`, use `quasi=False` or less "
    "damping, or use `BPTT()` / `Autodiff()` (a sequential scan).",
    "{name}: Newton on the trajectory diverged (non-finite values), which happens "
    "for expanding or chaotic dynamics. Use `ELK(penalty=...)` (a trust region), "
    "`DEER(damping=...)`, or `BPTT()` / `Autodiff()` (a sequential scan).",
    "{name}: the linear solver failed.",
)


class AbstractNewtonTrajectory(AbstractGradient):
    """A gradient strategy that finds the whole trajectory by Newton's method in
    parallel over time (see the module docstring) and differentiates it at the
    solution by one reverse linear scan.

    Subclasses say how one Newton iteration is solved (`newton_step`); the loop,
    the convergence test, the record and the gradient live here. Every cell,
    every fixed-step integrator and a `Stack` are covered: the strategy sees only
    the step map `h_t = step(θ, h_{t-1}, x_t)`.
    """

    quasi: eqx.AbstractVar[bool]
    max_steps: eqx.AbstractVar[int | None]
    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float | None]
    throw: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def newton_step(
        self,
        A: Float[Array, "time state ..."],
        fs: Float[Array, "time state"],
        h: Float[Array, "time state"],
        h_prev: Float[Array, "time state"],
        h0: Float[Array, " state"],
    ) -> Float[Array, "time state"]:
        """The next iterate from the current one `h` (`h_prev = [h0, h_1 … h_{T-1}]`),
        `fs = f(h_prev)` and the Jacobians `A` there (dense `(T, n, n)`, or their
        diagonals `(T, n)` when `quasi`)."""

    def solve(
        self,
        *,
        step,
        params: PyTree,
        h0: Float[Array, " state"],
        inputs: PyTree,
        guess: Float[Array, "time state"] | None = None,
    ) -> TrajectorySolution:
        """Newton's method for the states of one sequence (never raises; see
        `TrajectorySolution`). `inputs`: step inputs with a leading time axis, or an
        `AbstractStepInputs`; `guess`: the initial trajectory (zeros if `None`)."""
        inputs = all_steps(inputs)
        T = jax.tree.leaves(inputs)[0].shape[0]
        max_steps = T if self.max_steps is None else self.max_steps
        dtype = jnp.result_type(h0)
        rtol = default_tol(dtype) if self.rtol is None else self.rtol
        atol = default_tol(dtype) if self.atol is None else self.atol
        linearise = _linearisation(step, params, h0, inputs, self.quasi)
        h = jnp.zeros((T,) + h0.shape, dtype) if guess is None else guess
        h = jnp.asarray(h, dtype)

        def measure(h, fs):
            res = jnp.max(jnp.abs(h - fs))
            return res, atol + rtol * jnp.max(jnp.abs(fs))

        h_prev, fs, A = linearise(h)
        res, thr = measure(h, fs)
        history = jnp.full((max_steps + 1,), jnp.nan, dtype).at[0].set(res)
        bad = ~(jnp.isfinite(res) & tree_all_finite(A))

        def cond(carry):
            *_, res, thr, steps, bad, _ = carry
            return (res > thr) & (steps < max_steps) & ~bad

        def body(carry):
            h, h_prev, fs, A, res, thr, steps, _, history = carry
            h_new = self.newton_step(A, fs, h, h_prev, h0)
            new = linearise(h_new)
            res_new, thr_new = measure(h_new, new[1])
            ok = jnp.isfinite(res_new) & tree_all_finite((h_new, new[2]))
            old = (h, h_prev, fs, A, res, thr)
            kept = jax.tree.map(
                lambda a, b: jnp.where(ok, a, b), (h_new, *new, res_new, thr_new), old
            )
            history = history.at[steps + 1].set(jnp.where(ok, res_new, jnp.nan))
            return (*kept, steps + ok.astype(steps.dtype), ~ok, history)

        init = (h, h_prev, fs, A, res, thr, jnp.asarray(0, jnp.int32), bad, history)
        h, _, _, _, res, thr, steps, bad, history = jax.lax.while_loop(cond, body, init)
        return TrajectorySolution(
            value=h,
            result=make_result(res <= thr, bad),
            residual=res,
            num_steps=steps,
            residuals=history,
        )

    def loss(self, *, step, loss, params, h0, inputs, targets, weights):
        inputs = all_steps(inputs)
        theta = _closure_convert(step, loss, params, h0, inputs, targets)
        # The solve is not differentiated: the custom VJP below gives the gradient.
        th, h0_, inp = _no_grad((theta, h0, inputs))
        sol = self.solve(
            step=lambda p, h, x: th[1](p, h, x), params=th[0], h0=h0_, inputs=inp
        )
        hs = sol.value
        if self.throw:
            name = type(self).__name__
            hs = raise_if_failed(
                hs, sol.result, tuple(m.format(name=name) for m in _MESSAGES)
            )
        return _trajectory_loss((theta, h0, inputs, targets, weights), hs, self.quasi)


# ---------------------------------------------------------------------------------
# Public helpers.


def parallel_rollout(
    model: Model,
    xs: Float[ArrayLike, "time *batch input"],
    method: AbstractNewtonTrajectory,
    *,
    h0: Float[ArrayLike, "*batch state"] | None = None,
    t0: float = 0.0,
    guess: Float[ArrayLike, "time *batch state"] | None = None,
) -> TrajectorySolution:
    """The states of `model` driven by `xs`, found by Newton's method in parallel
    over time (`rnnode.DEER()`, `rnnode.ELK()`), with a record of the solve.

    A solve that does not converge is never silent: `result` says so (it does
    not raise, whatever `method.throw`; `sequence_loss` does).

    **Arguments:**

    - `model`: any `Model` stepped by a map (a cell, a fixed-step integrator, a
      `Stack`).
    - `xs`: inputs `(time, input)` or `(time, batch, input)`.
    - `method`: `rnnode.DEER(...)` or `rnnode.ELK(...)`.
    - `h0`: the initial state(s); default `model.init_state()`.
    - `t0`: the time of the first input.
    - `guess`: the initial trajectory `(time, [batch,] state)`; zeros if `None`.

    **Returns:** a `TrajectorySolution`; `value` has the shape of
    `model.rollout(xs)[0]`.
    """
    if not isinstance(method, AbstractNewtonTrajectory):
        raise ValueError(
            "`parallel_rollout(method=...)` takes a parallel-in-time method, "
            f"`rnnode.DEER()` or `rnnode.ELK()`, got {method!r}"
        )
    xs = check_inputs(model, xs)

    def step(params, h, inp):
        return params.step(h, *inp)

    def one(x, h, g):
        h = model.init_state() if h is None else jnp.asarray(h, x.dtype)
        h = jnp.asarray(h, x.dtype)
        inputs = model.step_inputs(x, t0)
        return method.solve(step=step, params=model, h0=h, inputs=inputs, guess=g)

    if xs.ndim == 2:
        return one(xs, h0, guess)
    h_axis = None if h0 is None or jnp.ndim(h0) == 1 else 0
    g_axis = None if guess is None else 1
    sol = jax.vmap(one, in_axes=(1, h_axis, g_axis))(xs, h0, guess)
    return eqx.tree_at(lambda s: s.value, sol, jnp.swapaxes(sol.value, 0, 1))


def all_steps(inputs: PyTree) -> PyTree:
    """Every step's inputs at once, with a leading time axis (an
    `AbstractStepInputs` is evaluated at every step by `vmap`)."""
    if isinstance(inputs, AbstractStepInputs):
        return jax.vmap(inputs.at)(jnp.arange(inputs.length()))
    return inputs


# ---------------------------------------------------------------------------------
# The linearisation.


def _linearisation(step, params, h0, inputs, quasi: bool):
    """`h ↦ (h_prev, f(h_prev), A)` with `A` the Jacobians of the step at `h_prev`
    (`(T, n, n)`), or their diagonals (`(T, n)`) when `quasi`."""
    f = lambda h, inp: step(params, h, inp)

    def value_and_jacobian(h, inp):
        return jax.jacfwd(lambda h: (f(h, inp), f(h, inp)), has_aux=True)(h)[::-1]

    if not quasi:
        one = value_and_jacobian
    elif has_structure(params):
        # `J` in closed form (no JVPs): `O(n²)` per step instead of `n` JVPs
        def one(h, inp):
            J, _ = structured_jacobians(params, h, *inp)
            return f(h, inp), jnp.diagonal(J)
    else:
        # the diagonal of the full Jacobian: `n` JVPs per step, like `DEER()`,
        # but the scan and what is stored are `O(T n)`
        def one(h, inp):
            fh, J = value_and_jacobian(h, inp)
            return fh, jnp.diagonal(J)

    def linearise(h):
        h_prev = jnp.concatenate([h0[None], h[:-1]], axis=0)
        fs, A = jax.vmap(one)(h_prev, inputs)
        return h_prev, fs, A

    return linearise


# ---------------------------------------------------------------------------------
# The loss and its custom VJP. `theta = (params, step_fn, loss_fn)`, the functions
# closure-converted so that arrays they close over are explicit (differentiable)
# leaves.


def _closure_convert(step, loss, params, h0, inputs, targets):
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)
    step_fn = eqx.filter_closure_convert(step, params, h0, first(inputs))
    loss_fn = eqx.filter_closure_convert(loss, params, h0, first(targets))
    return params, step_fn, loss_fn


def _no_grad(tree):
    diff, static = eqx.partition(tree, eqx.is_inexact_array)
    return eqx.combine(jax.lax.stop_gradient(diff), static)


def _weighted_loss(theta, hs, targets, weights):
    params, _, loss_fn = theta
    ls = jax.vmap(lambda h, y: loss_fn(params, h, y))(hs, targets)
    return jnp.sum(weights * ls)


def _steps(theta, h_prev, inputs):
    params, step_fn, _ = theta
    return jax.vmap(lambda h, x: step_fn(params, h, x))(h_prev, inputs)


@eqx.filter_custom_vjp
def _trajectory_loss(vjp_arg, hs, quasi):
    theta, _, _, targets, weights = vjp_arg
    return _weighted_loss(theta, hs, targets, weights)


@_trajectory_loss.def_fwd
def _trajectory_loss_fwd(perturbed, vjp_arg, hs, quasi):
    del perturbed
    return _trajectory_loss.fn(vjp_arg, hs, quasi), None


@_trajectory_loss.def_bwd
def _trajectory_loss_bwd(residuals, gbar, perturbed, vjp_arg, hs, quasi):
    del residuals
    if gbar is None:
        return jax.tree.map(lambda _: None, perturbed)
    diff, rest = eqx.partition(vjp_arg, perturbed)

    def loss_part(diff, hs):
        theta, _, _, targets, weights = eqx.combine(diff, rest)
        return _weighted_loss(theta, hs, targets, weights)

    _, vjp = jax.vjp(loss_part, diff, hs)
    ct_loss, g = vjp(gbar)

    def step_part(diff):
        theta, h0, inputs, _, _ = eqx.combine(diff, rest)
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
        return _steps(theta, h_prev, inputs)

    theta, h0, inputs, _, _ = vjp_arg
    lam = _adjoint(theta, h0, hs, inputs, g, quasi)
    _, vjp = jax.vjp(step_part, diff)
    (ct_step,) = vjp(lam)
    return jax.tree.map(
        lambda a, b: None if a is None else a + b,
        ct_loss,
        ct_step,
        is_leaf=lambda x: x is None,
    )


def _adjoint(theta, h0, hs, inputs, g, quasi: bool):
    """`λ_t = g_t + A_{t+1}ᵀ λ_{t+1}` (`λ_{T+1} = 0`) at the solution `hs`."""
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    params, step_fn, _ = theta
    f = lambda h, x: step_fn(params, h, x)
    shift = lambda c: jnp.concatenate([c[1:], jnp.zeros_like(c[:1])], axis=0)
    if not quasi:
        A = jax.vmap(jax.jacfwd(f))(h_prev, inputs)
        return linear_scan(shift(jnp.swapaxes(A, -1, -2)), g, reverse=True)
    # Quasi: the adjoint system (I − U) λ = g, U the shift by A_{t+1}ᵀ, solved by
    # λ ← λ + (I − U_D)⁻¹ (g − (I − U) λ) with the diagonals D: a reverse diagonal
    # scan and one VJP per iteration; exact after at most T iterations.
    D = shift(_linearisation(step_fn, params, h0, inputs, True)(hs)[2])
    _, vjp = jax.vjp(lambda h: jax.vmap(f)(h, inputs), h_prev)
    T = hs.shape[0]
    tol = default_tol(hs.dtype)

    def residual(lam):
        (c,) = vjp(lam)
        return g + shift(c) - lam

    def cond(carry):
        _, r, k = carry
        return (jnp.max(jnp.abs(r)) > tol * jnp.max(jnp.abs(g))) & (k < T)

    def body(carry):
        lam, r, k = carry
        lam = lam + linear_scan(D, r, reverse=True)
        return lam, residual(lam), k + 1

    lam0 = jnp.zeros_like(g)
    lam, _, _ = jax.lax.while_loop(cond, body, (lam0, residual(lam0), 0))
    return lam
