"""The inputs of a sequence's steps built one step at a time, inside the loop
over the steps: no arrays of length `T` are made for them."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree


class AbstractStepInputs(eqx.Module):
    """The inputs of every step of a sequence, built one step at a time: `at(i)`
    is step `i`'s, computed inside a strategy's loop, so that no arrays of length
    `T` are made for them (e.g. `Model.sequence_inputs`: `(t_i, x_i, x_{i+1})` from
    the input sequence alone)."""

    @abc.abstractmethod
    def length(self) -> int:
        """The number of steps `T`."""

    @abc.abstractmethod
    def at(self, i: Int[ArrayLike, ""]) -> PyTree:
        """The inputs of step `i` (`0 <= i < T`, possibly traced)."""


class SequenceInputs(AbstractStepInputs):
    """The arguments `(t_i, x_i, x_{i+1})` of `Model.step` for step `i` of an
    input sequence `xs`, with `t_i = t0 + i dt` and `x_{T} = x_{T-1}` at the end
    (`Model.sequence_inputs`); with a noise `key`, also `k_i = fold_in(key, i)`,
    the key of step `i`'s private noise: `(t_i, x_i, x_{i+1}, k_i)`."""

    xs: Float[Array, "time input"]
    t0: Float[ArrayLike, ""]
    dt: Float[ArrayLike, ""]
    key: PRNGKeyArray | None = None

    def length(self) -> int:
        return self.xs.shape[0]

    def at(self, i):
        T = self.xs.shape[0]
        t = self.t0 + self.dt * jnp.asarray(i, dtype=self.xs.dtype)
        x_next = self.xs[jnp.minimum(i + 1, T - 1)]
        if self.key is None:  # noise-free: the three arguments alone
            return t, self.xs[i], x_next
        return t, self.xs[i], x_next, step_key(self.key, i)


def step_key(key: PRNGKeyArray | None, i: Int[ArrayLike, ""]) -> PRNGKeyArray | None:
    """The noise key of step `i` of a sequence whose noise is drawn from `key`:
    `jax.random.fold_in(key, i)` (`None` when `key` is `None`). Every gradient
    method, the rollout and the online `step` draw step `i`'s noise from it, so
    one key gives one realisation whatever computes the sequence."""
    return None if key is None else jr.fold_in(key, i)


def batch_keys(key: PRNGKeyArray | None, batch: int) -> PRNGKeyArray | None:
    """The noise keys of the sequences of a batch, `jax.random.split(key, B)`:
    independent realisations (`None` when `key` is `None`)."""
    return None if key is None else jr.split(key, batch)


def step_at(inputs: PyTree, i: Int[ArrayLike, ""]) -> PyTree:
    """Step `i`'s inputs from an `AbstractStepInputs` or a pytree with a leading
    time axis."""
    if isinstance(inputs, AbstractStepInputs):
        return inputs.at(i)
    return jax.tree.map(lambda x: x[i], inputs)
