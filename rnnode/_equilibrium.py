"""`equilibrium` and `equilibrium_loss`: the equilibrium state of a model under a
constant input, and the loss of its output, each differentiated by a chosen
strategy (`Implicit`, `Unrolled`); the counterpart of `sequence_loss` for
equilibrium tasks. The solvers are in `_fixed_point.py`, the strategies in
`gradients/_implicit.py`."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PyTree

from ._dynamics import AbstractDynamics
from ._fixed_point import (
    FORWARD_MESSAGES,
    AbstractFixedPointSolver,
    EquilibriumSolution,
    FixedPointIteration,
    fixed_point_map,
)
from ._iterative import raise_if_failed
from ._losses import mse
from ._model import Model
from .gradients import AbstractEquilibriumGradient, Autodiff, Implicit, Unrolled


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
    dynamics, G, xs, h0, batched = prepare_equilibrium(model, x, h0, step_size)
    sol = gradient.solve(G, dynamics, xs, h0, solver)
    if throw:
        sol = raise_if_failed(sol, sol.result, FORWARD_MESSAGES)
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


def prepare_equilibrium(model, x, h0, step_size):
    """`(dynamics, G, xs, h0, batched)` for a model (or dynamics) and its input(s):
    the map `G`, the inputs as a batch `(N, m)`, the starting states `(N, n)`
    (not differentiated), and whether `x` was a batch; checks their shapes."""
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
