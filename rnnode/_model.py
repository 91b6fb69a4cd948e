"""A recurrent model: dynamics + integrator (continuous systems only) + readout,
rolled out over a time-major input sequence with `lax.scan`."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._dynamics import (
    AbstractCell,
    AbstractDynamics,
    AbstractSequenceCell,
    AbstractVectorField,
)
from ._integrate import AbstractIntegrator
from ._step_inputs import SequenceInputs, batch_keys, step_key


class Model(eqx.Module):
    """Dynamics, how they are stepped in time, and what is read out.

    **Arguments:**

    - `dynamics`: a vector field (`CTRNN`, `LinearExample`, `DampedOscillator`, …)
      or a discrete cell (`ElmanRNN`, `LSTM`, `GRU`).
    - `integrator`: for a vector field, `Euler(dt)`, `Heun(dt)`, `RK4(dt)` or
      `Diffrax(dt, solver=...)`; must be `None` for a discrete cell.
    - `readout`: a module mapping `dynamics.observe(h)` to outputs, e.g.
      `Linear(n, k, key=...)`; `None` outputs the observed state itself.
    - `initial_state`: the state before the first input; zeros if `None`.
    - `learn_initial_state`: if true, `initial_state` is trained with the rest;
      otherwise gradients do not flow into it.

    Time is `t_i = t0 + i dt` (`dt = 1` for discrete cells). The state `h_t` is
    the state after consuming the input `x_t`; losses compare `output(h_t)` with
    the target `y_t`.
    """

    dynamics: AbstractDynamics
    integrator: AbstractIntegrator | None
    readout: Callable | None
    initial_state: Float[Array, " state"] | None
    learn_initial_state: bool = eqx.field(static=True)

    def __init__(
        self,
        dynamics: AbstractDynamics,
        integrator: AbstractIntegrator | None = None,
        readout: Callable | None = None,
        *,
        initial_state: ArrayLike | None = None,
        learn_initial_state: bool = False,
    ):
        if isinstance(dynamics, AbstractVectorField) and integrator is None:
            raise ValueError(
                f"`{type(dynamics).__name__}` is a continuous-time vector field; "
                "pass `integrator=rnnode.Euler(dt=...)` (or `Heun`, `RK4`, `Diffrax`)"
            )
        if isinstance(dynamics, AbstractCell) and integrator is not None:
            raise ValueError(
                f"`{type(dynamics).__name__}` is a discrete cell and is stepped "
                "directly; pass `integrator=None`"
            )
        if not isinstance(dynamics, AbstractDynamics):
            raise ValueError(
                f"`dynamics` must be an rnnode dynamics module, got {type(dynamics)}"
            )
        if initial_state is not None:
            initial_state = jnp.asarray(initial_state, dtype=float)
            if initial_state.shape != (dynamics.state_size,):
                raise ValueError(
                    f"`initial_state` must have shape ({dynamics.state_size},), "
                    f"got {initial_state.shape}"
                )
        elif learn_initial_state:
            initial_state = jnp.zeros((dynamics.state_size,))
        self.dynamics = dynamics
        self.integrator = integrator
        self.readout = readout
        self.initial_state = initial_state
        self.learn_initial_state = learn_initial_state

    @property
    def dt(self) -> float:
        """The interval between inputs: the integrator's `dt`, or 1 for a cell."""
        return 1.0 if self.integrator is None else self.integrator.dt

    @property
    def state_size(self) -> int:
        return self.dynamics.state_size

    @property
    def input_size(self) -> int:
        return self.dynamics.input_size

    @property
    def parallel(self) -> bool:
        """Whether whole sequences run by the dynamics' own parallel path (an
        `LRU(..., parallel=True)`, or a `Stack` with such layers)."""
        dyn = self.dynamics
        return isinstance(dyn, AbstractSequenceCell) and dyn.parallel

    def init_state(self) -> Float[Array, " state"]:
        """The initial state (zeros, given, or learnt)."""
        if self.initial_state is None:
            return jnp.zeros((self.dynamics.state_size,))
        if self.learn_initial_state:
            return self.initial_state
        return jax.lax.stop_gradient(self.initial_state)

    def step(
        self,
        h: Float[Array, " state"],
        t: Float[ArrayLike, ""],
        x: Float[Array, " input"],
        x_next: Float[Array, " input"],
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " state"]:
        """One step: `h_t` from `h_{t-1}`, with input `x` (and the next sample
        `x_next`, used by integrators that interpolate the input); `key` draws
        this step's private noise (noisy dynamics only; `None`: noise-free)."""
        if self.integrator is None:
            del t, x_next, key
            return self.dynamics(h, x)
        return self.integrator.step(self.dynamics, t, h, x, x_next, key)

    def output(self, h: Float[Array, " state"]) -> Float[Array, " out"]:
        """The readout of a state."""
        obs = self.dynamics.observe(h)
        return obs if self.readout is None else self.readout(obs)

    def step_inputs(
        self,
        xs: Float[Array, "time input"],
        t0: float = 0.0,
        key: PRNGKeyArray | None = None,
    ) -> tuple:
        """The per-step arguments `(t, x, x_next)` of `step` for a whole sequence,
        as arrays of length `T` (`sequence_inputs` builds them one step at a
        time); with a noise `key`, also the steps' keys `fold_in(key, i)`:
        `(t, x, x_next, k)`."""
        T = xs.shape[0]
        ts = t0 + self.dt * jnp.arange(T, dtype=xs.dtype)
        xs_next = jnp.concatenate([xs[1:], xs[-1:]], axis=0)
        if key is None:  # noise-free
            return ts, xs, xs_next
        keys = jax.vmap(lambda i: step_key(key, i))(jnp.arange(T))
        return ts, xs, xs_next, keys

    def sequence_inputs(
        self,
        xs: Float[Array, "time input"],
        t0: float = 0.0,
        key: PRNGKeyArray | None = None,
    ) -> SequenceInputs:
        """The per-step arguments `(t, x, x_next)` of `step` (with a noise `key`,
        `(t, x, x_next, k)`), each built when its step comes (`.at(i)`), from
        `xs` (and `key`) alone."""
        return SequenceInputs(xs, t0, self.dt, key)

    def rollout(
        self,
        xs: Float[ArrayLike, "time *batch input"],
        *,
        h0: Float[ArrayLike, "*batch state"] | None = None,
        t0: float = 0.0,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "time *batch state"], Float[Array, "time *batch out"]]:
        """Run over a time-major sequence, `(time, input)` or `(time, batch, input)`.

        `key` draws the private noise of noisy dynamics (`CTRNN(noise_std=σ)`):
        step `i` of a sequence uses `fold_in(key, i)`, and the sequences of a
        batch `split(key, B)`, so `sequence_loss(..., key=key)` sees the same
        realisation; `None` (default) runs noise-free.

        **Returns:** `(hs, outs)`, the states `h_1 … h_T` and their readouts.
        """
        xs = check_inputs(self, xs)
        if xs.ndim == 3:
            h0_axis = None if h0 is None or jnp.ndim(h0) == 1 else 0
            keys = batch_keys(key, xs.shape[1])
            fn = jax.vmap(
                lambda x, h, k: self.rollout(x, h0=h, t0=t0, key=k),
                in_axes=(1, h0_axis, None if keys is None else 0),
                out_axes=(1, 1),
            )
            return fn(xs, h0, keys)
        h = self.init_state() if h0 is None else jnp.asarray(h0)
        if self.parallel:
            hs = self.dynamics.sequence(h, xs)
            return hs, jax.vmap(self.output)(hs)

        inputs = self.sequence_inputs(xs, t0, key)

        def body(carry, _):
            h, i = carry  # a counter: the step's inputs are built here
            h = self.step(h, *inputs.at(i))
            return (h, i + 1), (h, self.output(h))

        _, (hs, outs) = jax.lax.scan(body, (h, 0), None, length=inputs.length())
        return hs, outs


def check_inputs(model: Model, xs) -> Array:
    """Validate a time-major input array against the model; return it as an array."""
    xs = jnp.asarray(xs)
    if xs.ndim not in (2, 3):
        raise ValueError(
            f"inputs must be time-major `(time, input)` or `(time, batch, input)`, "
            f"got shape {xs.shape}"
        )
    if xs.shape[0] == 0:
        raise ValueError("inputs have no time steps")
    if xs.shape[-1] != model.input_size:
        raise ValueError(
            f"inputs have {xs.shape[-1]} features but the model's "
            f"`input_size` is {model.input_size}"
        )
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise ValueError(f"inputs must be floating point, got dtype {xs.dtype}")
    return xs
