"""Structured one-step Jacobians of rnnode's own cells, for fast RTRL.

For a step `h' = G(h, z)` whose weights enter only through pre-activations
`z = A v + b` (`v` the previous state, its activation, or the input), a weight
`A_jk` touches only the pre-activation `z_j`, and `z_j` touches only the few units
its row drives. The immediate Jacobian `∂h'/∂A` is therefore the outer product
`(∂h'/∂z) ⊗ v` with `∂h'/∂z` nonzero on one or two rows per column, e.g. for an
Elman cell `∂h'_i/∂W_jk = φ'(z_i) δ_ij h_k`. It is added to `J P` by a scatter of
`O(n k)` numbers instead of a dense `(n, n, k)` product, and `J = ∂h'/∂h` itself is
written in closed form (no JVPs or VJPs).

Covered: `ElmanRNN`, `LSTM`, `GRU`, and `CTRNN` (both forms) stepped by `Euler`.
Everything else uses the generic path of `rnnode.RTRL`.

**Sparse recurrence** (`density < 1`): `J` uses the masked weights `W ⊙ mask`,
but the immediate Jacobian of `W` is still given as the dense outer product (the
`u ⊗ D` form has no room for a mask): its entries off the mask are sensitivities
of connections that do not exist. They never feed `J` (no unit reads a masked
weight), so a method may carry them and zero the gradient off
`recurrent_mask(model.dynamics)` at the end (as `RTRL` does), or drop them.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._activations import get_activation
from .._cells import GRU, LSTM, ElmanRNN
from .._dale import chain
from .._dynamics import CTRNN, recurrent_weights
from .._integrate import Euler, step_noise
from .._model import Model


class Rows(NamedTuple):
    """The immediate Jacobian of the state with respect to one weight leaf.

    For a leaf of shape `(q, k)` (or `(q,)` when `v is None`),
    `∂h'_s / ∂leaf[j, l] = Σ_a [s = rows[a, j]] · vals[a, j] · v[l]`.
    """

    rows: np.ndarray  # (A, q) static state indices driven by pre-activation j
    vals: Float[Array, "A q"]
    v: Float[Array, " k"] | None


def has_structure(model) -> bool:
    """Whether `structured_jacobians` covers this model."""
    if not isinstance(model, Model):
        return False
    dyn, integ = model.dynamics, model.integrator
    if isinstance(dyn, (ElmanRNN, LSTM, GRU)):
        return integ is None
    return isinstance(dyn, CTRNN) and isinstance(integ, Euler)


def recurrent_mask(dynamics) -> np.ndarray | None:
    """The sparsity pattern of `dynamics.W` (a bool `(n, n)` array, true where a
    connection exists), or `None` for dense recurrence or other dynamics."""
    mask = getattr(dynamics, "mask", None)
    return None if mask is None else mask.array


def mask_gradient(dynamics, name: str, g: Array) -> Array:
    """The gradient of the stored field `name` of `dynamics` from `g`, the
    gradient (or a batch of them) with respect to the weights the dynamics use:
    for `W`, through Dale's law (`W = |W̃| diag(s)`: times `sign(W̃) s`) and
    zeroed off the recurrent mask; other fields unchanged."""
    if name != "W":
        return g
    g = chain(dynamics.W, getattr(dynamics, "dale", None), g)
    return zero_off_mask(dynamics, name, g)


def zero_off_mask(dynamics, name: str, g: Array) -> Array:
    """`g`, the gradient of the stored field `name`, zeroed off the recurrent
    mask if that field is a sparse `W` (idempotent, unlike `mask_gradient`)."""
    mask = recurrent_mask(dynamics)
    if mask is None or name != "W":
        return g
    return jnp.where(mask, g, jnp.zeros((), g.dtype))


def structured_jacobians(
    model: Model, h: Float[Array, " n"], t, x: Float[Array, " m"], x_next, key=None
) -> tuple[Float[Array, "n n"], dict[str, Rows]]:
    """`J = ∂h'/∂h` and the immediate Jacobians of
    `h' = model.step(h, t, x, x_next, key)` with respect to every floating-point
    field of `model.dynamics`, by field name (for `W`, with respect to the
    weights the dynamics use; `mask_gradient` takes a gradient back to the
    stored `W`). The noise of a noisy `CTRNN` is additive: it changes only the
    immediate Jacobian of a learnt `τ` (through `√(2 dt/τ)`)."""
    del x_next  # the covered steps hold the input
    dyn = model.dynamics
    if isinstance(dyn, CTRNN):
        J, imm = _ctrnn_euler(dyn, model.integrator.dt, h, x)
        noise = step_noise(dyn, model.integrator.dt, t, h, x, key)
        if noise is not None and dyn.log_tau is not None:
            # ∂(σ √(2 dt/τ) ξ)/∂log τ = -noise / 2
            r = imm["log_tau"]
            imm["log_tau"] = Rows(r.rows, r.vals - 0.5 * noise[None], None)
        return J, imm
    if isinstance(dyn, ElmanRNN):
        return _elman(dyn, h, x)
    if isinstance(dyn, LSTM):
        return _lstm(dyn, h, x)
    if isinstance(dyn, GRU):
        return _gru(dyn, h, x)
    raise AssertionError(f"no structured Jacobian for {type(dyn).__name__}")


def add_immediate(imm: Rows | None, P: Array) -> Array:
    """`P + ∂h'/∂leaf`, for `P` of shape `(n, *leaf.shape)`."""
    if imm is None:
        return P
    q = imm.vals.shape[1]
    cols = np.arange(q)
    for a in range(imm.rows.shape[0]):
        upd = imm.vals[a] if imm.v is None else imm.vals[a][:, None] * imm.v[None, :]
        P = P.at[imm.rows[a], cols].add(upd.astype(P.dtype))
    return P


def _ctrnn_euler(dyn: CTRNN, dt: float, r, x):
    n = dyn.state_size
    c = dt / dyn.tau
    W = recurrent_weights(dyn)
    eye = np.arange(n)[None]
    if dyn.form == "rate":
        # r' = r + c ⊙ (-r + φ(z)),  z = W r + U x + b
        phi, d = _value_and_derivative(dyn.activation, W @ r + dyn.U @ x + dyn.b)
        cd = c * d
        J = jnp.diag(1 - c) + cd[:, None] * W
        imm = {
            "W": Rows(eye, cd[None], r),
            "U": Rows(eye, cd[None], x),
            "b": Rows(eye, cd[None], None),
        }
        drift = -r + phi
    else:
        # r' = r + c ⊙ (-r + W φ(r) + U x + b),  c = dt / τ
        phi, dphi = _value_and_derivative(dyn.activation, r)
        J = jnp.diag(1 - c) + (c[:, None] * W) * dphi[None, :]
        imm = {
            "W": Rows(eye, c[None], phi),
            "U": Rows(eye, c[None], x),
            "b": Rows(eye, c[None], None),
        }
        drift = -r + W @ phi + dyn.U @ x + dyn.b
    if dyn.log_tau is not None:
        imm["log_tau"] = Rows(eye, (-c * drift)[None], None)
    return J, imm


def _elman(dyn: ElmanRNN, h, x):
    # h' = φ(b + W h + U x)
    n = dyn.state_size
    W = recurrent_weights(dyn)
    z = dyn.b + W @ h + dyn.U @ x
    _, d = _value_and_derivative(dyn.activation, z)
    eye = np.arange(n)[None]
    J = d[:, None] * W
    imm = {
        "W": Rows(eye, d[None], h),
        "U": Rows(eye, d[None], x),
        "b": Rows(eye, d[None], None),
    }
    return J, imm


def _lstm(dyn: LSTM, state, x):
    n = dyn.hidden_size
    h, c = state[:n], state[n:]
    z = dyn.W_h @ h + dyn.W_x @ x + dyn.b
    i = jax.nn.sigmoid(z[:n])
    f = jax.nn.sigmoid(z[n : 2 * n])
    g = jnp.tanh(z[2 * n : 3 * n])
    o = jax.nn.sigmoid(z[3 * n :])
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    dtc = o * (1 - tc**2)  # ∂h'/∂c'
    # ∂c'/∂z and ∂h'/∂z, gate by gate (i, f, g, o); z_{gate, j} drives h'_j and c'_j.
    dc = jnp.concatenate(
        [g * i * (1 - i), c * f * (1 - f), i * (1 - g**2), jnp.zeros_like(o)]
    )
    dh = jnp.concatenate([jnp.tile(dtc, 3) * dc[: 3 * n], tc * o * (1 - o)])
    unit = np.tile(np.arange(n), 4)
    rows = np.stack([unit, unit + n])
    vals = jnp.stack([dh, dc])
    Wg = dyn.W_h.reshape(4, n, n)
    J = jnp.block(
        [
            [jnp.sum(dh.reshape(4, n, 1) * Wg, axis=0), jnp.diag(dtc * f)],
            [jnp.sum(dc.reshape(4, n, 1) * Wg, axis=0), jnp.diag(f)],
        ]
    )
    imm = {
        "W_h": Rows(rows, vals, h),
        "W_x": Rows(rows, vals, x),
        "b": Rows(rows, vals, None),
    }
    return J, imm


def _gru(dyn: GRU, h, x):
    n = dyn.state_size
    gx = dyn.W_x @ x + dyn.b_x
    gh = dyn.W_h @ h + dyn.b_h
    r = jax.nn.sigmoid(gx[:n] + gh[:n])
    z = jax.nn.sigmoid(gx[n : 2 * n] + gh[n : 2 * n])
    cand = jnp.tanh(gx[2 * n :] + r * gh[2 * n :])
    da = (1 - z) * (1 - cand**2)  # ∂h'/∂(candidate pre-activation)
    d_r = da * gh[2 * n :] * r * (1 - r)
    d_z = (h - cand) * z * (1 - z)
    dgx = jnp.concatenate([d_r, d_z, da])[None]
    dgh = jnp.concatenate([d_r, d_z, da * r])[None]
    rows = np.tile(np.arange(n), 3)[None]
    J = jnp.diag(z) + jnp.sum(dgh.reshape(3, n, 1) * dyn.W_h.reshape(3, n, n), axis=0)
    imm = {
        "W_x": Rows(rows, dgx, x),
        "b_x": Rows(rows, dgx, None),
        "W_h": Rows(rows, dgh, h),
        "b_h": Rows(rows, dgh, None),
    }
    return J, imm


def _value_and_derivative(name: str, z):
    """`φ(z)` and the elementwise `φ'(z)` of a named (elementwise) activation."""
    return jax.jvp(get_activation(name), (z,), (jnp.ones_like(z),))


def local_jacobian(model: Model, J: Float[Array, "n n"], h, x) -> Float[Array, "n n"]:
    """The part of `J = ∂h'/∂h` that is not mediated by the recurrent weights: each
    unit's dependence on its own previous state (leak, cell state, update gate),
    the Jacobian that RFLO and e-prop keep (`J` is `structured_jacobians`' one).

    - `CTRNN` (Euler): `diag(1 - c)`, `c = dt/τ`;
    - `ElmanRNN`: zero;
    - `LSTM`: `∂h'/∂C = diag(o ⊙ tanh'(C') ⊙ f)` and `∂C'/∂C = diag(f)` (the
      columns of `J` for `C`; those for `h` all pass through `W_h`);
    - `GRU`: `diag(z)` (the term `z ⊙ h` of `h' = (1 - z) ⊙ n + z ⊙ h`).
    """
    dyn = model.dynamics
    if isinstance(dyn, CTRNN):
        return jnp.diag(1 - model.integrator.dt / dyn.tau).astype(J.dtype)
    if isinstance(dyn, ElmanRNN):
        return jnp.zeros_like(J)
    if isinstance(dyn, LSTM):
        return J.at[:, : dyn.hidden_size].set(0)
    if isinstance(dyn, GRU):
        n = dyn.state_size
        gates = dyn.W_x[n : 2 * n] @ x + dyn.b_x[n : 2 * n]
        z = jax.nn.sigmoid(gates + dyn.W_h[n : 2 * n] @ h + dyn.b_h[n : 2 * n])
        return jnp.diag(z).astype(J.dtype)
    raise AssertionError(f"no local Jacobian for {type(dyn).__name__}")
