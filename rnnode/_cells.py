"""Discrete-time recurrent cells `h_t = f(h_{t-1}, x_t)`: Elman, LSTM, GRU.

Initialisation follows PyTorch's `nn.RNN` / `nn.LSTM` / `nn.GRU`: every weight
and bias uniform on `±1/√n` with `n` the hidden size.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._activations import get_activation
from ._dale import Dale, balanced_init
from ._dynamics import (
    AbstractCell,
    Mask,
    _check_size,
    _connections,
    _dale,
    _observed,
    _uniform,
    recurrent_weights,
)


class ElmanRNN(AbstractCell):
    """Elman network `h_t = φ(b + W h_{t-1} + U x_t)` (φ = tanh by default).

    With the readout `o_t = c + V h_t` (a `rnnode.Linear`) these are the textbook
    equations (Goodfellow, Bengio & Courville, *Deep Learning*, §10.2).

    `density=p < 1` makes the recurrence sparse, as for `CTRNN`: each unit
    receives `max(1, round(p n))` connections (a fixed `Mask` in the static field
    `mask`, drawn from its own split of `key`, eagerly: build it outside `jit`),
    the step uses `W ⊙ mask`, and `W` (zero off the mask, its nonzero entries
    uniform on `±1/√(p n)`) keeps zero gradients there under every method. With
    `p = 1` (default) `mask` is `None` and the module is the dense one.

    Dale's law as for `CTRNN`: `excitatory=` (the fraction of excitatory units),
    `autapses=False`, `observe="excitatory"`; the step uses `|W̃| · diag(s)`,
    `W̃` starting from Song, Yang & Wang's (2016) balanced initialisation with
    spectral radius `radius` (default 1).
    """

    W: Float[Array, "n n"]
    U: Float[Array, "n m"]
    b: Float[Array, " n"]
    activation: str = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    observe_size: int = eqx.field(static=True)
    mask: Mask | None = eqx.field(static=True)
    dale: Dale | None = eqx.field(static=True)

    def __init__(
        self,
        hidden_size: int,
        input_size: int,
        *,
        activation: str = "tanh",
        density: float = 1.0,
        excitatory: float | None = None,
        autapses: bool = True,
        observe: str = "all",
        radius: float = 1.0,
        key: PRNGKeyArray,
    ):
        _check_size("hidden_size", hidden_size)
        _check_size("input_size", input_size, allow_zero=True)
        get_activation(activation)
        n, m = hidden_size, input_size
        self.dale = _dale(n, excitatory, observe)
        key, self.mask = _connections(key, n, density, autapses)
        k1, k2, k3 = jr.split(key, 3)
        if self.dale is not None:
            mask = None if self.mask is None else self.mask.array
            self.W = balanced_init(k1, self.dale, mask, radius)
        elif self.mask is None:
            self.W = _uniform(k1, (n, n), n)
        else:
            self.W = jnp.where(self.mask.array, _uniform(k1, (n, n), density * n), 0)
        self.U = _uniform(k2, (n, m), n)
        self.b = _uniform(k3, (n,), n)
        self.activation = activation
        self.state_size = n
        self.input_size = m
        self.observe_size = _observed(n, self.dale, observe)

    def __call__(self, h, x):
        W = recurrent_weights(self)
        return get_activation(self.activation)(self.b + W @ h + self.U @ x)

    def observe(self, state):
        return state[: self.observe_size]


class LSTM(AbstractCell):
    """Long short-term memory cell (Hochreiter & Schmidhuber, 1997; with forget gate,
    Gers et al., 2000). Gates in PyTorch's order `i, f, g, o`:

    `i, f, o = σ(·)`, `g = tanh(·)`, `C_t = f ⊙ C_{t-1} + i ⊙ g`, `h_t = o ⊙ tanh(C_t)`,
    each `(·) = W_h h_{t-1} + W_x x_t + b`.

    The state vector is `concat(h, C)` of length `2n`; `observe` returns `h`.
    `forget_bias` is added to the forget gate's bias at initialisation.
    """

    W_h: Float[Array, "4n n"]
    W_x: Float[Array, "4n m"]
    b: Float[Array, " 4n"]
    hidden_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    observe_size: int = eqx.field(static=True)

    def __init__(
        self,
        hidden_size: int,
        input_size: int,
        *,
        forget_bias: float = 0.0,
        key: PRNGKeyArray,
    ):
        _check_size("hidden_size", hidden_size)
        _check_size("input_size", input_size, allow_zero=True)
        n, m = hidden_size, input_size
        k1, k2, k3 = jr.split(key, 3)
        self.W_h = _uniform(k1, (4 * n, n), n)
        self.W_x = _uniform(k2, (4 * n, m), n)
        self.b = _uniform(k3, (4 * n,), n).at[n : 2 * n].add(forget_bias)
        self.hidden_size = n
        self.state_size = 2 * n
        self.input_size = m
        self.observe_size = n

    def __call__(self, state, x):
        n = self.hidden_size
        h, c = state[:n], state[n:]
        z = self.W_h @ h + self.W_x @ x + self.b
        i = jax.nn.sigmoid(z[:n])
        f = jax.nn.sigmoid(z[n : 2 * n])
        g = jnp.tanh(z[2 * n : 3 * n])
        o = jax.nn.sigmoid(z[3 * n :])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return jnp.concatenate([h, c])

    def observe(self, state):
        return state[: self.hidden_size]


class GRU(AbstractCell):
    """Gated recurrent unit (Cho et al., 2014), PyTorch's equations:

    `r = σ(W_xr x + b_xr + W_hr h + b_hr)`, `z = σ(W_xz x + b_xz + W_hz h + b_hz)`,
    `n = tanh(W_xn x + b_xn + r ⊙ (W_hn h + b_hn))`, `h' = (1 - z) ⊙ n + z ⊙ h`.
    """

    W_h: Float[Array, "3n n"]
    W_x: Float[Array, "3n m"]
    b_h: Float[Array, " 3n"]
    b_x: Float[Array, " 3n"]
    state_size: int = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    observe_size: int = eqx.field(static=True)

    def __init__(self, hidden_size: int, input_size: int, *, key: PRNGKeyArray):
        _check_size("hidden_size", hidden_size)
        _check_size("input_size", input_size, allow_zero=True)
        n, m = hidden_size, input_size
        k1, k2, k3, k4 = jr.split(key, 4)
        self.W_h = _uniform(k1, (3 * n, n), n)
        self.W_x = _uniform(k2, (3 * n, m), n)
        self.b_h = _uniform(k3, (3 * n,), n)
        self.b_x = _uniform(k4, (3 * n,), n)
        self.state_size = n
        self.input_size = m
        self.observe_size = n

    def __call__(self, h, x):
        n = self.state_size
        gx = self.W_x @ x + self.b_x
        gh = self.W_h @ h + self.b_h
        r = jax.nn.sigmoid(gx[:n] + gh[:n])
        z = jax.nn.sigmoid(gx[n : 2 * n] + gh[n : 2 * n])
        cand = jnp.tanh(gx[2 * n :] + r * gh[2 * n :])
        return (1 - z) * cand + z * h

    def observe(self, state):
        return state
