"""Solving an ODE with a neural network: a trial solution that satisfies the
initial conditions by construction, trained on the squared residual of the ODE at
collocation points (Lagaris, Likas & Fotiadis, 1998, "Artificial neural networks
for solving ordinary and partial differential equations")."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


class NNODESolution(eqx.Module):
    """The trained trial solution of `solve_ode_nn`, callable on times.

    With `s = (t - t0)/(t1 - t0)` and `N` the network (fed `2s - 1 ∈ [-1, 1]`):

    - first order: `g(t) = y0 + s N(t)`, so `g(t0) = y0`;
    - second order: `g(t) = y0 + v0 (t - t0) + s² N(t)`, so `g(t0) = y0` and
      `g'(t0) = v0`.

    **Fields:** `net` (the `eqx.nn.MLP`), `y0`, `v0` (`None` for first order),
    `t0`, `t1`, `order`; `residual`, the final mean squared residual at the
    collocation points; `losses`, the training loss after each step (Adam, then
    L-BFGS).
    """

    net: eqx.nn.MLP
    y0: Float[Array, " dim"]
    v0: Float[Array, " dim"] | None
    residual: Float[Array, ""]
    losses: Float[Array, " steps"]
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    order: int = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, t: Float[ArrayLike, "*times"]) -> Float[Array, "..."]:
        """`g(t)` for a time or an array of times; the result has `y0`'s shape
        after the times' shape."""
        return self._map(self._g, t)

    def derivative(self, t: Float[ArrayLike, "*times"]) -> Float[Array, "..."]:
        """`dg/dt`, by forward-mode autodiff."""
        return self._map(lambda t: _d(self._g, t), t)

    def _map(self, fn, t):
        t = jnp.asarray(t, dtype=self.y0.dtype)
        flat = jax.vmap(fn)(t.reshape(-1))
        return flat.reshape(t.shape + self.shape)

    def _g(self, t: Float[Array, ""]) -> Float[Array, " dim"]:
        s = (t - self.t0) / (self.t1 - self.t0)
        out = self.net(jnp.reshape(2 * s - 1, (1,)))
        if self.order == 1:
            return self.y0 + s * out
        return self.y0 + self.v0 * (t - self.t0) + s**2 * out


def solve_ode_nn(
    f: Callable[..., ArrayLike],
    t_span: tuple[float, float],
    y0: Float[ArrayLike, "..."],
    *,
    order: int = 1,
    v0: Float[ArrayLike, "..."] | None = None,
    hidden: int = 32,
    depth: int = 1,
    num_points: int = 100,
    steps: int = 1000,
    lbfgs_steps: int = 3000,
    learning_rate: float = 3e-2,
    key: PRNGKeyArray,
) -> NNODESolution:
    """Solve `y' = f(t, y)` (first order) or `y'' = f(t, y, y')` (second order) on
    `t_span` with a neural-network trial solution.

    The network's parameters minimise the mean squared residual
    `(g' - f(t, g))²` (resp. `(g'' - f(t, g, g'))²`) over `num_points` equally
    spaced collocation points, derivatives of `g` taken by JAX's forward-mode
    autodiff: first `steps` of Adam (learning rate decaying 30-fold), then
    `lbfgs_steps` of L-BFGS with a zoom line search (optax), keeping the best
    parameters seen.

    **Arguments:**

    - `f`: the right-hand side, `f(t, y)` or `f(t, y, dy)`, returning an array
      shaped like `y0` (a JAX-traceable function).
    - `t_span`: `(t0, t1)`, the initial time and the end of the interval.
    - `y0`: the initial value (a scalar or an array); `v0`: the initial
      derivative, required for (and only for) `order=2`.
    - `hidden`, `depth`: the width and number of hidden layers of the tanh MLP.
    - `num_points`: collocation points, endpoints included.
    - `steps`, `lbfgs_steps`, `learning_rate`: the optimisation (either step
      count may be 0).
    - `key`: initialises the network.

    **Returns:** an `NNODESolution`: call it on times; `.residual` is the final
    mean squared residual. Float64 (`jax_enable_x64`) is needed for errors well
    below `1e-3`.
    """
    if order not in (1, 2):
        raise ValueError(f"`order` must be 1 or 2, got {order!r}")
    if (order == 2) != (v0 is not None):
        raise ValueError(
            "`v0` (the initial derivative) is required for `order=2` and "
            "meaningless for `order=1`"
        )
    try:
        t0, t1 = (float(t) for t in t_span)
    except (TypeError, ValueError):
        raise ValueError(
            f"`t_span` must be two numbers (t0, t1), got {t_span!r}"
        ) from None
    if not (np.isfinite(t0) and np.isfinite(t1) and t0 != t1):
        raise ValueError(f"`t_span` must be two distinct finite times, got {t_span!r}")
    for name, v, least in (
        ("hidden", hidden, 1),
        ("depth", depth, 1),
        ("num_points", num_points, 2),
        ("steps", steps, 0),
        ("lbfgs_steps", lbfgs_steps, 0),
    ):
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= least):
            raise ValueError(f"`{name}` must be an integer >= {least}, got {v!r}")
    y0 = jnp.asarray(y0, dtype=float)
    shape = y0.shape
    dim = int(np.prod(shape))
    if v0 is not None:
        v0 = jnp.asarray(v0, dtype=y0.dtype)
        if v0.shape != shape:
            raise ValueError(f"`v0` must have `y0`'s shape {shape}, got {v0.shape}")
        v0 = v0.reshape(dim)
    net = eqx.nn.MLP(
        1, dim, hidden, depth, activation=jnp.tanh, key=key, dtype=y0.dtype
    )
    sol = NNODESolution(
        net=net,
        y0=y0.reshape(dim),
        v0=v0,
        residual=jnp.zeros((), dtype=y0.dtype),
        losses=jnp.zeros((0,), dtype=y0.dtype),
        t0=t0,
        t1=t1,
        order=order,
        shape=shape,
    )
    ts = jnp.linspace(t0, t1, num_points, dtype=y0.dtype)
    return _train(sol, f, ts, steps, lbfgs_steps, learning_rate)


