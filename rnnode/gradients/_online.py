"""The skeleton shared by every online method: exact RTRL, its approximations
and the layer-local rule.

An online method carries, along with the state `h_t`, a *trace*: some
representation of the influence matrix `P_t = ∂h_t/∂θ`, which obeys

    P_t = J_t P_{t-1} + I_t,        J_t = ∂h_t/∂h_{t-1},   I_t = ∂step_t/∂θ,

and at every step turns the loss's `∂l_t/∂h_t` into a gradient estimate
`ĝ_t = ∂l_t/∂h_t · P̂_t + ∂l_t/∂θ`. The same per-step update serves both uses of
a method: online (`init` / `step` / `reset`, one gradient per step, on one
stream or a batch of streams) and as `gradient=` of `sequence_loss` (one custom
VJP, here, whose forward scan sums `Σ_t a_t ĝ_t` with the parameters held fixed).
"""

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, PyTree

from .._dynamics import is_noisy
from .._losses import mse
from .._model import Model
from ._base import AbstractGradient, scan_loss


class OnlineState(eqx.Module):
    """Where an online run stands, the same type for every online method.

    - `h`: the current state `h_t` (`(streams, state)` for a batch of streams).
    - `trace`: the method's representation of `∂h_t/∂θ` (exact RTRL: a pytree
      shaped like `eqx.filter(model, eqx.is_inexact_array)` whose leaf for a
      parameter of shape `s` has shape `(state, *s)`; see each method).
    - `key`: a PRNG key, split once a step (`step_keys`): the step's key drives a
      stochastic method (`UORO`, `KFRTRL`) and, through `jr.fold_in(·, 1)`, any
      noise of the dynamics; a checkpointed run resumes bit-identically, and
      `reset` keeps it going.
    - `t`: the time of the next input.
    """

    h: Float[Array, "*streams state"]
    trace: PyTree
    key: PRNGKeyArray
    t: Float[Array, "*streams"]


def step_keys(key: PRNGKeyArray) -> tuple[PRNGKeyArray, PRNGKeyArray, PRNGKeyArray]:
    """`(next_key, method_key, noise_key)` for one online step: the key carried to
    the next step, the key of the method's own randomness this step, and the key
    of the dynamics' noise this step (independent of the method's)."""
    key, sub = jr.split(key)
    return key, sub, jr.fold_in(sub, 1)


