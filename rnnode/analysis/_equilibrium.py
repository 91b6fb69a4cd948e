"""Diagnostics of equilibria: the spectral radius of the fixed-point map (which
decides whether fixed-point iteration and the implicit adjoint converge), and the
adjoint solve of `Implicit` on its own."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._dynamics import AbstractDynamics
from .._equilibrium import equilibrium, prepare_equilibrium
from .._iterative import IterativeSolution
from .._model import Model
from ..gradients import Implicit


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
    dynamics, G, xs, _, batched = prepare_equilibrium(model, x, None, step_size)
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
    dynamics, G, xs, h0, batched = prepare_equilibrium(model, x, None, step_size)
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
