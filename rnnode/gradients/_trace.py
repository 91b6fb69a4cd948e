"""The public base of an online rule defined by how it keeps the influence
matrix: `AbstractTraceGradient`."""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._model import Model
from ._online import AbstractOnlineGradient
from ._rtrl_structured import zero_off_mask


class AbstractTraceGradient(AbstractOnlineGradient):
    """An online rule defined by how it approximates `P_t = J_t P_{t-1} + I_t`.

    A rule says which models it covers (`validate`), how its trace starts
    (`init_trace`), how one step advances the state and the trace (`advance`),
    and how the trace and the loss's `∂l_t/∂h_t` make a gradient (`gradient`).
    Everything else comes from the base: online `init` / `step` / `reset` on one
    stream or a batch of streams (`rnnode.AbstractOnlineGradient`), and
    `gradient=` of `sequence_loss` (a custom VJP whose forward scan sums
    `Σ_t a_t ĝ_t` with the parameters held fixed; memory independent of `T`).

    The gradient of a step is `ĝ_t = gradient(...) + ∂l_t/∂θ`: the base adds the
    exact direct term (the readout's gradient, for instance), and zeroes the
    gradient of a sparse `W` off its mask. The initial state is not
    differentiated. A stochastic rule (`stochastic = True`, with an integer field
    `seed`) gets a fresh key at every step; the whole-sequence path starts from
    `jr.PRNGKey(seed)`, so `loss` and an online run started with
    `init(model, key=jr.PRNGKey(seed))` give the same numbers.

    The helpers a rule needs are public: `structured_jacobians` (`J_t` and the
    immediate Jacobians `I_t` in closed form), `local_jacobian`, `unit_influence`,
    `learning_signal`, `check_cell` and `dynamics_gradient`. See
    `docs/online_api.md` for a rule written in under 40 lines.
    """

    @abc.abstractmethod
    def advance(
        self, step, model: Model, h: Array, trace: PyTree, key: PRNGKeyArray, inputs
    ) -> tuple[Array, PyTree, Any]:
        """One step: `(h_t, trace_t, aux)` from `(h_{t-1}, trace_{t-1})`.

        **Arguments:**

        - `step`: the recurrent map, `h_t = step(model, h_{t-1}, inputs)`.
        - `model`: the model (its parameters).
        - `h`, `trace`: the state and the trace before the step.
        - `key`: this step's key (use it only if the rule is stochastic).
        - `inputs`: `(t, x_t, x_next)`, the step's inputs.

        **Returns:** `(h_t, trace_t, aux)`; `aux` (anything, static patterns
        included) is passed to `gradient` of the same step.
        """

    @abc.abstractmethod
    def gradient(
        self, model: Model, trace: PyTree, aux: Any, dh: Array, h: Array, y, loss
    ) -> PyTree:
        """The rule's part of the gradient, `∂l_t/∂h_t · P̂_t`.

        **Arguments:**

        - `model`, `trace`, `aux`: the model, the trace after this step and what
          `advance` returned with it.
        - `dh`: `∂l_t/∂h_t`, the loss's gradient at the state.
        - `h`, `y`, `loss`: the state, the target and the per-step loss
          `loss(model, h, y)`, for rules with a learning signal of their own
          (`learning_signal`).

        **Returns:** a pytree shaped like `eqx.filter(model, eqx.is_inexact_array)`
        (e.g. `dynamics_gradient(model, {"W": ..., "b": ...})`), `None` at the
        parameters the trace does not cover.
        """

    def _update(self, step, loss, params, h, trace, key, inp, y):
        h, trace, aux = self.advance(step, params, h, trace, key, inp)
        direct = eqx.filter(params, eqx.is_inexact_array)
        value, (g_direct, dh) = jax.value_and_grad(
            lambda d, h: loss(eqx.combine(d, params), h, y), argnums=(0, 1)
        )(direct, h)
        extra = self.gradient(params, trace, aux, dh, h, y, loss)
        grads = jax.tree.map(_add, g_direct, extra, is_leaf=_is_none)
        return h, trace, value, _mask(params, grads)

    def _sequence(
        self, step, loss, params, h0, inputs, targets, weights, p_params, learn_h0
    ):
        del p_params, learn_h0  # pruned and refused by the base
        key = jr.PRNGKey(self.seed) if self.stochastic else None
        first = jax.tree.map(lambda a: a[0], inputs)
        trace = self.init_trace(params, h0, first)

        def body(carry, xs):
            h, trace, key, g, total = carry
            inp, y, a = xs
            sub = None
            if key is not None:
                key, sub = jr.split(key)
            h, trace, value, g_t = self._update(
                step, loss, params, h, trace, sub, inp, y
            )
            g = jax.tree.map(lambda g, d: g + a.astype(d.dtype) * d, g, g_t)
            return (h, trace, key, g, total + a * value), None

        g0 = jax.tree.map(jnp.zeros_like, eqx.filter(params, eqx.is_inexact_array))
        total = jnp.zeros((), jnp.result_type(weights))
        carry = (h0, trace, key, g0, total)
        (_, _, _, grads, total), _ = jax.lax.scan(
            body, carry, (inputs, targets, weights)
        )
        return total, grads, None


def _add(g, extra):
    if g is None or extra is None:
        return g
    return g + extra.astype(g.dtype)


def _mask(params, grads):
    """Zero the gradient of a sparse `W` off its mask."""
    if not isinstance(params, Model) or getattr(grads, "dynamics", None) is None:
        return grads
    W = getattr(grads.dynamics, "W", None)
    if W is None:
        return grads
    return eqx.tree_at(
        lambda g: g.dynamics.W, grads, zero_off_mask(params.dynamics, "W", W)
    )


def _is_none(x) -> bool:
    return x is None
