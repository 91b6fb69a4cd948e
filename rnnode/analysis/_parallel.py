"""Will Newton in parallel over time pay off? The largest Lyapunov exponent, the
measured and the predicted number of Newton iterations, and a verdict."""

import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import ArrayLike, Float

from .._linear_scan import scan_depth
from .._model import Model
from ..gradients import DEER, AbstractNewtonTrajectory, parallel_rollout
from ._lyapunov import lyapunov_exponents


class Parallelisability(eqx.Module):
    """The result of `parallelisability` (plain Python numbers).

    - `lyapunov`: the largest Lyapunov exponent along the trajectory, per step.
    - `length`: `T`; `scan_depth`: `⌈log₂ T⌉`, the depth of one parallel scan.
    - `iterations`: the Newton iterations measured on the whole sequence
      (`None` if not measured); `converged`: whether that solve converged.
    - `prefix_length`, `prefix_iterations`: the iterations on a prefix.
    - `predicted`: the iterations predicted for `T` from the prefix and the sign
      of the exponent (see `parallelisability`).
    - `verdict`: `"newton"` if the predicted Newton depth
      `predicted × scan_depth` is below `T` (the sequential depth of a scan),
      else `"scan"`; `reason`: one line saying why.
    """

    lyapunov: float
    length: int
    scan_depth: int
    iterations: int | None
    converged: bool | None
    prefix_length: int
    prefix_iterations: int
    predicted: int
    verdict: str
    reason: str


def parallelisability(
    model: Model,
    xs: Float[ArrayLike, "time input"],
    *,
    method: AbstractNewtonTrajectory = DEER(),
    h0: Float[ArrayLike, " state"] | None = None,
    t0: float = 0.0,
    prefix: int | None = None,
    measure: bool = True,
) -> Parallelisability:
    """Whether the trajectory of `model` driven by `xs` is worth finding by Newton
    in parallel over time (`DEER`, `ELK`), or by a sequential scan.

    Gonzalez, Buchanan, Zhao & Linderman (2025, "Predictability enables
    parallelization of nonlinear state space models", NeurIPS) showed that the
    conditioning of the trajectory's residual, hence the number of Newton
    iterations, is governed by the largest Lyapunov exponent `λ`: bounded in `T`
    when `λ < 0` (predictable dynamics forget perturbations), growing with `T`
    (up to `T`, DEER's worst case) when `λ > 0`. The prediction here follows
    that dichotomy from a cheap solve of a prefix of `T₀` steps (`k₀`
    iterations): `k₀` when `λ < 0`, `min(T, ⌈k₀ T / T₀⌉)` otherwise. On hardware
    with `T` parallel lanes Newton's depth is `iterations × ⌈log₂ T⌉` against the
    scan's `T`; the verdict compares those (on one CPU core the scan wins in
    wall time anyway: Newton does more work).

    **Arguments:**

    - `model`: a `Model` stepped by a map; `xs`: one sequence `(time, input)`.
    - `method`: the Newton method measured (default `DEER()`).
    - `h0`, `t0`: the initial state and time.
    - `prefix`: `T₀`; default `max(16, T // 8)` (at most `T`).
    - `measure`: also solve the whole sequence (else `iterations` is `None`).

    **Returns:** a `Parallelisability`.
    """
    xs = jnp.asarray(xs)
    if xs.ndim != 2:
        raise ValueError(
            "`parallelisability` takes one sequence `(time, input)`, got shape "
            f"{xs.shape}; pass `xs[:, i]` for sequence i of a batch"
        )
    T = xs.shape[0]
    T0 = min(T, max(16, T // 8)) if prefix is None else prefix
    if not (isinstance(T0, int) and 1 <= T0 <= T):
        raise ValueError(f"`prefix` must be an integer in [1, T = {T}], got {T0!r}")
    lyap = float(lyapunov_exponents(model, xs, k=1, h0=h0).per_step[0])
    k0 = int(parallel_rollout(model, xs[:T0], method, h0=h0, t0=t0).num_steps)
    iterations = converged = None
    if measure:
        sol = parallel_rollout(model, xs, method, h0=h0, t0=t0)
        iterations, converged = int(sol.num_steps), bool(sol.result._value == 0)
    predicted = k0 if lyap < 0 else min(T, math.ceil(k0 * T / T0))
    depth = scan_depth(T)
    newton = predicted * depth < T
    kind = "predictable (λ < 0)" if lyap < 0 else "unpredictable (λ ≥ 0)"
    reason = (
        f"{kind}: about {predicted} iterations × {depth} scan levels = "
        f"{predicted * depth} sequential steps against T = {T}"
    )
    return Parallelisability(
        lyapunov=lyap,
        length=T,
        scan_depth=depth,
        iterations=iterations,
        converged=converged,
        prefix_length=T0,
        prefix_iterations=k0,
        predicted=predicted,
        verdict="newton" if newton else "scan",
        reason=reason,
    )
