"""What evolves: continuous vector fields `dr/dt = F(t, r, x)` and discrete cells
`h_t = f(h_{t-1}, x_t)`, as Equinox modules holding their parameters.

Every state is one flat vector of `state_size` numbers (an LSTM's `(h, C)` is stored
as their concatenation), so that Jacobians, sensitivities and fixed points are
plain matrices and vectors. `observe(state)` gives the part a readout sees.
"""

import abc
from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._activations import get_activation
from ._dale import Dale, balanced_init, signed


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


class AbstractNoisyField(AbstractVectorField):
    """A vector field with private noise: the SDE `dr = F(t, r, x) dt + g dW`,
    `g` diagonal (one entry per unit) and `W` a standard Brownian motion.
    Integrators draw the noise from a key (`Model.step(..., key)`); without a
    key they integrate `dr/dt = F`."""

    @abc.abstractmethod
    def diffusion(
        self,
        t: Float[ArrayLike, ""],
        r: Float[Array, " state"],
        x: Float[Array, " input"],
    ) -> Float[Array, " state"] | None:
        """The diagonal `g` of the diffusion, or `None` when the field is
        noise-free (decided from static fields, so at trace time)."""


class AbstractCell(AbstractDynamics):
    """A discrete-time map `h_t = f(h_{t-1}, x_t)`; no integrator."""

    @abc.abstractmethod
    def __call__(
        self, h: Float[Array, " state"], x: Float[Array, " input"]
    ) -> Float[Array, " state"]:
        """The next state from the previous state `h` and the input `x`."""


class AbstractSequenceCell(AbstractCell):
    """A cell that can also run a whole sequence at once.

    `sequence(h0, xs)` returns the states `h_1 … h_T` that `T` calls of the cell
    would give. `Model.rollout` and `sequence_loss` (with `gradient=Autodiff()`) use
    it instead of stepping when `parallel` is true; every other gradient method
    steps the cell one input at a time, as always.
    """

    parallel: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def sequence(
        self, h0: Float[Array, " state"], xs: Float[Array, "time input"]
    ) -> Float[Array, "time state"]:
        """The states after each input of the time-major sequence `xs`."""


class Mask:
    """A fixed sparsity pattern of a recurrent weight matrix: `array[i, j]` is true
    where unit `j` may drive unit `i`.

    Held as a static field of its module (so it is part of the module's structure,
    not a parameter): a read-only NumPy bool array, hashed and compared by its
    bytes. Made by the `density=` option of `CTRNN` and `ElmanRNN`.
    """

    __slots__ = ("array", "_hash")

    def __init__(self, array: np.ndarray):
        a = np.array(array, dtype=bool)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"a mask must be a square matrix, got shape {a.shape}")
        a.setflags(write=False)
        self.array = a
        self._hash = hash((a.shape, a.tobytes()))

    @property
    def density(self) -> float:
        """The fraction of entries that are connections."""
        return float(self.array.mean())

    def __eq__(self, other):
        return (
            isinstance(other, Mask)
            and self.array.shape == other.array.shape
            and bool(np.array_equal(self.array, other.array))
        )

    def __hash__(self):
        return self._hash

    def __repr__(self):
        n = self.array.shape[0]
        return f"Mask(({n}, {n}), density={self.density:.3g})"


