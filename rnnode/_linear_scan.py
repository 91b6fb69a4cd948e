"""The linear recurrence `h_t = A_t h_{t-1} + b_t` over a whole sequence, by a
parallel prefix (associative) scan: depth `O(log T)` instead of `T`.

The affine maps `h ↦ A h + b` compose associatively,
`(A₂, b₂) ∘ (A₁, b₁) = (A₂ A₁, A₂ b₁ + b₂)`, so `jax.lax.associative_scan` gives
every prefix (Blelloch, 1990; Martin & Cundy, 2018). `A_t` may be

- diagonal: an array shaped like `b` (`(T, n)`) or broadcastable to it (e.g. the
  `(n,)` of a time-invariant diagonal, as in the LRU), real or complex; a combine
  costs `O(n)`;
- dense: `(T, n, n)`; a combine costs a matrix product, `O(n³)`, and the scan
  holds `O(T n²)` numbers.

The same scan run backwards gives the adjoint recursion
`λ_t = A_{t+1}ᵀ λ_{t+1} + g_t` of backpropagation through time (`reverse=True`).
This module is shared by the LRU's parallel path and by the parallel-in-time
Newton methods (`rnnode.DEER`, `rnnode.ELK`).
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Inexact


def is_dense(A: Array, b: Array) -> bool:
    """Whether `A` holds dense matrices (`A.ndim == b.ndim + 1`) rather than
    diagonals."""
    return A.ndim == b.ndim + 1


def linear_scan(
    A: Inexact[Array, "..."],
    b: Inexact[Array, "time n"],
    h0: Inexact[Array, " n"] | None = None,
    *,
    reverse: bool = False,
) -> Inexact[Array, "time n"]:
    """All states of `h_t = A_t h_{t-1} + b_t`, `t = 1 … T`, by a parallel scan.

    **Arguments:**

    - `A`: the transitions: diagonals `(T, n)` (or anything broadcastable to
      `b.shape`, such as a constant `(n,)` diagonal), or dense matrices
      `(T, n, n)`.
    - `b`: the inputs `(T, n)`.
    - `h0`: the state before the first step; zeros if `None`.
    - `reverse`: run backwards in time: `h_t = A_t h_{t+1} + b_t` for
      `t = T … 1` with `h_{T+1} = h0` (the adjoint recursion of BPTT takes
      `A_t = J_{t+1}ᵀ`).

    **Returns:** the states `(T, n)` (`h_1 … h_T` in time order either way).
    """
    dense = is_dense(A, b)
    if not dense:
        A = jnp.broadcast_to(A, b.shape)
    if reverse:
        A, b = A[::-1], b[::-1]
    if h0 is not None:
        b = b.at[0].add(_apply(A[0], h0, dense))

    def combine(left, right):
        a1, b1 = left
        a2, b2 = right
        if dense:
            return a2 @ a1, _apply(a2, b1, dense) + b2
        return a2 * a1, a2 * b1 + b2

    _, hs = jax.lax.associative_scan(combine, (A, b))
    return hs[::-1] if reverse else hs


def sequential_linear_scan(
    A: Inexact[Array, "..."],
    b: Inexact[Array, "time n"],
    h0: Inexact[Array, " n"] | None = None,
    *,
    reverse: bool = False,
) -> Inexact[Array, "time n"]:
    """The same recurrence as `linear_scan` by a plain `lax.scan` (depth `T`,
    no extra work): the reference, and the cheaper choice on one CPU core."""
    dense = is_dense(A, b)
    if not dense:
        A = jnp.broadcast_to(A, b.shape)
    h = jnp.zeros_like(b[0]) if h0 is None else h0

    def body(h, ab):
        a, b_t = ab
        h = _apply(a, h, dense) + b_t
        return h, h

    _, hs = jax.lax.scan(body, h, (A, b), reverse=reverse)
    return hs


def scan_depth(T: int) -> int:
    """The number of sequential combine levels of a parallel scan of length `T`:
    `⌈log₂ T⌉` (up and down sweeps counted once)."""
    return max(1, (int(T) - 1).bit_length())


def _apply(A, h, dense: bool):
    if dense:
        return (A @ h[..., None])[..., 0]
    return A * h