@eqx.filter_jit
def _train(sol, f, ts, steps, lbfgs_steps, learning_rate):
    params, static = eqx.partition(sol.net, eqx.is_inexact_array)

    def loss(p):
        s = eqx.tree_at(lambda s: s.net, sol, eqx.combine(p, static))
        return jnp.mean(jax.vmap(lambda t: _residual(s, f, t))(ts) ** 2)

    # optax mixes integer step counts with floats, which strict promotion refuses.
    with jax.numpy_dtype_promotion("standard"):
        adam = optax.adam(optax.exponential_decay(learning_rate, max(steps, 1), 1 / 30))

        def adam_step(carry, _):
            p, state = carry
            value, grad = jax.value_and_grad(loss)(p)
            updates, state = adam.update(grad, state, p)
            return (optax.apply_updates(p, updates), state), value

        (params, _), adam_losses = jax.lax.scan(
            adam_step, (params, adam.init(params)), None, length=steps
        )

        lbfgs = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(loss)

        def lbfgs_step(carry, _):
            p, state, best_p, best = carry
            value, grad = value_and_grad(p, state=state)
            # Keep the best parameters seen: a line search can fail to progress
            # once the loss is at rounding level.
            better = value < best
            best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
            best = jnp.where(better, value, best)
            updates, state = lbfgs.update(
                grad, state, p, value=value, grad=grad, value_fn=loss
            )
            return (optax.apply_updates(p, updates), state, best_p, best), value

        inf = jnp.asarray(jnp.inf, dtype=ts.dtype)
        (p, _, best_p, best), lbfgs_losses = jax.lax.scan(
            lbfgs_step,
            (params, lbfgs.init(params), params, inf),
            None,
            length=lbfgs_steps,
        )
        final = loss(p)
        params = jax.tree.map(lambda a, b: jnp.where(final < best, a, b), p, best_p)
        residual = jnp.minimum(final, best)
    return eqx.tree_at(
        lambda s: (s.net, s.residual, s.losses),
        sol,
        (
            eqx.combine(params, static),
            residual,
            jnp.concatenate([adam_losses, lbfgs_losses]),
        ),
    )


def _d(fn, t):
    return jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]


def _residual(sol: NNODESolution, f, t):
    def g(t):
        return sol._g(t)

    def shaped(y):
        return y.reshape(sol.shape)

    if sol.order == 1:
        y, dy = jax.jvp(g, (t,), (jnp.ones_like(t),))
        return dy - jnp.reshape(jnp.asarray(f(t, shaped(y))), -1)
    y, dy = jax.jvp(g, (t,), (jnp.ones_like(t),))
    ddy = _d(lambda t: _d(g, t), t)
    return ddy - jnp.reshape(jnp.asarray(f(t, shaped(y), shaped(dy))), -1)
