"""Lyapunov exponents of the (driven or autonomous) dynamics by the QR method."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._model import Model
from ._common import frame, new_figure, push_forward, single_sequence, trajectory


class LyapunovSpectrum(eqx.Module):
    """The result of `lyapunov_exponents`.

    - `exponents`: `(k,)`, descending, per unit time (per step divided by `dt`).
    - `per_step`: `(k,)`, the same per step of the map (`log` growth per step).
    - `history`: `(T - transient, k)`, the running estimates per unit time after
      each counted step (to judge convergence).
    - `dt`: the model's `dt`; `num_steps`: the number of counted steps.
    """

    exponents: Float[Array, " k"]
    per_step: Float[Array, " k"]
    history: Float[Array, "steps k"]
    dt: float = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)


def lyapunov_exponents(
    model: Model,
    xs: Float[ArrayLike, "time input"],
    *,
    k: int | None = None,
    h0: Float[ArrayLike, " state"] | None = None,
    transient: int = 0,
    key: PRNGKeyArray | None = None,
) -> LyapunovSpectrum:
    """The top `k` Lyapunov exponents along the trajectory driven by `xs`, by the
    QR method of Benettin et al. (1980) and Shimada & Nagashima (1979).

    An orthonormal `n × k` frame `Q` is pushed through each step's Jacobian
    (`k` Jacobian-vector products) and re-orthonormalised, `J_t Q_{t-1} = Q_t R_t`;
    the exponents are the time averages of `log |diag R_t|`. Everything runs in
    one `lax.scan`.

    For the autonomous dynamics pass constant (e.g. zero) inputs. For a continuous
    model the exponents are those of its integrator's step map, divided by `dt`:
    they approach the flow's exponents as `dt → 0`.

    **Arguments:**

    - `model`: an `rnnode.Model`.
    - `xs`: one time-major input sequence `(T, input)`; `T` steps are taken.
    - `k`: how many exponents (the largest); `None` for all `n`.
    - `h0`: the initial state; default `model.init_state()`.
    - `transient`: the first `transient` steps align the frame (and let the state
      reach its attractor) but are not averaged.
    - `key`: draws the initial frame when `k < n` (default `PRNGKey(0)`).

    **Returns:** a `LyapunovSpectrum`.
    """
    T = np.shape(xs)[0]
    if not (isinstance(transient, int) and 0 <= transient < T):
        raise ValueError(
            f"`transient` must be an integer in [0, T) with T = {T}, got {transient!r}"
        )
    return _lyapunov(model, xs, k, h0, transient, key)


@eqx.filter_jit
def _lyapunov(model, xs, k, h0, transient, key):
    xs = single_sequence(model, xs)
    h_prev, _, inputs = trajectory(model, xs, h0)
    Q0 = frame(model.state_size, k, key, h_prev.dtype)

    def body(Q, z):
        h, inp = z
        Q, R = jnp.linalg.qr(push_forward(model, h, inp, Q))
        return Q, jnp.log(jnp.abs(jnp.diagonal(R)))

    _, logs = jax.lax.scan(body, Q0, (h_prev, inputs))
    logs = logs[transient:]
    count = jnp.arange(1, logs.shape[0] + 1, dtype=logs.dtype)[:, None]
    running = jnp.cumsum(logs, axis=0) / count
    order = jnp.argsort(-running[-1])
    per_step = running[-1][order]
    dt = float(model.dt)
    return LyapunovSpectrum(
        exponents=per_step / dt,
        per_step=per_step,
        history=running[:, order] / dt,
        dt=dt,
        num_steps=int(logs.shape[0]),
    )


def plot_lyapunov(spectrum: LyapunovSpectrum, *, max_lines: int = 16):
    """Left: the running estimates against the number of counted steps (they
    should flatten out). Right: the spectrum, with zero marked.

    **Returns:** a matplotlib `Figure`.
    """
    fig, (ax1, ax2) = new_figure(2)
    hist = np.asarray(spectrum.history)
    steps = np.arange(1, hist.shape[0] + 1)
    for i in range(min(max_lines, hist.shape[1])):
        ax1.plot(steps, hist[:, i], lw=1)
    ax1.axhline(0.0, color="k", lw=0.8, ls="--")
    ax1.set_xscale("log")
    ax1.set_xlabel("steps averaged")
    ax1.set_ylabel("exponent (per unit time)")
    ax1.set_title("convergence of the QR estimates")
    ex = np.asarray(spectrum.exponents)
    ax2.plot(np.arange(1, ex.size + 1), ex, "o-", ms=4)
    ax2.axhline(0.0, color="k", lw=0.8, ls="--")
    ax2.set_xlabel("index i")
    ax2.set_ylabel("λ_i (per unit time)")
    ax2.set_title(f"Lyapunov spectrum (max {ex[0]:.3g})")
    return fig