class AbstractOnlineGradient(AbstractGradient):
    """A gradient method that also runs online: `init` starts a run (one stream or
    a batch of streams), `step` consumes one time step and returns that step's
    loss and gradient (estimate), `reset` starts the streams afresh (a washout)
    with the method's randomness going on. The checks of `init` / `step`, the
    batching over streams and the custom VJP of `loss` live here, once, for
    `RTRL`, `LayerLocalRTRL` and every `AbstractTraceGradient` rule.

    A subclass says which models it covers (`validate`), how its trace starts
    (`init_trace`), one step of state, trace and gradient (`_update`), and a whole
    sequence's forward pass (`_sequence`). To write a new rule, subclass
    `AbstractTraceGradient`, which asks only for the trace's start, its advance
    and the gradient it gives.
    """

    stochastic: ClassVar[bool] = False
    """Whether the method draws random numbers (then its `seed` field seeds the
    whole-sequence path and the default key of `init`)."""
    learns_initial_state: ClassVar[bool] = False
    """Whether the method differentiates a learnt initial state."""

    @abc.abstractmethod
    def validate(self, model: Model) -> None:
        """Raise a `ValueError` naming what is missing if this method does not
        cover `model`."""

    @abc.abstractmethod
    def init_trace(self, model: Model, h: Array, inputs: PyTree) -> PyTree:
        """The trace at `t = 0` (`P_0 = 0`); `inputs = (t, x, x_next)` is a sample
        step input (for shapes and static patterns)."""

    @abc.abstractmethod
    def _update(self, step, loss, params, h, trace, key, inp, y):
        """One step: `(h_t, trace_t, l_t, ĝ_t)` with `ĝ_t` shaped like
        `eqx.filter(params, eqx.is_inexact_array)` (unweighted)."""

    @abc.abstractmethod
    def _sequence(
        self, step, loss, params, h0, inputs, targets, weights, p_params, learn_h0
    ):
        """The forward pass of `loss`: `(Σ_t a_t l_t, Σ_t a_t ĝ_t, g_h0)` with
        `g_h0` the gradient of `h0` (`None` unless `learn_h0`); `p_params` tells
        which parameters are differentiated (the others may be skipped)."""

    # ----------------------------------------------------------------------------

    def loss(self, *, step, loss, params, h0, inputs, targets, weights):
        self.validate(params)
        return _online_loss((params, h0, inputs, targets, weights), step, loss, self)

    def init(
        self,
        model: Model,
        h0: Float[ArrayLike, "*streams state"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
        t0: float = 0.0,
        streams: int | None = None,
    ) -> OnlineState:
        """Start an online run: the state `h0` (default `model.init_state()`), a
        zero trace (exact RTRL: the identity for a learnt initial state), and the
        key.

        **Arguments:**

        - `model`: the `rnnode.Model` to learn.
        - `h0`: the initial state, `(state,)`, or `(streams, state)` with `streams`.
        - `key`: the run's PRNG key; default `jr.PRNGKey(seed)` for a stochastic
          method, `jr.PRNGKey(0)` otherwise. With `streams`, each stream gets its
          own key, split from it.
        - `t0`: the time of the first input.
        - `streams`: the number of parallel streams, or `None` for one unbatched
          stream. `step` then takes inputs `(streams, input)` and returns the
          gradient averaged over the streams.

        **Returns:** an `OnlineState` for `step` (batched over the streams).
        """
        name = type(self).__name__
        _check_model(name, "init", model)
        self.validate(model)
        if key is None:
            key = jr.PRNGKey(self.seed if self.stochastic else 0)
        if streams is not None:
            if (
                not isinstance(streams, int)
                or isinstance(streams, bool)
                or (streams < 1)
            ):
                raise ValueError(
                    f"`{name}.init(streams={streams!r})`: `streams` must be a "
                    "positive integer (or `None` for one unbatched stream)"
                )
            n = model.state_size
            if h0 is not None:
                h0 = jnp.asarray(h0)
                if h0.shape not in ((n,), (streams, n)):
                    raise ValueError(
                        f"`{name}.init(h0=...)` must have shape ({n},) or "
                        f"({streams}, {n}) with `streams={streams}`, got {h0.shape}"
                    )
                h0 = jnp.broadcast_to(h0, (streams, n))
                return jax.vmap(lambda h, k: self._init_one(model, h, k, t0))(
                    h0, jr.split(key, streams)
                )
            return jax.vmap(lambda k: self._init_one(model, None, k, t0))(
                jr.split(key, streams)
            )
        return self._init_one(model, h0, key, t0)

    def reset(
        self,
        model: Model,
        state: OnlineState,
        h0: Float[ArrayLike, "*streams state"] | None = None,
        *,
        where: Bool[ArrayLike, "*streams"] | None = None,
        t0: float = 0.0,
    ) -> OnlineState:
        """Start afresh (a washout): the state back to `h0` (default
        `model.init_state()`), the trace to zero and the time to `t0`, as `init`
        does, but the key goes on where it was, so that the method's randomness
        does not repeat.

        **Arguments:**

        - `model`, `state`: the model and the running `OnlineState`.
        - `h0`, `t0`: as for `init`.
        - `where`: for a batch of streams, which streams to reset (a bool per
          stream); default all.

        **Returns:** the `OnlineState`; `reset(model, state)` equals
        `init(model, key=state.key)` stream by stream.
        """
        name = type(self).__name__
        _check_model(name, "reset", model)
        _check_state(name, "reset", state)
        self.validate(model)
        if state.h.ndim == 1:
            if where is not None:
                raise ValueError(
                    f"`{name}.reset(where=...)` is for a batch of streams; this "
                    "state has one stream"
                )
            return self._init_one(model, h0, state.key, t0)
        S, n = state.h.shape
        if h0 is not None:
            h0 = jnp.broadcast_to(jnp.asarray(h0), (S, n))
            fresh = jax.vmap(lambda h, k: self._init_one(model, h, k, t0))(
                h0, state.key
            )
        else:
            fresh = jax.vmap(lambda k: self._init_one(model, None, k, t0))(state.key)
        if where is None:
            return fresh
        where = jnp.asarray(where)
        if where.shape != (S,):
            raise ValueError(
                f"`{name}.reset(where=...)` must have shape ({S},) (one bool per "
                f"stream), got {where.shape}"
            )

        def pick(a, b):
            w = where.reshape(where.shape + (1,) * (a.ndim - 1))
            return jnp.where(w, a, b)

        return jax.tree.map(pick, fresh, state)

    def step(
        self,
        model: Model,
        state: OnlineState,
        x_t: Float[ArrayLike, "*streams input"],
        y_t: PyTree[ArrayLike],
        *,
        loss: Callable[[Array, Array], Float[Array, ""]] = mse,
        weight: Float[ArrayLike, "*streams"] = 1.0,
        x_next: Float[ArrayLike, "*streams input"] | None = None,
        t: Float[ArrayLike, "*streams"] | None = None,
    ) -> tuple[OnlineState, Float[Array, ""], PyTree]:
        """One online step: consume `x_t`, compare `model.output(h_t)` with `y_t`,
        and return this step's gradient (estimate), so that the weights can be
        updated at every step (e.g. with optax).

        **Arguments:**

        - `model`, `state`: the model and the running `OnlineState`.
        - `x_t`, `y_t`: this step's input and target; for a batch of streams
          (`init(..., streams=S)`), with a leading axis of `S`.
        - `loss`: the per-step loss `l(output, target)`.
        - `weight`: the time weight `a_t` of this step (one per stream, or one
          for all).
        - `x_next`: the next input, for integrators that interpolate the input
          linearly; default `x_t`.
        - `t`: the time of `x_t`; default `state.t`.

        Noisy dynamics (`CTRNN(noise_std=σ)`) draw this step's private noise
        from the state's key (`step_keys`: independent of the method's own
        randomness, one realisation per stream, fresh at every step).

        **Returns:** `(state, a_t l_t, a_t ĝ_t)`, the gradient shaped like
        `eqx.filter(model, eqx.is_inexact_array)`. For a batch of streams the loss
        and the gradient are the means over the streams. With fixed weights (and
        the same key), summing them over a sequence gives `sequence_loss` with
        this method and its gradient.
        """
        name = type(self).__name__
        _check_model(name, "step", model)
        _check_state(name, "step", state)
        self.validate(model)
        x_t = jnp.asarray(x_t)
        batched = state.h.ndim == 2
        want = (state.h.shape[0], model.input_size) if batched else (model.input_size,)
        if x_t.shape != want:
            raise ValueError(
                f"`{name}.step`: `x_t` must have shape {want}"
                + (" (streams, input)" if batched else "")
                + f", got {x_t.shape}"
            )
        x_next = x_t if x_next is None else jnp.asarray(x_next)
        t = state.t if t is None else jnp.asarray(t, dtype=state.t.dtype)
        weight = jnp.asarray(weight, dtype=state.h.real.dtype)
        noisy = is_noisy(model.dynamics)

        def one(h, trace, key, t, x, xn, y, a):
            def step_loss(params, h, y):
                return loss(params.output(h), y)

            key, sub, noise = step_keys(key)
            # the step's private noise (noisy dynamics only), from the state's key
            inp = (t, x, xn, noise) if noisy else (t, x, xn)
            h, trace, value, grads = self._update(
                _model_step, step_loss, model, h, trace, sub, inp, y
            )
            grads = jax.tree.map(lambda g: a.astype(g.dtype) * g, grads)
            new = OnlineState(h=h, trace=trace, key=key, t=t + model.dt)
            return new, a * value, grads

        if not batched:
            return one(state.h, state.trace, state.key, t, x_t, x_next, y_t, weight)
        S = state.h.shape[0]
        t = jnp.broadcast_to(t, (S,))
        weight = jnp.broadcast_to(weight, (S,))
        new, values, grads = jax.vmap(one)(
            state.h, state.trace, state.key, t, x_t, x_next, y_t, weight
        )
        grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
        return new, jnp.mean(values), grads

    def _init_one(self, model, h0, key, t0) -> OnlineState:
        name = type(self).__name__
        n = model.state_size
        if h0 is None:
            if model.learn_initial_state and not self.learns_initial_state:
                raise ValueError(_H0_MESSAGE.format(name=name))
            h = model.init_state()
            params = jax.tree.leaves(eqx.filter(model.dynamics, eqx.is_inexact_array))
            if params and jnp.issubdtype(h.dtype, jnp.floating):
                # zeros in the parameters' precision (float32 under x64)
                h = h.astype(params[0].real.dtype)
        else:
            h = jnp.asarray(h0)
            if h.shape != (n,):
                raise ValueError(
                    f"`{name}.init(h0=...)` must have shape ({n},), got {h.shape}"
                )
        t = jnp.asarray(t0, dtype=h.real.dtype)
        x = jnp.zeros((model.input_size,), h.real.dtype)
        trace = self.init_trace(model, h, (t, x, x))
        return OnlineState(h=h, trace=trace, key=key, t=t)


_H0_MESSAGE = (
    "`{name}` does not differentiate the initial state; use `RTRL()` to learn it, "
    "or set `learn_initial_state=False`"
)


def _check_model(name, what, model):
    if not isinstance(model, Model):
        raise ValueError(
            f"`{name}.{what}` needs an `rnnode.Model`, got {type(model).__name__}"
        )


def _check_state(name, what, state):
    if not isinstance(state, OnlineState):
        raise ValueError(
            f"`{name}.{what}` needs the `OnlineState` from `{name}.init`, got "
            f"{type(state).__name__}"
        )


def _model_step(model, h, inp):
    return model.step(h, *inp)


# --------------------------------------------------------------------------------------
# The one custom VJP of every online method's whole-sequence loss


@eqx.filter_custom_vjp
def _online_loss(vjp_arg, step, loss, strategy):
    params, h0, inputs, targets, weights = vjp_arg
    return scan_loss(step, loss, params, h0, inputs, targets, weights)


@_online_loss.def_fwd
def _online_loss_fwd(perturbed, vjp_arg, step, loss, strategy):
    params, h0, inputs, targets, weights = vjp_arg
    p_params, p_h0, *p_data = perturbed
    name = type(strategy).__name__
    if any(jax.tree.leaves(p_data)):
        what = "and the initial state " if strategy.learns_initial_state else ""
        raise ValueError(
            f"`{name}` differentiates the parameters {what}only; for gradients with "
            "respect to inputs, targets or weights use `Autodiff()` or `BPTT()`"
        )
    if p_h0 and not strategy.learns_initial_state:
        raise ValueError(_H0_MESSAGE.format(name=name))
    strategy.validate(params)
    total, grads, g_h0 = strategy._sequence(
        step, loss, params, h0, inputs, targets, weights, p_params, bool(p_h0)
    )
    grads = jax.tree.map(
        lambda g, p: g if p else None, grads, p_params, is_leaf=_is_none
    )
    return total, (grads, g_h0)


@_online_loss.def_bwd
def _online_loss_bwd(residuals, grad_obj, perturbed, vjp_arg, step, loss, strategy):
    del perturbed, step, loss, strategy
    grads, g_h0 = residuals
    _, _, inputs, targets, weights = vjp_arg
    no_grad = jax.tree.map(lambda _: None, (inputs, targets, weights))
    if grad_obj is None:
        grads, g_h0 = jax.tree.map(lambda _: None, (grads, g_h0))
    else:
        grads, g_h0 = jax.tree.map(lambda g: grad_obj * g, (grads, g_h0))
    return (grads, g_h0, *no_grad)


def _is_none(x) -> bool:
    return x is None
