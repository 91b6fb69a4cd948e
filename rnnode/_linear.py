"""`Linear`: the affine map used as a model's readout and inside a `Stack`."""

import equinox as eqx
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._dynamics import _check_size


class Linear(eqx.Module):
    """Affine readout `o = c + V h` (weights uniform on `±1/√in`, like PyTorch)."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        key: PRNGKeyArray,
    ):
        _check_size("in_features", in_features)
        _check_size("out_features", out_features)
        wkey, bkey = jr.split(key)
        bound = 1.0 / np.sqrt(in_features)
        shape = (out_features, in_features)
        self.weight = jr.uniform(wkey, shape, minval=-bound, maxval=bound)
        self.bias = (
            jr.uniform(bkey, (out_features,), minval=-bound, maxval=bound)
            if use_bias
            else None
        )
        self.in_features = in_features
        self.out_features = out_features

    def __call__(self, h: Float[Array, " in"]) -> Float[Array, " out"]:
        out = self.weight @ h
        return out if self.bias is None else out + self.bias
