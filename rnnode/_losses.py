"""Per-step losses `l_t(o_t, y_t)` and time weights `a_t` for the integral loss
`L = Σ_t a_t l_t(o_t, y_t)`."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int


def mse(pred: Float[Array, " out"], target: Float[Array, " out"]) -> Float[Array, ""]:
    """Squared error averaged over output features: `mean((o - y)²)`."""
    return jnp.mean((pred - target) ** 2)


def cross_entropy(
    logits: Float[Array, " classes"], label: Int[Array, ""]
) -> Float[Array, ""]:
    """Softmax cross-entropy of integer `label` under `logits`."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.take(logp, label.astype(jnp.int32))


LOSSES = {"mse": mse, "cross_entropy": cross_entropy}


def uniform_weights(num_steps: int) -> Float[Array, " time"]:
    """`a_t = 1/T`: the time average of the per-step loss (the default)."""
    return jnp.full((num_steps,), 1.0 / num_steps)


def integral_weights(num_steps: int, dt: float) -> Float[Array, " time"]:
    """`a_t = Δt`: the rectangle rule for `∫ l(t) dt`."""
    return jnp.full((num_steps,), float(dt))


def last_step_weights(num_steps: int) -> Float[Array, " time"]:
    """`a_T = 1`, all others 0: a loss on the final state only (classification)."""
    return jnp.zeros((num_steps,)).at[-1].set(1.0)


def mask_weights(mask: ArrayLike, *, normalise: bool = True) -> Float[Array, " time"]:
    """Weights from a 0/1 mask over time (or time × batch); divided by the number
    of selected steps when `normalise`."""
    m = np.asarray(mask, dtype=float)
    if normalise:
        m = m / np.maximum(m.sum(axis=0, keepdims=True), 1.0)
    return jnp.asarray(m)
