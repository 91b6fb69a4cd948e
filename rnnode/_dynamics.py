"""What evolves: continuous vector fields `dr/dt = F(t, r, x)` and discrete cells
`h_t = f(h_{t-1}, x_t)`, as Equinox modules holding their parameters.

Every state is one flat vector of `state_size` numbers (an LSTM's `(h, C)` is stored
as their concatenation), so that Jacobians, sensitivities and fixed points are
plain matrices and vectors. `observe(state)` gives the part a readout sees.
"""

import abc
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._activations import get_activation


class AbstractDynamics(eqx.Module):
    """Base of everything that evolves a flat state vector under an input.

    Subclasses declare `state_size` (length of the state vector), `input_size`
    (length of one input sample) and `observe_size` (length of `observe(state)`).
    """

    state_size: eqx.AbstractVar[int]
    input_size: eqx.AbstractVar[int]
    observe_size: eqx.AbstractVar[int]

    @abc.abstractmethod
    def observe(self, state: Float[Array, " state"]) -> Float[Array, " observe"]:
        """The part of the state that a readout sees."""


class AbstractVectorField(AbstractDynamics):
    """A continuous-time system `dr/dt = F(t, r, x)`; integrate it with an integrator."""

    @abc.abstractmethod
    def __call__(
        self,
        t: Float[ArrayLike, ""],
        r: Float[Array, " state"],
        x: Float[Array, " input"],
    ) -> Float[Array, " state"]:
        """The time derivative `dr/dt` at time `t`, state `r` and input `x`."""


class AbstractCell(AbstractDynamics):
    """A discrete-time map `h_t = f(h_{t-1}, x_t)`; no integrator."""

    @abc.abstractmethod
    def __call__(
        self, h: Float[Array, " state"], x: Float[Array, " input"]
    ) -> Float[Array, " state"]:
        """The next state from the previous state `h` and the input `x`."""


class CTRNN(AbstractVectorField):
    """Continuous-time recurrent network `τ dr/dt = -r + W φ(r) + U x + b`.

    **Arguments:**

    - `hidden_size`, `input_size`: sizes `n` of `r` and `m` of `x`.
    - `tau`: time constant(s): a float, or one per unit.
    - `activation`: name of `φ` (`tanh`, `relu`, `sigmoid`, `softplus`, `gelu`,
      `identity`).
    - `gain`: `W` is drawn from `N(0, gain²/n)`; `gain < 1` gives a contracting
      network, `gain > 1` a chaotic one (Sompolinsky, Crisanti & Sommers, 1988).
    - `learn_tau`: if true, `τ` is a learnable (positive, log-parametrised) array.
    - `key`: a JAX PRNG key.

    `U` is drawn uniformly from `±1/√m` (PyTorch's `Linear` rule); `b` starts at 0.
    """

    W: Float[Array, "n n"]
    U: Float[Array, "n m"]
    b: Float[Array, " n"]
    log_tau: Float[Array, " n"] | None
    fixed_tau: tuple[float, ...] | None = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    observe_size: int = eqx.field(static=True)

    def __init__(
        self,
        hidden_size: int,
        input_size: int,
        *,
        tau: float | Sequence[float] = 1.0,
        activation: str = "tanh",
        gain: float = 1.0,
        learn_tau: bool = False,
        key: PRNGKeyArray,
    ):
        _check_size("hidden_size", hidden_size)
        _check_size("input_size", input_size, allow_zero=True)
        get_activation(activation)
        tau_arr = np.broadcast_to(np.asarray(tau, dtype=float), (hidden_size,))
        if np.any(tau_arr <= 0) or not np.all(np.isfinite(tau_arr)):
            raise ValueError(f"`tau` must be positive and finite, got {tau}")
        wkey, ukey = jr.split(key)
        n, m = hidden_size, input_size
        self.W = gain * jr.normal(wkey, (n, n)) / np.sqrt(n)
        bound = 1.0 / np.sqrt(max(m, 1))
        self.U = jr.uniform(ukey, (n, m), minval=-bound, maxval=bound)
        self.b = jnp.zeros((n,))
        if learn_tau:
            self.log_tau = jnp.log(jnp.asarray(tau_arr, dtype=self.W.dtype))
            self.fixed_tau = None
        else:
            self.log_tau = None
            self.fixed_tau = tuple(float(v) for v in tau_arr)
        self.activation = activation
        self.state_size = n
        self.input_size = m
        self.observe_size = n

    @property
    def tau(self) -> Float[Array, " n"]:
        if self.log_tau is not None:
            return jnp.exp(self.log_tau)
        return jnp.asarray(self.fixed_tau, dtype=self.W.dtype)

    def __call__(self, t, r, x):
        del t
        phi = get_activation(self.activation)
        return (-r + self.W @ phi(r) + self.U @ x + self.b) / self.tau

    def observe(self, state):
        return state


