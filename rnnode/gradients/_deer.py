"""DEER: Newton's method on the whole trajectory, each iteration one parallel
linear scan (Lim et al., 2024), with its quasi-Newton (diagonal) and damped forms."""

import math

import equinox as eqx

from .._linear_scan import linear_scan
from ._newton import AbstractNewtonTrajectory


class DEER(AbstractNewtonTrajectory):
    """The states by Newton's method in parallel over time, as a `gradient=`
    strategy of `sequence_loss` (Lim et al., 2024, "Parallelizing non-linear
    sequential models over the sequence length", ICLR; the quasi form: Gonzalez et
    al., 2024, "Towards scalable and stable parallelization of nonlinear RNNs",
    NeurIPS).

    Each iteration linearises the step about the current trajectory and solves
    `h_t = A_t h_{t-1} + b_t` by `jax.lax.associative_scan` (depth `⌈log₂ T⌉`):

    | form | `A_t` | work per iteration | memory |
    |---|---|---|---|
    | `DEER()` | dense Jacobian | `T n³` (matrix products in the scan) + `n` JVPs per step | `T n²` |
    | `DEER(quasi=True)` | its diagonal | `T n` in the scan + the diagonal (closed form `O(n²)` per step for `ElmanRNN`, `GRU`, `LSTM`, `CTRNN`+`Euler`; else `n` JVPs) | `T n` |

    Undamped Newton (`quasi=False, damping=0`) is exact after at most `T`
    iterations and converges quadratically near the solution; the quasi and
    damped forms converge linearly, also within `T` iterations (the first `k`
    states are exact after `k` iterations in every form). The gradient is one
    reverse linear scan of `A_tᵀ` at the solution (quasi: a diagonal iteration of
    the same adjoint system with vector-Jacobian products); no Newton iteration is
    differentiated.

    **Arguments:**

    - `quasi`: keep only the diagonal of each `A_t`.
    - `damping`: `k ∈ [0, 1]`; scales `A_t` by `1 − k`. `k = 1` is the
      Jacobi/Picard iteration `h⁽ⁱ⁺¹⁾_t = f(h⁽ⁱ⁾_{t-1})`.
    - `max_steps`: the most Newton iterations; `None` means `T`.
    - `rtol`, `atol`: stop when `max_t |h_t − f(h_{t-1})| ≤ atol + rtol max |f|`;
      `None` means `eps ** 0.75` of the dtype (≈1.8e-12 in float64).
    - `throw`: `sequence_loss` raises `equinox.EquinoxRuntimeError` when the solve
      does not converge (`rnnode.parallel_rollout` reports it in its record).
    """

    quasi: bool = eqx.field(static=True, default=False)
    damping: float = eqx.field(static=True, default=0.0)
    max_steps: int | None = eqx.field(static=True, default=None)
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    throw: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        check_options(self)
        d = self.damping
        if not (isinstance(d, (int, float)) and 0 <= d <= 1):
            raise ValueError(
                f"`DEER(damping={d!r})` must be a number in [0, 1] (0: Newton, "
                "1: the Jacobi/Picard iteration)"
            )

    def newton_step(self, A, fs, h, h_prev, h0):
        del h
        if self.damping:
            A = (1 - self.damping) * A
        return linear_scan(A, fs - _apply(A, h_prev), h0)


def check_options(method) -> None:
    """Validate the options shared by `DEER` and `ELK`."""
    name = type(method).__name__
    if not isinstance(method.quasi, bool):
        raise ValueError(f"`{name}(quasi={method.quasi!r})` must be True or False")
    m = method.max_steps
    if m is not None and not (
        isinstance(m, int) and not isinstance(m, bool) and m >= 1
    ):
        raise ValueError(
            f"`{name}(max_steps={m!r})` must be None (the sequence length T) or an "
            "integer >= 1"
        )
    for field in ("rtol", "atol"):
        v = getattr(method, field)
        if v is not None and not (
            isinstance(v, (int, float)) and math.isfinite(v) and v >= 0
        ):
            raise ValueError(
                f"`{name}({field}={v!r})` must be None (eps ** 0.75) or a number >= 0"
            )


def _apply(A, h):
    return (A @ h[..., None])[..., 0] if A.ndim == h.ndim + 1 else A * h
