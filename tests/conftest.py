"""Test configuration: float64, strict dtype promotion, seeded keys."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import jax.random as jr  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key():
    return jr.PRNGKey(5678)


@pytest.fixture
def getkey():
    """A function returning a fresh key on each call (deterministic sequence)."""
    keys = iter(jr.split(jr.PRNGKey(1234), 1000))
    return lambda: next(keys)
