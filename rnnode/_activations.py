"""Named activation functions, so that configs and modules can refer to them by name."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,
    "identity": lambda x: x,
}


def get_activation(name: str) -> Callable:
    """Return the activation called `name`, or raise a `ValueError` listing the choices."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        choices = ", ".join(f"`{k}`" for k in ACTIVATIONS)
        raise ValueError(
            f"unknown `activation={name!r}`; choose one of {choices}"
        ) from None
