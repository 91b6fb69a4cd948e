"""ELK: Newton on the trajectory with a Levenberg–Marquardt trust region, each
iteration a linear-Gaussian smoothing problem solved by a parallel Kalman smoother
(Gonzalez et al., 2024), with its quasi (diagonal) form."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._linear_scan import linear_scan
from ._deer import check_options
from ._newton import AbstractNewtonTrajectory


class ELK(AbstractNewtonTrajectory):
    """The states by Levenberg–Marquardt iterations on the whole trajectory, as a
    `gradient=` strategy of `sequence_loss` (Gonzalez, Warrington, Smith &
    Linderman, 2024, "Towards scalable and stable parallelization of nonlinear
    RNNs", NeurIPS: ELK, "evaluating Levenberg–Marquardt via Kalman").

    Each iteration minimises, over the trajectory `h`,

        Σ_t |h_t − A_t h_{t-1} − b_t|² + λ Σ_t |h_t − h⁽ⁱ⁾_t|²

    (the linearised residual of `DEER` plus a penalty `λ` on the step), which is
    the posterior mean of a linear-Gaussian state-space model with dynamics
    `h_t = A_t h_{t-1} + b_t + w_t`, `w_t ~ N(0, I)`, observing `h⁽ⁱ⁾_t` with
    noise `N(0, I/λ)`. It is solved by the parallel Kalman filter and
    Rauch–Tung–Striebel smoother of Särkkä & García-Fernández (2021) (one
    associative scan each, depth `O(log T)`). The trust region keeps the
    iterates bounded where undamped DEER overflows (chaotic or expanding
    dynamics), at the price of linear rather than quadratic convergence and of
    losing DEER's "exact after `T` iterations". `penalty=0` is `DEER`.

    | form | work per iteration | memory |
    |---|---|---|
    | `ELK()` | `T n³` (a solve and about six matrix products per combine, against one for DEER; not benchmarked) | `T n²` |
    | `ELK(quasi=True)` | `T n` + the diagonal Jacobians (as `DEER(quasi=True)`) | `T n` |

    The gradient is that of `DEER` (it does not depend on how the solution was
    found): one reverse linear scan at the solution.

    The smoother is written here on the linear-scan module rather than taken
    from a state-space library: its quasi form (diagonal covariances, `O(n)`
    per combine) is not offered by one, and the dense form is short once the
    noise covariances are `I` and `I/λ`.

    **Arguments:**

    - `quasi`: keep only the diagonal of each `A_t` (all covariances diagonal).
    - `penalty`: the Levenberg–Marquardt weight `λ ≥ 0` (the inverse squared
      radius of the trust region); larger is more cautious.
    - `max_steps`: the most iterations; `None` means `T` (with `penalty > 0`
      convergence within `T` iterations is not guaranteed).
    - `rtol`, `atol`, `throw`: as in `DEER`.
    """

    quasi: bool = eqx.field(static=True, default=False)
    penalty: float = eqx.field(static=True, default=0.01)
    max_steps: int | None = eqx.field(static=True, default=None)
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    throw: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        check_options(self)
        p = self.penalty
        if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 0):
            raise ValueError(
                f"`ELK(penalty={p!r})` must be a finite number >= 0 (the "
                "Levenberg–Marquardt weight; 0 is DEER)"
            )

    def newton_step(self, A, fs, h, h_prev, h0):
        b = fs - _Ops(A.ndim == fs.ndim + 1).mv(A, h_prev)
        return kalman_smoother_mean(A, b, h, h0, self.penalty)


def kalman_smoother_mean(A, b, y, h0, penalty: float):
    """The smoothed means of `h_t = A_t h_{t-1} + b_t + w_t`, `w_t ~ N(0, I)`,
    `h_0 = h0` known, observed as `y_t = h_t + v_t`, `v_t ~ N(0, I/penalty)`, by
    the parallel filter and smoother of Särkkä & García-Fernández (2021, "Temporal
    parallelization of Bayesian smoothers", IEEE TAC). `A` is `(T, n, n)` or the
    diagonals `(T, n)`."""
    ops = _Ops(A.ndim == b.ndim + 1)
    kappa = penalty / (1.0 + penalty)  # the Kalman gain: K = S⁻¹ = κ I
    one_minus = 1.0 - kappa
    T = b.shape[0]
    # Filtering elements (A', b', C', η, J) of each step (H = Q = I, R = I/λ).
    m1 = ops.mv(A[0], h0) + b[0]
    Af = one_minus * A
    bf = one_minus * b + kappa * y
    bf = bf.at[0].set(one_minus * m1 + kappa * y[0])
    Cf = one_minus * ops.eye_like(A)
    eta = kappa * ops.tmv(A, y - b)
    Jf = kappa * ops.tmm(A, A)
    first = jnp.arange(T).reshape((T,) + (1,) * (A.ndim - 1)) == 0
    Af = jnp.where(first, 0.0, Af)
    eta = eta.at[0].set(0.0)
    Jf = jnp.where(first, 0.0, Jf)

    def combine(left, right):
        Ai, bi, Ci, ei, Ji = left
        Aj, bj, Cj, ej, Jj = right
        eye = ops.eye_like(Ci)
        M = eye + ops.mm(Ci, Jj)  # (I + C_i J_j); (I + J_j C_i) is its transpose
        AjM = ops.mm(Aj, ops.inv_right(M, eye))  # A_j M⁻¹
        A_ = ops.mm(AjM, Ai)
        b_ = ops.mv(AjM, bi + ops.mv(Ci, ej)) + bj
        C_ = ops.mm(ops.mm(AjM, Ci), ops.t(Aj)) + Cj
        AiTNinv = ops.t(ops.mm(ops.inv_right(M, eye), Ai))  # A_iᵀ (I + J_j C_i)⁻¹
        e_ = ops.mv(AiTNinv, ej - ops.mv(Jj, bi)) + ei
        J_ = ops.mm(ops.mm(AiTNinv, Jj), Ai) + Ji
        return A_, b_, C_, e_, J_

    _, mf, Pf, _, _ = jax.lax.associative_scan(combine, (Af, bf, Cf, eta, Jf))
    # Smoothing: m^s_t = E_t m^s_{t+1} + g_t, a reverse linear scan.
    A_next, b_next = A[1:], b[1:]
    S = ops.mm(ops.mm(A_next, Pf[:-1]), ops.t(A_next)) + ops.eye_like(A_next)
    E = ops.mm(Pf[:-1], ops.t(A_next))
    E = ops.t(ops.solve(S, ops.t(E)))  # P Aᵀ S⁻¹ (S symmetric)
    g = mf[:-1] - ops.mv(E, ops.mv(A_next, mf[:-1]) + b_next)
    E = jnp.concatenate([E, jnp.zeros_like(E[:1])], axis=0)
    g = jnp.concatenate([g, mf[-1:]], axis=0)
    return linear_scan(E, g, reverse=True)


class _Ops:
    """Matrix algebra on dense `(…, n, n)` matrices or on diagonals `(…, n)`."""

    def __init__(self, dense: bool):
        self.dense = dense

    def mm(self, a, b):
        return a @ b if self.dense else a * b

    def mv(self, a, v):
        return (a @ v[..., None])[..., 0] if self.dense else a * v

    def t(self, a):
        return jnp.swapaxes(a, -1, -2) if self.dense else a

    def tmv(self, a, v):
        return self.mv(self.t(a), v)

    def tmm(self, a, b):
        return self.mm(self.t(a), b)

    def eye_like(self, a):
        if self.dense:
            return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
        return jnp.ones_like(a)

    def solve(self, M, B):
        """`M⁻¹ B`."""
        return jnp.linalg.solve(M, B) if self.dense else B / M

    def inv_right(self, M, eye):
        return self.solve(M, eye)
