"""Layer-local online learning for deep stacks of diagonal linear recurrences
(Zucchet et al., 2023)."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._losses import mse
from .._model import Model
from ._base import scan_loss
from ._online import AbstractOnlineGradient
from ._rtrl import RTRLState
from ._rtrl_diagonal import init_traces, lru_layers, traced_loss_fwd, traced_step


class LayerLocalRTRL(AbstractOnlineGradient):
    """Online learning of a stack of LRUs with layer-local eligibility traces
    (Zucchet, Meier, Schug, Mujika & Sacramento, 2023, "Online learning of
    long-range dependencies").

    Every `LRU` layer carries the element-wise sensitivities of its own state to
    its own recurrence parameters (`ν`, `θ`, `γ_log`, `B`; `O(n m)` numbers per
    layer, the cost of its forward pass). At each step the loss term is
    backpropagated through the current step only, from the readout down through
    the layers; the learning signal `δ^l = ∂l_t/∂h^l_t` it leaves at layer `l`
    meets that layer's traces, and every other parameter (the encoder, the
    LRU's `C` and `D`, the mixing and normalisation, the readout) gets its
    gradient through the current step. No sensitivity is carried across layers,
    so for a deeper stack the gradient is an approximation; for a `Model` of one
    `LRU` it is exact (and equal to `RTRL()`, which uses the same traces there).
    In a `Stack` with one LRU layer, the recurrence and everything above it are
    exact; the encoder and a pre-norm below the recurrence get the one-step
    gradient.

    Use it as `gradient=LayerLocalRTRL()` in `sequence_loss` (a forward
    `lax.scan` that accumulates the gradient, memory independent of `T`), or
    online with `init` and `step` like `RTRL`.

    Works on a `Model` whose dynamics are an `LRU` or a `Stack` of `LRU`s (a
    `ValueError` otherwise), with a fixed initial state. Only the parameters are
    differentiated.
    """

    def loss(self, *, step, loss, params, h0, inputs, targets, weights):
        lru_layers(params, "LayerLocalRTRL")
        return _layer_local_loss((params, h0, inputs, targets, weights), step, loss)

    def init(
        self,
        model: Model,
        h0: Float[ArrayLike, " state"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
        t0: float = 0.0,
    ) -> RTRLState:
        """Start an online run: the state `h0` (default `model.init_state()`) and
        zero traces. `key` is accepted for the common online interface and unused
        (the method is deterministic).

        **Returns:** an `RTRLState` whose `P` holds, per LRU layer, the complex
        traces `(∂h/∂λ, ∂h/∂γ_log, ∂h/∂B_re)`.
        """
        del key
        layers = _check(model)
        h = model.init_state() if h0 is None else jnp.asarray(h0)
        if h.shape != (model.state_size,):
            raise ValueError(
                f"`LayerLocalRTRL.init(h0=...)` must have shape "
                f"({model.state_size},), got {h.shape}"
            )
        traces = init_traces(model, layers)
        return RTRLState(h=h, P=traces, t=jnp.asarray(t0, dtype=h.dtype))

    def step(
        self,
        model: Model,
        state: RTRLState,
        x_t: Float[ArrayLike, " input"],
        y_t: PyTree[ArrayLike],
        *,
        loss: Callable[[Array, Array], Float[Array, ""]] = mse,
        weight: Float[ArrayLike, ""] = 1.0,
        x_next: Float[ArrayLike, " input"] | None = None,
        t: Float[ArrayLike, ""] | None = None,
        noise_key: PRNGKeyArray | None = None,
    ) -> tuple[RTRLState, Float[Array, ""], PyTree]:
        """One online step: consume `x_t`, compare `model.output(h_t)` with `y_t`.
        Same arguments as `RTRL.step` (`x_next` and `noise_key` are unused: the
        LRU and the stack are noise-free discrete cells).

        **Returns:** `(state, a_t l_t, grads)` with `grads` shaped like
        `eqx.filter(model, eqx.is_inexact_array)`, as `RTRL.step`.
        """
        del x_next, noise_key
        layers = _check(model)
        if not isinstance(state, RTRLState):
            raise ValueError(
                "`LayerLocalRTRL.step` needs the state from `LayerLocalRTRL.init`, "
                f"got {type(state)}"
            )
        x_t = jnp.asarray(x_t)
        if x_t.shape != (model.input_size,):
            raise ValueError(
                f"`LayerLocalRTRL.step`: `x_t` must have shape ({model.input_size},),"
                f" got {x_t.shape}"
            )
        h, traces, value, grads = traced_step(
            model,
            layers,
            state.h,
            state.P,
            x_t,
            y_t,
            lambda m, h, y: loss(m.output(h), y),
        )
        grads = jax.tree.map(lambda g: weight * g, grads)
        t = state.t if t is None else jnp.asarray(t, dtype=state.t.dtype)
        new_state = RTRLState(h=h, P=traces, t=t + model.dt)
        return new_state, weight * value, grads


def _check(model):
    if not isinstance(model, Model):
        raise ValueError(
            f"`LayerLocalRTRL` needs an `rnnode.Model`, got {type(model).__name__}"
        )
    if model.learn_initial_state:
        raise ValueError(
            "`LayerLocalRTRL` does not train an initial state; use "
            "`learn_initial_state=False` or `RTRL()`"
        )
    return lru_layers(model, "LayerLocalRTRL")


@eqx.filter_custom_vjp
def _layer_local_loss(vjp_arg, step, loss):
    params, h0, inputs, targets, weights = vjp_arg
    return scan_loss(step, loss, params, h0, inputs, targets, weights)


@_layer_local_loss.def_fwd
def _layer_local_loss_fwd(perturbed, vjp_arg, step, loss):
    del step
    params, h0, inputs, targets, weights = vjp_arg
    p_params, p_h0, *p_data = perturbed
    if p_h0 or any(jax.tree.leaves(p_data)):
        raise ValueError(
            "`LayerLocalRTRL` differentiates the parameters only; for gradients "
            "with respect to the initial state, inputs, targets or weights use "
            "`Autodiff()`, `BPTT()` or `RTRL()`"
        )
    _check(params)
    layers = lru_layers(params, "LayerLocalRTRL")
    total, grads = traced_loss_fwd(params, layers, h0, inputs, targets, weights, loss)
    grads = jax.tree.map(
        lambda p, g: g if p else None, p_params, grads, is_leaf=lambda x: x is None
    )
    return total, grads


@_layer_local_loss.def_bwd
def _layer_local_loss_bwd(grads, grad_obj, perturbed, vjp_arg, step, loss):
    del perturbed, step, loss
    _, h0, inputs, targets, weights = vjp_arg
    no_grad = jax.tree.map(lambda _: None, (h0, inputs, targets, weights))
    if grad_obj is None:
        grads = jax.tree.map(lambda _: None, grads)
    else:
        grads = jax.tree.map(lambda g: grad_obj * g, grads)
    return (grads, *no_grad)