class CTRNN(AbstractNoisyField):
    """Continuous-time recurrent network, in one of two forms:

    - `form="current"` (default): `τ dr/dt = -r + W φ(r) + U x + b`, the state a
      current (or membrane potential) and `φ(r)` the rate it drives;
    - `form="rate"`: `τ dr/dt = -r + φ(W r + U x + b)`, the state a rate (the form
      of Murray, 2019, used by RFLO and e-prop, and of most neuroscience training
      code).

    The two are equivalent for invertible `W` (`r_rate = φ(r_current)` when `U x + b`
    is constant), but they are different parametrisations to learn. In both,
    `observe` returns the state `r` itself.

    **Arguments:**

    - `hidden_size`, `input_size`: sizes `n` of `r` and `m` of `x`.
    - `tau`: time constant(s): a float, or one per unit.
    - `activation`: name of `φ` (`tanh`, `relu`, `sigmoid`, `softplus`, `gelu`,
      `identity`).
    - `gain`: `W` is drawn from `N(0, gain²/(p n))` with `p = density`; `gain < 1`
      gives a contracting network, `gain > 1` a chaotic one (Sompolinsky, Crisanti
      & Sommers, 1988).
    - `learn_tau`: if true, `τ` is a learnable (positive, log-parametrised) array.
    - `form`: `"current"` or `"rate"` (above).
    - `density`: the fraction `p ∈ (0, 1]` of recurrent connections. Below 1, each
      unit receives `max(1, round(p n))` connections from units chosen at random
      (a `Mask`, the static field `mask`, drawn from its own split of `key`); the
      dynamics use `W ⊙ mask`, the stored `W` is zero off the mask, and so is its
      gradient by every method, so `W` stays sparse under training. With `p = 1`
      (default) `mask` is `None` and the module is the dense one, parameter for
      parameter. The mask is drawn eagerly: build a sparse module outside
      `jax.jit` / `jax.vmap`.
    - `noise_std`: `σ ≥ 0`, private noise on every unit: `τ dr = F dt + √(2τ) σ dW`,
      so that `σ` is the stationary standard deviation of an uncoupled unit
      whatever `τ` and the step are; under `Euler` a step gains `√(2α) σ ξ`,
      `α = dt/τ` (the convention of PsychRNN and Yang et al. 2019). The noise is
      drawn only when a key is given (`Model.rollout(xs, key=k)`,
      `sequence_loss(..., key=k)`); without one the dynamics are noise-free
      (evaluation, fixed points).
    - `excitatory`: Dale's law (`None`: off). The fraction in (0, 1] of
      excitatory units (the first `round(excitatory n)`), the rest inhibitory;
      the dynamics use `W = |W̃| · diag(s)` (`s = ±1` per unit), so a unit's
      outgoing weights keep their sign under any update of the stored `W̃`.
      `W̃` starts as Song, Yang & Wang's (2016) balanced initialisation (gamma
      magnitudes, inhibition scaled by `n_E/n_I`), scaled to spectral radius
      `gain`.
    - `autapses`: `False` removes self-connections (`W_ii = 0`; folded into
      `mask`).
    - `observe`: `"all"` (default) or `"excitatory"`: what a readout sees, the
      whole state or the excitatory units only (with `excitatory=`).
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
    form: Literal["current", "rate"] = eqx.field(static=True)
    mask: Mask | None = eqx.field(static=True)
    noise_std: float = eqx.field(static=True)
    dale: Dale | None = eqx.field(static=True)

    def __init__(
        self,
        hidden_size: int,
        input_size: int,
        *,
        tau: float | Sequence[float] = 1.0,
        activation: str = "tanh",
        gain: float = 1.0,
        learn_tau: bool = False,
        form: Literal["current", "rate"] = "current",
        density: float = 1.0,
        noise_std: float = 0.0,
        excitatory: float | None = None,
        autapses: bool = True,
        observe: Literal["all", "excitatory"] = "all",
        key: PRNGKeyArray,
    ):
        _check_size("hidden_size", hidden_size)
        _check_size("input_size", input_size, allow_zero=True)
        get_activation(activation)
        if form not in ("current", "rate"):
            raise ValueError(
                f"`form` must be 'current' (τ dr/dt = -r + W φ(r) + U x + b) or "
                f"'rate' (τ dr/dt = -r + φ(W r + U x + b)), got {form!r}"
            )
        tau_arr = np.broadcast_to(np.asarray(tau, dtype=float), (hidden_size,))
        if np.any(tau_arr <= 0) or not np.all(np.isfinite(tau_arr)):
            raise ValueError(f"`tau` must be positive and finite, got {tau}")
        n, m = hidden_size, input_size
        self.noise_std = _check_noise(noise_std)
        self.dale = _dale(n, excitatory, observe)
        key, self.mask = _connections(key, n, density, autapses)
        wkey, ukey = jr.split(key)
        if self.dale is not None:
            mask = None if self.mask is None else self.mask.array
            self.W = balanced_init(wkey, self.dale, mask, gain)
        elif self.mask is None:
            self.W = gain * jr.normal(wkey, (n, n)) / np.sqrt(n)
        else:
            W = gain * jr.normal(wkey, (n, n)) / np.sqrt(density * n)
            self.W = jnp.where(self.mask.array, W, 0)
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
        self.observe_size = _observed(n, self.dale, observe)
        self.form = form

    @property
    def tau(self) -> Float[Array, " n"]:
        if self.log_tau is not None:
            return jnp.exp(self.log_tau)
        return jnp.asarray(self.fixed_tau, dtype=self.W.dtype)

    def __call__(self, t, r, x):
        del t
        phi = get_activation(self.activation)
        W = recurrent_weights(self)
        if self.form == "rate":
            return (-r + phi(W @ r + self.U @ x + self.b)) / self.tau
        return (-r + W @ phi(r) + self.U @ x + self.b) / self.tau

    def diffusion(self, t, r, x):
        del t, x
        if self.noise_std == 0:
            return None
        # τ dr = F dt + √(2τ) σ dW, i.e. g = σ √(2/τ)
        return self.noise_std * jnp.sqrt(2.0 / self.tau).astype(r.dtype)

    def observe(self, state):
        return state[: self.observe_size]


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


def is_noisy(dynamics) -> bool:
    """Whether `dynamics` has private noise (a noisy field with `g` not `None`)."""
    if not isinstance(dynamics, AbstractNoisyField):
        return False
    r = jnp.zeros((dynamics.state_size,))
    return dynamics.diffusion(0.0, r, jnp.zeros((dynamics.input_size,))) is not None


def recurrent_weights(dynamics) -> Array:
    """The recurrent weights a `CTRNN` or `ElmanRNN` uses: the stored `W`, signed
    by Dale's law (`|W| · diag(s)`) when `dynamics.dale` is set, times the
    connection mask (`masked`)."""
    return masked(signed(dynamics.W, dynamics.dale), dynamics.mask)


def _check_noise(noise_std) -> float:
    ok = isinstance(noise_std, (int, float, np.integer, np.floating))
    if isinstance(noise_std, bool) or not ok or not (0 <= noise_std < np.inf):
        raise ValueError(
            f"`noise_std` must be a finite number >= 0 (the stationary standard "
            f"deviation of the private noise; 0 for none), got {noise_std!r}"
        )
    return float(noise_std)


def _dale(n: int, excitatory, observe) -> Dale | None:
    if observe not in ("all", "excitatory"):
        raise ValueError(f"`observe` must be 'all' or 'excitatory', got {observe!r}")
    if excitatory is None:
        if observe == "excitatory":
            raise ValueError(
                "`observe='excitatory'` reads out the excitatory units; set "
                "`excitatory=` (e.g. 0.8) to have some"
            )
        return None
    return Dale.from_fraction(n, excitatory)


def _observed(n: int, dale: Dale | None, observe: str) -> int:
    return n if observe == "all" else dale.excitatory


def _connections(key, n: int, density, autapses) -> tuple[PRNGKeyArray, Mask | None]:
    """`_sparse`, and with `autapses=False` no self-connections (the diagonal
    off the mask)."""
    if not isinstance(autapses, bool):
        raise ValueError(f"`autapses` must be True or False, got {autapses!r}")
    key, mask = _sparse(key, n, density)
    if autapses:
        return key, mask
    base = np.ones((n, n), dtype=bool) if mask is None else mask.array.copy()
    np.fill_diagonal(base, False)
    return key, Mask(base)


def masked(W: Array, mask: Mask | None) -> Array:
    """`W ⊙ mask` (`W` itself when dense): the weights the dynamics use. Its
    gradient with respect to `W` is zero off the mask."""
    return W if mask is None else jnp.where(mask.array, W, 0)


def _sparse(key, n: int, density) -> tuple[PRNGKeyArray, Mask | None]:
    """`(key, mask)`: for `density < 1`, a mask drawn from a split of `key` (each
    row with `max(1, round(density n))` entries) and the other split; for
    `density = 1`, the key untouched and no mask."""
    ok = isinstance(density, (int, float, np.integer, np.floating)) and not (
        isinstance(density, bool)
    )
    if not ok or not (0 < density <= 1):
        raise ValueError(
            f"`density` must be in (0, 1] (the fraction of recurrent connections; "
            f"1 for a dense network), got {density!r}"
        )
    if density == 1:
        return key, None
    key, mkey = jr.split(key)
    k = max(1, int(round(density * n)))
    try:
        order = np.asarray(jnp.argsort(jr.uniform(mkey, (n, n)), axis=1))
    except jax.errors.TracerArrayConversionError:
        raise ValueError(
            "`density < 1` draws a fixed mask when the module is built; build the "
            "module outside `jax.jit` / `jax.vmap` (its key must be concrete)"
        ) from None
    mask = np.zeros((n, n), dtype=bool)
    np.put_along_axis(mask, order[:, :k], True, axis=1)
    return key, Mask(mask)


def _uniform(key, shape, fan_in):
    bound = 1.0 / np.sqrt(max(fan_in, 1))
    return jr.uniform(key, shape, minval=-bound, maxval=bound)