class LinearExample(AbstractVectorField):
    """The seed's linear example `dr/dt = -r + w + b + x`.

    `w` and `b` are scalars or vectors of length `size`; the input `x` has
    `size` features and is added elementwise. Its parameter sensitivity obeys
    `dp/dt = -p + ∂F/∂w = -p + 1`.
    """

    w: Float[Array, "..."]
    b: Float[Array, "..."]
    state_size: int = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    observe_size: int = eqx.field(static=True)

    def __init__(self, w: ArrayLike = 0.0, b: ArrayLike = 0.0, *, size: int = 1):
        _check_size("size", size)
        self.w = jnp.asarray(w, dtype=float)
        self.b = jnp.asarray(b, dtype=float)
        for name, v in (("w", self.w), ("b", self.b)):
            if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != size):
                raise ValueError(
                    f"`{name}` must be a scalar or have shape ({size},), got {v.shape}"
                )
        self.state_size = size
        self.input_size = size
        self.observe_size = size

    def __call__(self, t, r, x):
        del t
        return -r + self.w + self.b + x

    def observe(self, state):
        return state


class DampedOscillator(AbstractVectorField):
    """Damped driven oscillator `m x'' + γ x' + k x = F(t)` as the system `(x, v)`.

    The driving force `F(t)` is the (single) input. `m`, `γ` and `k` are stored as
    logarithms so that they stay positive under training. `damping=0` gives the
    undamped harmonic oscillator (then `γ` is held at exactly zero, not learnt),
    whose solution is `A cos(ω t) + B sin(ω t)` with `ω = √(k/m)`.
    """

    log_mass: Float[Array, ""]
    log_damping: Float[Array, ""] | None
    log_stiffness: Float[Array, ""]
    state_size: int = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    observe_size: int = eqx.field(static=True)

    def __init__(self, mass: float = 1.0, damping: float = 0.1, stiffness: float = 1.0):
        for name, v in (("mass", mass), ("stiffness", stiffness)):
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"`{name}` must be positive, got {v}")
        if not (np.isfinite(damping) and damping >= 0):
            raise ValueError(f"`damping` must be >= 0, got {damping}")
        self.log_mass = jnp.log(jnp.asarray(mass, dtype=float))
        self.log_stiffness = jnp.log(jnp.asarray(stiffness, dtype=float))
        self.log_damping = (
            None if damping == 0 else jnp.log(jnp.asarray(damping, dtype=float))
        )
        self.state_size = 2
        self.input_size = 1
        self.observe_size = 2

    @property
    def mass(self):
        return jnp.exp(self.log_mass)

    @property
    def damping(self):
        if self.log_damping is None:
            return jnp.zeros_like(self.log_mass)
        return jnp.exp(self.log_damping)

    @property
    def stiffness(self):
        return jnp.exp(self.log_stiffness)

    def __call__(self, t, r, x):
        del t
        pos, vel = r[0], r[1]
        acc = (x[0] - self.damping * vel - self.stiffness * pos) / self.mass
        return jnp.stack([vel, acc])

    def observe(self, state):
        return state


def _check_size(name: str, value, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def _uniform(key, shape, fan_in):
    bound = 1.0 / np.sqrt(max(fan_in, 1))
    return jr.uniform(key, shape, minval=-bound, maxval=bound)
