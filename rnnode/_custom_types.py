"""Shared type aliases (jaxtyping) used in public signatures."""

from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Float, Int, PyTree

Scalar: TypeAlias = Float[Array, ""]
State: TypeAlias = Float[Array, " state"]
Input: TypeAlias = Float[Array, " input"]
Inputs: TypeAlias = Float[Array, "time *batch input"]
States: TypeAlias = Float[Array, "time *batch state"]
Targets: TypeAlias = PyTree[Array]
Weights: TypeAlias = Float[Array, "time *batch"]
Params: TypeAlias = PyTree[Any]

__all__ = [
    "Array",
    "ArrayLike",
    "Float",
    "Input",
    "Inputs",
    "Int",
    "Params",
    "PyTree",
    "Scalar",
    "State",
    "States",
    "Targets",
    "Weights",
]
