"""The online interface shared by exact RTRL and its approximations.

An online method carries, along with the state `h_t`, a *trace*: some
representation of the influence matrix `P_t = ∂h_t/∂θ`, which obeys

    P_t = J_t P_{t-1} + I_t,        J_t = ∂h_t/∂h_{t-1},   I_t = ∂step_t/∂θ,

and at every step turns the loss's `∂l_t/∂h_t` into a gradient estimate
`ĝ_t = ∂l_t/∂h_t · P̂_t + ∂l_t/∂θ`. Exact RTRL keeps all of `P`; SnAp, UORO,
KF-RTRL, RFLO and e-prop keep a cheaper approximation. The same per-step update
serves both uses of a method: online (`init` / `step`, one gradient per step) and
as `gradient=` of `sequence_loss` (a custom VJP whose forward scan sums
`Σ_t a_t ĝ_t` with the parameters held fixed).
"""

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._cells import GRU, LSTM, ElmanRNN
from .._dynamics import CTRNN
from .._integrate import Euler
from .._losses import mse
from .._model import Model
from ._base import AbstractGradient, scan_loss


class AbstractOnlineGradient(AbstractGradient):
    """A gradient method that also runs online: `init` starts a run, `step`
    consumes one time step and returns that step's loss and gradient (estimate),
    so that the weights can be updated at every step. `RTRL` and every method of
    `AbstractTraceGradient` implement it."""

    @abc.abstractmethod
    def init(
        self,
        model: Model,
        h0: Float[ArrayLike, " state"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
        t0: float = 0.0,
    ) -> PyTree:
        """Start an online run from `h0` (default `model.init_state()`); `key`
        seeds a stochastic method (ignored by deterministic ones)."""

    @abc.abstractmethod
    def step(
        self,
        model: Model,
        state: PyTree,
        x_t: Float[ArrayLike, " input"],
        y_t: PyTree[ArrayLike],
        *,
        loss: Callable[[Array, Array], Float[Array, ""]] = mse,
        weight: Float[ArrayLike, ""] = 1.0,
        x_next: Float[ArrayLike, " input"] | None = None,
        t: Float[ArrayLike, ""] | None = None,
        noise_key: PRNGKeyArray | None = None,
    ) -> tuple[PyTree, Float[Array, ""], PyTree]:
        """Consume `x_t`, compare `model.output(h_t)` with `y_t`; return
        `(state, a_t l_t, a_t ĝ_t)`, the gradient shaped like
        `eqx.filter(model, eqx.is_inexact_array)`."""


class OnlineState(eqx.Module):
    """Where an online run of an `AbstractTraceGradient` method stands.

    - `h`: the current state `h_t`.
    - `trace`: the method's approximation of `∂h_t/∂θ` (see each method).
    - `key`: the PRNG key of a stochastic method (`UORO`, `KFRTRL`), split once a
      step, so that a checkpointed run resumes bit-identically; `None` otherwise.
    - `t`: the time of the next input.
    """

    h: Float[Array, " state"]
    trace: PyTree
    key: PRNGKeyArray | None
    t: Float[Array, ""]


class AbstractTraceGradient(AbstractOnlineGradient):
    """An online method defined by how it approximates `P_t = J_t P_{t-1} + I_t`.

    A subclass says how to start its trace (`_init_trace`), how to advance it by
    one step (`_advance`), and how a trace and the loss's `∂l_t/∂h_t` make a
    gradient (`_gradient`); this base class runs it online (`init`, `step`) and as
    `gradient=` of `sequence_loss` (`loss`: a custom VJP whose forward scan sums
    `Σ_t a_t ĝ_t` with the parameters held fixed, and whose backward pass scales
    it by the cotangent; memory independent of the sequence length).

    The parameters of the readout get their exact gradient `∂l_t/∂θ`. The initial
    state is not differentiated (a learnt initial state is an error; use `RTRL`).
    Stochastic methods (`stochastic = True`) draw their randomness from the key in
    the online state; the whole-sequence `loss` starts from `jr.PRNGKey(seed)`, so
    `loss` and an online run started with `init(model, key=jr.PRNGKey(seed))` give
    the same numbers. Under `vmap` over a batch every sequence uses that same
    key (each estimate is still unbiased).
    """

    stochastic: ClassVar[bool] = False

    @abc.abstractmethod
    def _validate(self, params) -> None:
        """Raise a `ValueError` if this method does not cover these parameters."""

    @abc.abstractmethod
    def _init_trace(self, params, h, inp) -> PyTree:
        """The trace at `t = 0` (`P_0 = 0`); `inp = (t, x, x_next)` is a sample
        step input (for shapes and static patterns)."""

    @abc.abstractmethod
    def _advance(self, step, params, h, trace, key, inp) -> tuple[Array, PyTree, Any]:
        """`(h_t, trace_t, aux)` from `(h_{t-1}, trace_{t-1})` and
        `inp = (t, x, x_next)`; `step(params, h, inp)` is the recurrent map; `aux`
        (anything, static patterns included) goes to `_gradient` of the same step."""

    @abc.abstractmethod
    def _gradient(self, params, trace, aux, dh, h, y, loss) -> dict[int, Array]:
        """`∂l_t/∂h_t · P̂_t` for the parameters the trace covers, by index in
        `jax.tree_util.tree_leaves(params)`; `dh = ∂l_t/∂h_t` (methods with a
        learning signal of their own compute it from `h`, `y` and
        `loss(params, h, y)`)."""

    def loss(self, *, step, loss, params, h0, inputs, targets, weights):
        self._validate(params)
        return _online_loss((params, h0, inputs, targets, weights), step, loss, self)

    def init(
        self,
        model: Model,
        h0: Float[ArrayLike, " state"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
        t0: float = 0.0,
    ) -> OnlineState:
        """Start an online run: the state `h0` (default `model.init_state()`), a
        zero trace, and (stochastic methods) the key, default `jr.PRNGKey(seed)`.

        **Returns:** an `OnlineState` for `step`.
        """
        name = type(self).__name__
        if not isinstance(model, Model):
            raise ValueError(
                f"`{name}.init` needs an `rnnode.Model`, got {type(model).__name__}"
            )
        self._validate(model)
        n = model.state_size
        if h0 is None:
            if model.learn_initial_state:
                raise ValueError(_H0_MESSAGE.format(name=name))
            params = jax.tree.leaves(eqx.filter(model.dynamics, eqx.is_inexact_array))
            h = model.init_state()
            if params:  # zeros in the parameters' precision (float32 under x64)
                h = h.astype(params[0].dtype)
        else:
            h = jnp.asarray(h0)
            if h.shape != (n,):
                raise ValueError(
                    f"`{name}.init(h0=...)` must have shape ({n},), got {h.shape}"
                )
        t = jnp.asarray(t0, dtype=h.dtype)
        x = jnp.zeros((model.input_size,), h.dtype)
        trace = self._init_trace(model, h, (t, x, x))
        if self.stochastic:
            key = jr.PRNGKey(self.seed) if key is None else key
        else:
            key = None
        return OnlineState(h=h, trace=trace, key=key, t=t)

    def step(
        self,
        model: Model,
        state: OnlineState,
        x_t: Float[ArrayLike, " input"],
        y_t: PyTree[ArrayLike],
        *,
        loss: Callable[[Array, Array], Float[Array, ""]] = mse,
        weight: Float[ArrayLike, ""] = 1.0,
        x_next: Float[ArrayLike, " input"] | None = None,
        t: Float[ArrayLike, ""] | None = None,
        noise_key: PRNGKeyArray | None = None,
    ) -> tuple[OnlineState, Float[Array, ""], PyTree]:
        """One online step: consume `x_t`, compare `model.output(h_t)` with `y_t`,
        and return this step's gradient estimate.

        **Arguments:**

        - `model`, `state`: the model and the running `OnlineState`.
        - `x_t`, `y_t`: this step's input and target.
        - `loss`: the per-step loss `l(output, target)`.
        - `weight`: the time weight `a_t` of this step.
        - `x_next`: the next input (integrators that interpolate); default `x_t`.
        - `t`: the time of `x_t`; default `state.t`.
        - `noise_key`: the key of this step's private noise (noisy dynamics;
          `None`: noise-free). `jax.random.fold_in(key, i)` at step `i` gives
          the realisation that `sequence_loss(..., key=key)` uses.

        **Returns:** `(state, a_t l_t, a_t ĝ_t)`, the gradient shaped like
        `eqx.filter(model, eqx.is_inexact_array)`. With fixed weights (and the same
        key), summing them over a sequence gives `sequence_loss` with this method
        and its gradient.
        """
        name = type(self).__name__
        if not isinstance(model, Model):
            raise ValueError(
                f"`{name}.step` needs an `rnnode.Model`, got {type(model).__name__}"
            )
        if not isinstance(state, OnlineState):
            raise ValueError(
                f"`{name}.step` needs the `OnlineState` from `{name}.init`, got "
                f"{type(state).__name__}"
            )
        self._validate(model)
        x_t = jnp.asarray(x_t)
        if x_t.shape != (model.input_size,):
            raise ValueError(
                f"`{name}.step`: `x_t` must have shape ({model.input_size},), got "
                f"{x_t.shape}"
            )
        x_next = x_t if x_next is None else jnp.asarray(x_next)
        t = state.t if t is None else jnp.asarray(t, dtype=state.t.dtype)

        def step_loss(params, h, y):
            return loss(params.output(h), y)

        h, trace, key, value, grads = _update(
            self,
            _model_step,
            step_loss,
            model,
            state.h,
            state.trace,
            state.key,
            (t, x_t, x_next, noise_key),
            y_t,
            jnp.asarray(weight, dtype=state.h.dtype),
        )
        new = OnlineState(h=h, trace=trace, key=key, t=t + model.dt)
        return new, value, grads


_H0_MESSAGE = (
    "`{name}` does not differentiate the initial state; use `RTRL()` to learn it, "
    "or set `learn_initial_state=False`"
)


# --------------------------------------------------------------------------------------
# One step, shared by the online and the whole-sequence paths


def _update(strategy, step, loss, params, h, trace, key, inp, y, a):
    """`h_t`, the trace, the key, `a_t l_t` and `a_t ĝ_t` (a pytree like `params`
    with `None` at leaves that are not inexact arrays)."""
    sub = None
    if key is not None:
        key, sub = jr.split(key)
    h, trace, aux = strategy._advance(step, params, h, trace, sub, inp)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    direct = [i for i, v in enumerate(leaves) if eqx.is_inexact_array(v)]

    def f(sub_leaves, h):
        return loss(_rebuild(treedef, leaves, direct, sub_leaves), h, y)

    value, (dsub, dh) = jax.value_and_grad(f, argnums=(0, 1))(
        [leaves[i] for i in direct], h
    )
    extra = strategy._gradient(params, trace, aux, dh, h, y, loss)
    grads = [None] * len(leaves)
    for i, g in zip(direct, dsub, strict=True):
        if i in extra:
            g = g + extra[i].astype(g.dtype)
        grads[i] = a.astype(g.dtype) * g
    return h, trace, key, a * value, jax.tree_util.tree_unflatten(treedef, grads)


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
        raise ValueError(
            f"`{name}` differentiates the parameters only; for gradients with "
            "respect to inputs, targets or weights use `Autodiff()` or `BPTT()`"
        )
    if p_h0:
        raise ValueError(_H0_MESSAGE.format(name=name))
    strategy._validate(params)
    key = jr.PRNGKey(strategy.seed) if strategy.stochastic else None
    first = jax.tree.map(lambda a: a[0], inputs)
    trace = strategy._init_trace(params, h0, first)

    def body(carry, xs):
        h, trace, key, g, total = carry
        inp, y, a = xs
        h, trace, key, value, g_t = _update(
            strategy, step, loss, params, h, trace, key, inp, y, a
        )
        g = jax.tree.map(jnp.add, g, g_t)
        return (h, trace, key, g, total + value), None

    g0 = jax.tree.map(jnp.zeros_like, eqx.filter(params, eqx.is_inexact_array))
    total = jnp.zeros((), jnp.result_type(weights))
    carry = (h0, trace, key, g0, total)
    (_, _, _, grads, total), _ = jax.lax.scan(body, carry, (inputs, targets, weights))
    grads = jax.tree.map(
        lambda g, p: g if p else None, grads, p_params, is_leaf=lambda x: x is None
    )
    return total, grads


@_online_loss.def_bwd
def _online_loss_bwd(residuals, grad_obj, perturbed, vjp_arg, step, loss, strategy):
    del perturbed, step, loss, strategy
    grads = residuals
    _, _, inputs, targets, weights = vjp_arg
    no_grad = jax.tree.map(lambda _: None, (inputs, targets, weights))
    if grad_obj is None:
        grads = jax.tree.map(lambda _: None, grads)
    else:
        grads = jax.tree.map(lambda g: grad_obj * g, grads)
    return (grads, None, *no_grad)


# --------------------------------------------------------------------------------------
# Helpers shared by the methods


def _model_step(model, h, inp):
    return model.step(h, *inp)


def _rebuild(treedef, leaves, idx, sub):
    leaves = list(leaves)
    for i, v in zip(idx, sub, strict=True):
        leaves[i] = v
    return jax.tree_util.tree_unflatten(treedef, leaves)


def dynamics_leaves(params) -> dict[str, int]:
    """The floating-point fields of `params.dynamics`, by name, with their index in
    `jax.tree_util.tree_leaves(params)`."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    out = {}
    for i, (path, leaf) in enumerate(flat):
        if (
            eqx.is_inexact_array(leaf)
            and len(path) == 2
            and getattr(path[0], "name", None) == "dynamics"
        ):
            out[path[1].name] = i
    return out


def cell_name(params) -> str:
    """How an error message names a model's dynamics (and integrator)."""
    if not isinstance(params, Model):
        return f"parameters of type `{type(params).__name__}`"
    name = f"`{type(params.dynamics).__name__}`"
    if params.integrator is not None:
        name += f" with `{type(params.integrator).__name__}`"
    return name


def check_cell(method: str, params, cells: tuple, hint: str) -> None:
    """A `ValueError` unless `params` is a `Model` whose dynamics is one of `cells`
    (discrete cells, or `CTRNN` stepped by `Euler`)."""
    ok = isinstance(params, Model) and isinstance(params.dynamics, cells)
    if ok and isinstance(params.dynamics, CTRNN):
        ok = isinstance(params.integrator, Euler)
    if not ok:
        names = [f"`{c.__name__}`" for c in cells if c is not CTRNN]
        if CTRNN in cells:
            names.append("`CTRNN` with `Euler`")
        names = ", ".join(names[:-1]) + " and " + names[-1]
        raise ValueError(
            f"`{method}` is defined for {names}; got {cell_name(params)}. {hint}"
        )


ALL_CELLS = (ElmanRNN, CTRNN, LSTM, GRU)


def feedback_signal(feedback: str, seed: int, params, dh, h, y, loss) -> Array:
    """The learning signal `L_t` mapped to the state: `∂l_t/∂h_t` itself
    (`"symmetric"`: the true readout weights), or `Bᵀ ∂l_t/∂o_t` pushed through
    `observe` with a fixed random `B` of the readout's shape `(out, observed)`,
    entries uniform on `±√(3/observed)` (variance `1/observed`) drawn from `jr.PRNGKey(seed)` (`"random"`)."""
    if feedback == "symmetric":
        return dh
    obs, observe_vjp = jax.vjp(params.dynamics.observe, h)
    out = jax.eval_shape(params.output, h)
    if out.ndim != 1:
        raise ValueError(
            f"`feedback='random'` needs a vector output, got shape {out.shape}"
        )
    delta = jnp.zeros(out.shape, out.dtype)

    def shifted_loss(delta):
        model = eqx.tree_at(
            lambda m: m.readout,
            params,
            _Shifted(params.readout, delta),
            is_leaf=lambda x: x is None,
        )
        return loss(model, h, y)

    dl_do = jax.grad(shifted_loss)(delta)
    # uniform bits in float32 whatever the precision (no transcendental functions),
    # so float32 and float64, jitted and eager runs use the very same matrix
    bound = float(np.sqrt(3.0 / obs.shape[0]))
    shape = (out.shape[0], obs.shape[0])
    B = jr.uniform(jr.PRNGKey(seed), shape, jnp.float32, -bound, bound)
    B = B.astype(obs.dtype)
    (sig,) = observe_vjp((dl_do.astype(obs.dtype) @ B).astype(obs.dtype))
    return sig


class _Shifted(eqx.Module):
    """A readout plus a constant: `∂l/∂delta` at `delta = 0` is `∂l/∂o`."""

    inner: Callable | None
    delta: Array

    def __call__(self, obs):
        out = obs if self.inner is None else self.inner(obs)
        return out + self.delta


FEEDBACKS = ("symmetric", "random")


def check_feedback(method: str, feedback) -> None:
    if feedback not in FEEDBACKS:
        raise ValueError(
            f"`{method}(feedback={feedback!r})`: choose `'symmetric'` (the readout's "
            "own weights) or `'random'` (a fixed random matrix)"
        )


def check_seed(method: str, seed) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"`{method}(seed={seed!r})`: `seed` must be an integer")
