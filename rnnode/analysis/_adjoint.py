"""The adjoint trajectory `λ_t = dL/dh_t` of a sequence loss: how sensitive the
loss is to each state, the quantity whose norm against the lag shows gradients
vanishing or exploding."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._losses import mse
from .._model import Model
from .._sequence import check_sequence


def adjoint_trajectory(
    model: Model,
    xs: Float[ArrayLike, "time *batch input"],
    ys: PyTree[ArrayLike],
    *,
    loss=mse,
    weights: Float[ArrayLike, "time *batch"] | None = None,
    h0: Float[ArrayLike, "*batch state"] | None = None,
    t0: float = 0.0,
    truncate: int | None = None,
) -> Float[Array, "time *batch state"]:
    """The adjoint states `λ_t = dL/dh_t`, `t = 1 … T`, of one sequence's loss
    `L = Σ_t a_t l(output(h_t), y_t)`, by the BPTT recursion
    `λ_T = a_T ∂l_T/∂h_T`, `λ_t = a_t ∂l_t/∂h_t + J_{t+1}ᵀ λ_{t+1}`.

    `λ_t` is the total sensitivity of the loss to a perturbation of the state
    `h_t` (through its own loss term and every later step); `‖λ_t‖` against
    `T - t` shows how gradients vanish or explode with the lag.

    **Arguments:** as `rnnode.sequence_loss`: a `Model`, time-major inputs
    `(time, input)` and targets, the per-step `loss`, time `weights` (default
    `1/T`), initial state `h0` and start time `t0`; `truncate` as in
    `rnnode.BPTT` (no gradient flows into `h_t` from step `t + 1` when
    `truncate` divides `t`).

    A batch `(time, batch, input)` is handled sequence by sequence (as if by
    `jax.vmap`): the result is then `(time, batch, state)`, and each sequence's `λ`
    is that of its own loss (not of the batch mean used by `sequence_loss`, which is
    `1/batch` times it).

    **Returns:** `λ` with shape `(time, state)` (or `(time, batch, state)`).

    Reference: Werbos (1990), "Backpropagation through time: what it does and
    how to do it".
    """
    if truncate is not None and (
        not isinstance(truncate, int) or isinstance(truncate, bool) or truncate < 1
    ):
        raise ValueError(
            f"`truncate` must be None or an integer >= 1, got {truncate!r}"
        )
    xs, ys, weights = check_sequence(model, xs, ys, weights)

    def one(x, y, a, h):
        h = model.init_state() if h is None else h
        h = jnp.asarray(h, dtype=x.dtype)
        inputs = model.step_inputs(x, t0)

        def forward(h_prev, inp):
            h_next = model.step(h_prev, *inp)
            return h_next, h_next

        _, hs = jax.lax.scan(forward, h, inputs)
        # the direct terms a_t ∂l_t/∂h_t
        direct = jax.vmap(
            jax.grad(lambda h, y_t, a_t: a_t * loss(model.output(h), y_t))
        )
        g = direct(hs, y, a)
        hs_prev = jnp.concatenate([h[None], hs[:-1]], axis=0)
        steps = jnp.arange(1, hs.shape[0] + 1)

        def backward(carry, z):
            g_t, h_prev, inp, s = z
            if truncate is not None:
                carry = jnp.where(s % truncate == 0, jnp.zeros_like(carry), carry)
            lam = g_t + carry
            _, vjp = jax.vjp(lambda hp: model.step(hp, *inp), h_prev)
            return vjp(lam)[0], lam

        _, lams = jax.lax.scan(
            backward, jnp.zeros_like(h), (g, hs_prev, inputs, steps), reverse=True
        )
        return lams

    if xs.ndim == 2:
        return one(xs, ys, weights, h0)
    w_axis = 1 if weights.ndim == 2 else None
    h_axis = None if h0 is None or jnp.ndim(h0) == 1 else 0
    return jax.vmap(one, in_axes=(1, 1, w_axis, h_axis), out_axes=1)(
        xs, ys, weights, h0
    )
