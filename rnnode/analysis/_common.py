"""Shared pieces of the analyses: one sequence's trajectory, the linearised step
pushed forward (`J V`) or pulled back (`Jᵀ U`), frames, figures and JSON."""

import math

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray
from matplotlib.figure import Figure

from .._integrate import Diffrax
from .._model import Model, check_inputs


def single_sequence(model: Model, xs: Float[ArrayLike, "time input"]) -> Array:
    """Validate `xs` as one time-major sequence `(time, input)`."""
    if not isinstance(model, Model):
        raise ValueError(f"expected an `rnnode.Model`, got {type(model).__name__}")
    xs = check_inputs(model, xs)
    if xs.ndim != 2:
        raise ValueError(
            f"this analysis takes one sequence `(time, input)`, got shape "
            f"{xs.shape}; pass e.g. `xs[:, 0]` for the first of a batch"
        )
    return xs


def trajectory(model: Model, xs: Array, h0: ArrayLike | None):
    """`(h_prev, hs, inputs)`: the states before (`h_0 … h_{T-1}`) and after
    (`h_1 … h_T`) each step, and the step's arguments `(t, x, x_next)`."""
    h0 = model.init_state() if h0 is None else jnp.asarray(h0, dtype=xs.dtype)
    if h0.shape != (model.state_size,):
        raise ValueError(f"`h0` must have shape ({model.state_size},), got {h0.shape}")
    hs, _ = model.rollout(xs, h0=h0)
    h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    return h_prev, hs, model.step_inputs(xs)


def _forward_mode_ok(model: Model) -> bool:
    # diffrax's default adjoint is a custom VJP, which `jax.jvp` cannot enter.
    integrator = model.integrator
    return not (
        isinstance(integrator, Diffrax)
        and not isinstance(integrator.adjoint, diffrax.ForwardMode)
    )


def push_forward(
    model: Model, h: Array, inp, V: Float[Array, "n k"]
) -> Float[Array, "n k"]:
    """`J V` with `J = ∂ step(h, inp)/∂h`: `k` Jacobian-vector products."""

    def f(h):
        return model.step(h, *inp)

    if _forward_mode_ok(model):
        return jax.vmap(lambda v: jax.jvp(f, (h,), (v,))[1], in_axes=1, out_axes=1)(V)
    return jax.jacrev(f)(h) @ V


def pull_back(
    model: Model, h: Array, inp, U: Float[Array, "n k"]
) -> Float[Array, "n k"]:
    """`Jᵀ U` with `J = ∂ step(h, inp)/∂h`: `k` vector-Jacobian products."""
    _, vjp = jax.vjp(lambda h: model.step(h, *inp), h)
    return jax.vmap(lambda u: vjp(u)[0], in_axes=1, out_axes=1)(U)


def frame(
    n: int, k: int | None, key: PRNGKeyArray | None, dtype
) -> Float[Array, "n k"]:
    """An orthonormal `n × k` frame: the identity when `k` is `None` or `n`,
    otherwise the Q of a Gaussian matrix (random, so that it is not aligned with
    any invariant subspace)."""
    if k is None or k == n:
        return jnp.eye(n, dtype=dtype)
    if not (isinstance(k, int) and 1 <= k <= n):
        raise ValueError(f"`k` must be an integer in [1, {n}], got {k!r}")
    key = jr.PRNGKey(0) if key is None else key
    q, _ = jnp.linalg.qr(jr.normal(key, (n, k), dtype=dtype))
    return q


def log_norm2(M: Array) -> Array:
    """`log ‖M‖₂` (largest singular value), `-inf` for a zero matrix."""
    return jnp.log(jnp.linalg.svd(M, compute_uv=False)[0])


def rescale(M: Array, log_scale: Array) -> tuple[Array, Array]:
    """Divide `M` by its largest entry and add the log of it to `log_scale`, so
    that long products neither overflow nor underflow (zero stays zero)."""
    s = jnp.max(jnp.abs(M))
    s = jnp.where(s > 0, s, jnp.ones_like(s))
    return M / s, log_scale + jnp.log(s)


def new_figure(ncols: int = 1, *, width: float = 5.0, height: float = 3.8):
    """A matplotlib `Figure` with `ncols` axes, independent of pyplot's state
    (no GUI backend; `savefig` renders with Agg)."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def to_json(value):
    """Arrays → nested lists, complex → `{"real", "imag"}`, non-finite → `None`:
    strict JSON."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        arr = np.asarray(value)
        if np.iscomplexobj(arr):
            return {"real": to_json(arr.real), "imag": to_json(arr.imag)}
        return to_json(arr.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
