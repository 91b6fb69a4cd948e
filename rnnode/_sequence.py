"""`sequence_loss`: the weighted sequence loss of a model, differentiated by a
chosen gradient method."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from ._losses import mse
from ._model import Model, check_inputs
from ._step_inputs import batch_keys
from .gradients import (
    AbstractBatchGradient,
    AbstractGradient,
    AbstractStepwiseGradient,
    Autodiff,
)


def sequence_loss(
    model: Model,
    xs: Float[ArrayLike, "time *batch input"],
    ys: PyTree[ArrayLike],
    *,
    loss: Callable[[Array, Array], Float[Array, ""]] = mse,
    weights: Float[ArrayLike, "time *batch"] | None = None,
    gradient: AbstractGradient = Autodiff(),
    h0: Float[ArrayLike, "*batch state"] | None = None,
    t0: float = 0.0,
    key: PRNGKeyArray | None = None,
) -> Float[Array, ""]:
    """The loss `L = mean_batch Σ_t a_t l(output(h_t), y_t)`, differentiable by `gradient`.

    **Arguments:**

    - `model`: a `Model`.
    - `xs`: inputs, time-major: `(time, input)` or `(time, batch, input)`.
    - `ys`: targets with the same leading axes (a pytree of such arrays is allowed).
    - `loss`: the per-step loss `l(output, target)`, e.g. `rnnode.mse` or
      `rnnode.cross_entropy`.
    - `weights`: the time weights `a_t`, shape `(time,)` or `(time, batch)`;
      `None` means `1/T` (the time average). See `uniform_weights`,
      `integral_weights`, `last_step_weights`, `mask_weights`.
    - `gradient`: how `jax.grad` of this loss is computed: `Autodiff()` (default),
      `BPTT(...)`, `RTRL(...)`. With `Autodiff()`, a model whose dynamics run in
      parallel (`LRU(..., parallel=True)`, or a `Stack` of such layers) computes
      the states of the whole sequence by a parallel scan, and `jax.grad` goes
      back through it; the other methods step the model one input at a time.
    - `h0`: initial state(s); default `model.init_state()`.
    - `t0`: the time of the first sample.
    - `key`: the realisation of the private noise of noisy dynamics
      (`CTRNN(noise_std=σ)`); `None` (default) runs noise-free. The sequences of
      a batch get `jax.random.split(key, B)` and step `i` of a sequence
      `fold_in(its key, i)`, drawn inside the loop (no `(T, B, n)` array): every
      gradient method sees the same realisation for the same key, and
      `Model.rollout(xs, key=key)` runs it.

    **Returns:** a scalar.
    """
    xs, ys, weights = check_sequence(model, xs, ys, weights)
    batched = xs.ndim == 3
    if not isinstance(gradient, AbstractGradient):
        raise ValueError(
            f"`gradient` must be a strategy such as `rnnode.BPTT()`, got {gradient!r}"
        )

    def step(params, h, inp):
        return params.step(h, *inp)

    def step_loss(params, h, y):
        return loss(params.output(h), y)

    def one(x, y, a, h, k):
        if h is None:
            h = model.init_state()
        if model.parallel and isinstance(gradient, Autodiff):
            # the whole sequence at once (a parallel scan), differentiated by JAX
            hs = model.dynamics.sequence(jnp.asarray(h, dtype=x.dtype), x)
            ls = jax.vmap(lambda h, y: loss(model.output(h), y))(hs, y)
            return jnp.sum(a * ls)
        return gradient.loss(
            step=step,
            loss=step_loss,
            params=model,
            h0=jnp.asarray(h, dtype=x.dtype),
            # a stepwise method builds each step's inputs inside its loop
            inputs=model.sequence_inputs(x, t0, k)
            if isinstance(gradient, AbstractStepwiseGradient)
            else model.step_inputs(x, t0, k),
            targets=y,
            weights=a,
        )

    if not batched:
        return one(xs, ys, weights, h0, key)
    B = xs.shape[1]
    keys = batch_keys(key, B)
    k_axis = None if keys is None else 0
    if isinstance(gradient, AbstractBatchGradient):
        # The strategy handles a whole batch itself (e.g. `BPTT`, whose custom VJP
        # then contracts the parameter gradient over the batch).
        h = model.init_state() if h0 is None else h0
        h = jnp.broadcast_to(jnp.asarray(h, dtype=xs.dtype), (B, model.state_size))
        inputs = jax.vmap(
            lambda x, k: model.step_inputs(x, t0, k), in_axes=(1, k_axis), out_axes=1
        )(xs, keys)
        return gradient.batch_loss(
            step=step,
            loss=step_loss,
            params=model,
            h0=h,
            inputs=inputs,
            targets=ys,
            weights=weights,
        )
    w_axis = 1 if weights.ndim == 2 else None
    h_axis = None if h0 is None or jnp.ndim(h0) == 1 else 0
    per_seq = jax.vmap(one, in_axes=(1, 1, w_axis, h_axis, k_axis))(
        xs, ys, weights, h0, keys
    )
    return jnp.mean(per_seq)


def check_sequence(model: Model, xs, ys, weights):
    """Validate inputs, targets and time weights of a sequence loss; return them as
    arrays (`weights` defaults to `1/T`)."""
    xs = check_inputs(model, xs)
    T = xs.shape[0]
    batched = xs.ndim == 3
    lead = xs.shape[:2] if batched else xs.shape[:1]
    ys = jax.tree.map(jnp.asarray, ys)
    for leaf in jax.tree.leaves(ys):
        if leaf.shape[: len(lead)] != lead:
            raise ValueError(
                f"targets must share the inputs' leading (time[, batch]) axes "
                f"{lead}, got shape {leaf.shape}"
            )
    if weights is None:
        weights = jnp.full((T,), 1.0 / T, dtype=xs.dtype)
    weights = jnp.asarray(weights, dtype=xs.dtype)
    if weights.shape not in ((T,), lead):
        raise ValueError(
            f"`weights` must have shape ({T},) or {lead}, got {weights.shape}"
        )
    return xs, ys, weights
