"""Jacobians of the step map and their products along a trajectory; their
singular values and eigenvalues; norms against the lag without storing products;
the gradient norm `‖∂l_T/∂h_k‖` from BPTT's adjoint trajectory.

Notation: `h_t = step(h_{t-1}, x_t)` for `t = 1 … T`, `J_t = ∂h_t/∂h_{t-1}`, and
`∂h_t/∂h_k = J_t J_{t-1} ⋯ J_{k+1}` (the identity when `t = k`). The lag is
`t - k`. Backpropagated gradients are products of these matrices, so when their
norms shrink (grow) geometrically with the lag, gradients vanish (explode)
(Bengio, Simard & Frasconi, 1994; Pascanu, Mikolov & Bengio, 2013).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float, PRNGKeyArray, PyTree

from .._losses import last_step_weights, mse
from .._model import Model
from ._adjoint import adjoint_trajectory
from ._common import (
    frame,
    log_norm2,
    new_figure,
    pull_back,
    push_forward,
    rescale,
    single_sequence,
    trajectory,
)

_ANCHORS = ("start", "end")


class JacobianSpectrum(eqx.Module):
    """Singular values and eigenvalues of `∂h_t/∂h_k` against the lag `t - k`.

    - `lags`: `0 … T`.
    - `singular_values`: `(T + 1, n)`, descending for each lag.
    - `eigenvalues`: `(T + 1, n)` complex, by descending modulus for each lag.
    - `anchor`: `"start"` (`k = 0`, `t` = lag: how a perturbation of the initial
      state grows) or `"end"` (`t = T`, `k = T` − lag: how far back the last
      state's gradient reaches).
    """

    lags: Float[Array, " lags"]
    singular_values: Float[Array, "lags n"]
    eigenvalues: Complex[Array, "lags n"]
    anchor: str = eqx.field(static=True)


@eqx.filter_jit
def step_jacobians(
    model: Model,
    xs: Float[ArrayLike, "time input"],
    *,
    h0: Float[ArrayLike, " state"] | None = None,
) -> Float[Array, "time state state"]:
    """The one-step Jacobians `J_t = ∂h_t/∂h_{t-1}` of `model.step` along the
    trajectory driven by `xs`.

    **Arguments:**

    - `model`: an `rnnode.Model` (discrete cell, or vector field + integrator: then
      `J_t` is the Jacobian of the integrator's step map, not of the vector field).
    - `xs`: one time-major input sequence `(T, input)`.
    - `h0`: the initial state; default `model.init_state()`.

    **Returns:** `(T, n, n)`; entry `t - 1` is `J_t`, evaluated at `h_{t-1}`.
    """
    xs = single_sequence(model, xs)
    h_prev, _, inputs = trajectory(model, xs, h0)
    eye = jnp.eye(model.state_size, dtype=h_prev.dtype)
    return jax.vmap(lambda h, inp: push_forward(model, h, inp, eye))(h_prev, inputs)


def jacobian_product(
    model: Model,
    xs: Float[ArrayLike, "time input"],
    k: int,
    t: int,
    *,
    h0: Float[ArrayLike, " state"] | None = None,
) -> Float[Array, "state state"]:
    """`∂h_t/∂h_k = J_t J_{t-1} ⋯ J_{k+1}` for `0 ≤ k ≤ t ≤ T` (identity at `t = k`).

    **Returns:** the `n × n` matrix.
    """
    _check_lags(np.shape(xs)[0], k, t)
    return _product(model, xs, jnp.asarray(k), jnp.asarray(t), h0)


@eqx.filter_jit
def _product(model, xs, k, t, h0):
    # `k` and `t` are traced (one compilation for all pairs): steps outside
    # `k < s <= t` are skipped by a mask.
    Js = step_jacobians(model, xs, h0=h0)

    def body(P, z):
        s, J = z
        return jnp.where((s > k) & (s <= t), J @ P, P), None

    steps = jnp.arange(1, Js.shape[0] + 1)
    P, _ = jax.lax.scan(body, jnp.eye(model.state_size, dtype=Js.dtype), (steps, Js))
    return P


@eqx.filter_jit
def jacobian_products(
    model: Model,
    xs: Float[ArrayLike, "time input"],
    *,
    anchor: str = "end",
    h0: Float[ArrayLike, " state"] | None = None,
) -> Float[Array, "lags state state"]:
    """All products against the lag `0 … T`, stored: `(T + 1, n, n)`.

    `anchor="end"` (default): entry `l` is `∂h_T/∂h_{T-l}`, the matrix that
    carries the last state's gradient back `l` steps. `anchor="start"`: entry `l`
    is `∂h_l/∂h_0`. For long sequences or large states, when only norms are
    wanted, prefer `jacobian_norm_vs_lag` (which stores no product).
    """
    _check_anchor(anchor)
    Js = step_jacobians(model, xs, h0=h0)
    eye = jnp.eye(model.state_size, dtype=Js.dtype)
    if anchor == "start":
        _, Ps = jax.lax.scan(lambda P, J: (J @ P,) * 2, eye, Js)
    else:
        _, Ps = jax.lax.scan(lambda P, J: (P @ J,) * 2, eye, Js, reverse=True)
        Ps = Ps[::-1]
    return jnp.concatenate([eye[None], Ps], axis=0)


@eqx.filter_jit
def jacobian_spectrum(
    model: Model,
    xs: Float[ArrayLike, "time input"],
    *,
    anchor: str = "start",
    h0: Float[ArrayLike, " state"] | None = None,
) -> JacobianSpectrum:
    """Singular values and eigenvalues of `∂h_t/∂h_k` for every lag.

    One (rescaled) `n × n` product is carried through a `lax.scan` and its
    spectrum taken at each step, so memory is `O(n² + T n)`, not `O(T n²)`, and
    products that over- or underflow as matrices still have finite logs. Being
    one matrix, the product resolves singular values only down to about machine
    epsilon times the largest; below that they are rounding noise (the QR method
    of `lyapunov_exponents` resolves the small directions too).

    **Arguments:**

    - `model`, `xs`, `h0`: as `step_jacobians`.
    - `anchor`: `"start"` for `∂h_t/∂h_0` against `t`, `"end"` for `∂h_T/∂h_k`
      against `T - k`.

    **Returns:** a `JacobianSpectrum`.
    """
    _check_anchor(anchor)
    xs = single_sequence(model, xs)
    h_prev, _, inputs = trajectory(model, xs, h0)
    n = model.state_size
    eye = jnp.eye(n, dtype=h_prev.dtype)

    def spectrum(P, log_s):
        s = jnp.exp(log_s)
        sv = jnp.linalg.svd(P, compute_uv=False) * s
        ev = jnp.linalg.eigvals(P)
        ev = ev[jnp.argsort(-jnp.abs(ev))] * s.astype(ev.dtype)
        return sv, ev

    def body(carry, z):
        P, log_s = carry
        h, inp = z
        if anchor == "start":
            P = push_forward(model, h, inp, P)
        else:
            P = pull_back(model, h, inp, P.T).T
        P, log_s = rescale(P, log_s)
        return (P, log_s), spectrum(P, log_s)

    zero = jnp.zeros((), dtype=eye.dtype)
    _, (sv, ev) = jax.lax.scan(
        body, (eye, zero), (h_prev, inputs), reverse=anchor == "end"
    )
    if anchor == "end":
        sv, ev = sv[::-1], ev[::-1]
    sv0, ev0 = spectrum(eye, zero)
    lags = jnp.arange(xs.shape[0] + 1, dtype=eye.dtype)
    return JacobianSpectrum(
        lags=lags,
        singular_values=jnp.concatenate([sv0[None], sv]),
        eigenvalues=jnp.concatenate([ev0[None], ev]),
        anchor=anchor,
    )


@eqx.filter_jit
def jacobian_norm_vs_lag(
    model: Model,
    xs: Float[ArrayLike, "time input"],
    *,
    anchor: str = "end",
    num_vectors: int | None = None,
    key: PRNGKeyArray | None = None,
    h0: Float[ArrayLike, " state"] | None = None,
) -> tuple[Float[Array, " lags"], Float[Array, " lags"]]:
    """`‖∂h_T/∂h_{T-l}‖₂` (`anchor="end"`) or `‖∂h_l/∂h_0‖₂` (`anchor="start"`)
    against the lag `l = 0 … T`, without forming any `n × n` product.

    A thin orthonormal frame of `p = num_vectors` vectors is pushed through the
    steps (`J Q` by Jacobian-vector products for `"start"`, `Jᵀ Q` by
    vector-Jacobian products for `"end"`) and re-orthonormalised by a QR
    factorisation each step; the small triangular factors are multiplied (with a
    running log scale) so that `‖∂h ⋯ Q₀‖₂ = ‖R_l ⋯ R_1‖₂`. Memory is `O(n p)`.

    **Arguments:**

    - `model`, `xs`, `h0`: as `step_jacobians`.
    - `anchor`: `"end"` (default; the gradient view) or `"start"` (the
      perturbation view).
    - `num_vectors`: `p`; `None` (all `n`) gives the exact norm, fewer give a
      lower bound that is typically within a small factor and converges to it as
      the frame aligns with the most expanding directions.
    - `key`: draws the initial frame when `p < n`.

    **Returns:** `(lags, norms)`, each `(T + 1,)`; `norms[0] = 1`.
    """
    _check_anchor(anchor)
    xs = single_sequence(model, xs)
    h_prev, _, inputs = trajectory(model, xs, h0)
    Q0 = frame(model.state_size, num_vectors, key, h_prev.dtype)
    p = Q0.shape[1]

    def body(carry, z):
        Q, M, log_s = carry
        h, inp = z
        if anchor == "start":
            V = push_forward(model, h, inp, Q)
        else:
            V = pull_back(model, h, inp, Q)
        Q, R = jnp.linalg.qr(V)
        M, log_s = rescale(R @ M, log_s)
        return (Q, M, log_s), log_norm2(M) + log_s

    zero = jnp.zeros((), dtype=Q0.dtype)
    M0 = jnp.eye(p, dtype=Q0.dtype)
    _, log_norms = jax.lax.scan(
        body, (Q0, M0, zero), (h_prev, inputs), reverse=anchor == "end"
    )
    if anchor == "end":
        log_norms = log_norms[::-1]
    norms = jnp.exp(jnp.concatenate([zero[None], log_norms]))
    return jnp.arange(xs.shape[0] + 1, dtype=Q0.dtype), norms


def jacobian_product_norm(
    model: Model,
    xs: Float[ArrayLike, "time input"],
    k: int,
    t: int,
    *,
    num_iters: int = 100,
    key: PRNGKeyArray | None = None,
    h0: Float[ArrayLike, " state"] | None = None,
) -> Float[Array, ""]:
    """`‖∂h_t/∂h_k‖₂` by power iteration on `AᵀA`, `A = ∂h_t/∂h_k`, matrix-free:
    each iteration is one Jacobian-vector product and one vector-Jacobian product
    through steps `k+1 … t` (memory `O((t - k) n)`, no `n × n` matrix).

    Power iteration converges at the rate `(σ₂/σ₁)²`; increase `num_iters` when
    the top two singular values are close.

    **Returns:** the estimate of the largest singular value.
    """
    _check_lags(np.shape(xs)[0], k, t)
    if not (isinstance(num_iters, int) and num_iters >= 1):
        raise ValueError(f"`num_iters` must be a positive integer, got {num_iters!r}")
    key = jr.PRNGKey(0) if key is None else key
    return _power_iteration(
        model, xs, jnp.asarray(k), jnp.asarray(t), num_iters, key, h0
    )


@eqx.filter_jit
def _power_iteration(model, xs, k, t, num_iters, key, h0):
    xs = single_sequence(model, xs)
    h_prev, _, inputs = trajectory(model, xs, h0)
    steps = jnp.arange(1, xs.shape[0] + 1)
    active = (steps > k) & (steps <= t)

    def A(v):
        def body(v, z):
            on, h, inp = z
            Jv = push_forward(model, h, inp, v[:, None])[:, 0]
            return jnp.where(on, Jv, v), None

        return jax.lax.scan(body, v, (active, h_prev, inputs))[0]

    def At(u):
        def body(u, z):
            on, h, inp = z
            Jtu = pull_back(model, h, inp, u[:, None])[:, 0]
            return jnp.where(on, Jtu, u), None

        return jax.lax.scan(body, u, (active, h_prev, inputs), reverse=True)[0]

    def normalise(v):
        nv = jnp.linalg.norm(v)
        return v / jnp.where(nv > 0, nv, jnp.ones_like(nv))

    v0 = normalise(jr.normal(key, (model.state_size,), dtype=h_prev.dtype))
    v = jax.lax.fori_loop(0, num_iters, lambda _, v: normalise(At(A(v))), v0)
    return jnp.linalg.norm(A(v))


@eqx.filter_jit
def gradient_norm_vs_lag(
    model: Model,
    xs: Float[ArrayLike, "time input"],
    ys: PyTree[ArrayLike],
    *,
    loss: Callable[[Array, Array], Float[Array, ""]] = mse,
    h0: Float[ArrayLike, " state"] | None = None,
) -> tuple[Float[Array, " lags"], Float[Array, " lags"]]:
    """`‖∂l_T/∂h_k‖₂` against the lag `T - k`, for the loss on the last step only.

    Taken from BPTT's adjoint trajectory (`rnnode.adjoint_trajectory` with
    `weights=last_step_weights(T)`): `λ_k = ∂l_T/∂h_k = J_{k+1}ᵀ λ_{k+1}`, so
    `‖λ_k‖` is the gradient signal that reaches `k` steps before the loss.

    **Arguments:**

    - `model`, `xs`, `h0`: as `step_jacobians`.
    - `ys`: targets `(T, out)` (or class labels `(T,)`); only `ys[T-1]` matters.
    - `loss`: the per-step loss, e.g. `rnnode.mse` or `rnnode.cross_entropy`.

    **Returns:** `(lags, norms)`, each `(T,)`: lags `0 … T-1` (`k = T … 1`).
    """
    xs = single_sequence(model, xs)
    T = xs.shape[0]
    lam = adjoint_trajectory(
        model,
        xs,
        ys,
        loss=loss,
        weights=last_step_weights(T).astype(xs.dtype),
        h0=h0,
    )
    norms = jnp.linalg.norm(lam, axis=-1)[::-1]
    return jnp.arange(T, dtype=norms.dtype), norms


@eqx.filter_jit
def matrix_power_norms(
    W: Float[ArrayLike, "n n"], num_steps: int
) -> Float[Array, " steps"]:
    """`‖W^t‖₂` for `t = 0 … num_steps`: for a linear recurrence `h_t = W h_{t-1}`
    these are the Jacobian products, growing or decaying like `ρ(W)^t` (up to the
    transient of a non-normal `W`).

    **Returns:** `(num_steps + 1,)`.
    """
    W = jnp.asarray(W)
    eye = jnp.eye(W.shape[0], dtype=W.dtype)

    def body(carry, _):
        P, log_s = carry
        P, log_s = rescale(W @ P, log_s)
        return (P, log_s), log_norm2(P) + log_s

    zero = jnp.zeros((), dtype=W.dtype)
    _, logs = jax.lax.scan(body, (eye, zero), None, length=num_steps)
    return jnp.exp(jnp.concatenate([zero[None], logs]))


def plot_norm_vs_lag(
    curves: dict[str, tuple[ArrayLike, ArrayLike]],
    *,
    title: str = "",
    xlabel: str = "lag T − k",
    ylabel: str = "norm",
):
    """Norms against the lag on a log axis, one line per entry of `curves`
    (`label → (lags, norms)`). **Returns:** a matplotlib `Figure`."""
    fig, (ax,) = new_figure()
    for label, (lags, norms) in curves.items():
        norms = np.asarray(norms, dtype=float)
        ax.semilogy(np.asarray(lags), np.where(norms > 0, norms, np.nan), label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend()
    return fig


def plot_jacobian_spectrum(spectrum: JacobianSpectrum, *, max_lines: int = 8):
    """Left: the top singular values of the products against the lag (log axis).
    Right: the eigenvalues of the product at the largest lag, rescaled to
    per-step factors `|λ|^{1/T} e^{i arg λ}`, with the unit circle.

    **Returns:** a matplotlib `Figure`.
    """
    fig, (ax1, ax2) = new_figure(2)
    lags = np.asarray(spectrum.lags)
    sv = np.asarray(spectrum.singular_values, dtype=float)
    for i in range(min(max_lines, sv.shape[1])):
        ax1.semilogy(lags, np.where(sv[:, i] > 0, sv[:, i], np.nan), lw=1)
    which = "∂h_t/∂h_0" if spectrum.anchor == "start" else "∂h_T/∂h_{T-l}"
    ax1.set_xlabel("lag")
    ax1.set_ylabel("singular values")
    ax1.set_title(f"σ_i({which})")
    ax1.grid(True, which="both", alpha=0.3)
    L = int(lags[-1])
    ev = np.asarray(spectrum.eigenvalues[-1])
    with np.errstate(divide="ignore"):
        radius = np.abs(ev) ** (1.0 / max(L, 1))
    per_step = radius * np.exp(1j * np.angle(ev))
    theta = np.linspace(0, 2 * np.pi, 200)
    ax2.plot(np.cos(theta), np.sin(theta), "k--", lw=0.8)
    ax2.scatter(per_step.real, per_step.imag, s=14)
    ax2.set_aspect("equal")
    ax2.set_xlabel("Re")
    ax2.set_ylabel("Im")
    ax2.set_title(f"eigenvalues of the lag-{L} product, per step")
    return fig


def _check_lags(T: int, k, t) -> None:
    for name, v in (("k", k), ("t", t)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise ValueError(f"`{name}` must be an integer, got {v!r}")
    if not 0 <= k <= t <= T:
        raise ValueError(f"need `0 <= k <= t <= T` with T = {T}, got k={k}, t={t}")


def _check_anchor(anchor: str) -> None:
    if anchor not in _ANCHORS:
        raise ValueError(f"`anchor` must be `start` or `end`, got {anchor!r}")
