"""The interface every gradient method implements, and the reference `Autodiff`."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._step_inputs import AbstractStepInputs

StepFn = Callable[[PyTree, Array, PyTree], Array]
"""`step(params, h, inputs_t) -> h_next`."""
LossFn = Callable[[PyTree, Array, PyTree], Float[Array, ""]]
"""`loss(params, h_t, target_t) -> l_t` (the per-step loss of the state after step t)."""


class AbstractGradient(eqx.Module):
    """A way to differentiate the weighted sequence loss of a recurrent map.

    A strategy sees only a step function and a per-step loss; it knows nothing of
    dynamics, integrators or training. `loss` computes

        h_t = step(params, h_{t-1}, inputs[t]),   L = Σ_t weights[t] · loss(params, h_t, targets[t])

    and its value is differentiable with respect to `params` (an arbitrary pytree:
    floating-point array leaves are the parameters) and `h0` by this strategy's own
    method: `jax.grad` / `eqx.filter_grad` of anything built on it use it.
    """

    @abc.abstractmethod
    def loss(
        self,
        *,
        step: StepFn,
        loss: LossFn,
        params: PyTree,
        h0: Float[Array, " state"],
        inputs: PyTree,
        targets: PyTree,
        weights: Float[Array, " time"],
    ) -> Float[Array, ""]:
        """The scalar `Σ_t weights[t] · loss(params, h_t, targets[t])` of one
        unbatched sequence (`inputs`, `targets`, `weights` have a leading time axis)."""


class AbstractBatchGradient(AbstractGradient):
    """A gradient method that also differentiates a whole batch at once.

    `sequence_loss` calls `batch_loss` for batched inputs instead of `vmap`-ping
    `loss`: under `vmap` a custom VJP keeps one parameter cotangent per sequence,
    whereas a batch-aware backward pass can sum over the batch at every step.
    """

    @abc.abstractmethod
    def batch_loss(
        self,
        *,
        step: StepFn,
        loss: LossFn,
        params: PyTree,
        h0: Float[Array, "batch state"],
        inputs: PyTree,
        targets: PyTree,
        weights: Float[Array, "time *batch"],
    ) -> Float[Array, ""]:
        """The batch mean of `loss(...)`; `inputs`/`targets` are `(time, batch, ...)`."""


class AbstractStepwiseGradient(AbstractGradient):
    """A gradient method that builds each step's inputs inside its loop:
    `sequence_loss` passes it `inputs` as an `AbstractStepInputs`, so that its
    memory does not grow with `T` because of the inputs (`RTRL`). It also accepts
    a pytree with a leading time axis; `step_at` reads either."""


class Autodiff(AbstractGradient):
    """JAX's own reverse mode through `lax.scan`: the reference the others are
    checked against. Stores every state (memory `O(T n)`)."""

    def loss(self, *, step, loss, params, h0, inputs, targets, weights):
        return scan_loss(step, loss, params, h0, inputs, targets, weights)


def scan_loss(step, loss, params, h0, inputs, targets, weights):
    """The plain forward computation of `Σ_t a_t l_t` by `lax.scan`."""

    def body(h, xs):
        inp, y, a = xs
        h = step(params, h, inp)
        return h, a * loss(params, h, y)

    if not isinstance(inputs, AbstractStepInputs):
        _, ls = jax.lax.scan(body, h0, (inputs, targets, weights))
        return jnp.sum(ls)

    def body_at(carry, _):
        # a counter, not a scanned `arange` (which would be a length-T array)
        h, total, i = carry
        y = jax.tree.map(lambda v: v[i], targets)
        h, value = body(h, (inputs.at(i), y, weights[i]))
        return (h, total + value, i + 1), None

    total = jnp.zeros((), jnp.result_type(weights))
    (_, total, _), _ = jax.lax.scan(
        body_at, (h0, total, 0), None, length=inputs.length()
    )
    return total
