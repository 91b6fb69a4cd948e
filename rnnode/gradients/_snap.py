"""SnAp-n: the influence matrix kept on the sparsity pattern of `n` steps."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._online import (
    ALL_CELLS,
    AbstractTraceGradient,
    check_cell,
    dynamics_leaves,
    feedback_signal,
)
from ._rtrl_structured import (
    local_jacobian,
    mask_gradient,
    recurrent_mask,
    structured_jacobians,
)


class SnAp(AbstractTraceGradient):
    """The sparse n-step approximation (Menick, Elsen, Evci, Osindero, Simonyan &
    Graves, 2021, "Practical real time recurrent learning with a sparse
    approximation", ICLR).

    A weight `A_jl` of the pre-activation `z_j` reaches, in one step, the units `z_j`
    drives (unit `j`; for an LSTM `h_j` and `C_j`), and in two steps every unit
    those connect to. SnAp-n keeps `P_t = ∂h_t/∂θ` only on the units `n` steps
    reach and drops the rest after every step:

        P_t = (J_t P_{t-1} + I_t) ⊙ M_n.

    Storage is compact: for each weight column `j` the `R` reachable units are
    gathered (an `(R, q, k)` array for a `(q, k)` weight), never a dense
    `(state, q, k)` array with zeros.

    - `order=1`: `R` = 1 (2 for an LSTM): one number per parameter; for an Elman
      or CTRNN weight `P[j, l] ≈ ∂h_j/∂W_jl`, updated by `P ← diag(J) ⊙ P + I`.
      Time and memory per step `O(m)` for `m` parameters, plus the step's own
      `O(n²)`. Exact when `J` is diagonal. Biased otherwise.
    - `order=2`: `R` = 1 + the number of units that unit `j` feeds, i.e.
      `1 + p n` for a recurrent mask of density `p` (`density=` of `CTRNN` /
      `ElmanRNN`). Time `O(R² m)`, memory `O(R m)`: for a dense network `R = n`
      and SnAp-2 *is* exact RTRL (`O(n² m)`); at density `p` it is about `p²`
      times cheaper. Biased unless dense.

    Covers `ElmanRNN`, `LSTM`, `GRU` and `CTRNN` with `Euler` (the cells with a
    structured Jacobian); other steps raise a `ValueError` (use `UORO()`, which
    needs only JVPs and VJPs of the step). The gradient of a masked `W` is zero
    off the mask. Deterministic.

    **Arguments:**

    - `order`: `1` or `2`.
    """

    order: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if self.order not in (1, 2) or isinstance(self.order, bool):
            raise ValueError(
                f"`SnAp(order={self.order!r})`: `order` must be 1 or 2 (use `RTRL()` "
                "for the exact influence matrix)"
            )

    def _validate(self, params):
        check_cell(
            f"SnAp(order={self.order})",
            params,
            ALL_CELLS,
            "Use `UORO()` for any other step.",
        )

    def _init_trace(self, params, h, inp):
        return init_unit_traces(params, h, inp, self.order)

    def _advance(self, step, params, h, trace, key, inp):
        del key
        J, imm = structured_jacobians(params, h, *inp)
        trace, patterns = advance_unit_traces(params, J, imm, trace, self.order)
        return step(params, h, inp), trace, patterns

    def _gradient(self, params, trace, aux, dh, h, y, loss):
        del h, y, loss
        return unit_gradient(params, trace, aux, dh)


# --------------------------------------------------------------------------------------
# Per-unit traces, shared with RFLO and e-prop (order 1, with the local Jacobian)


def unit_pattern(params, rows: np.ndarray, order: int):
    """`(idx, valid)`, both `(R, q)`: the state units kept for each weight column
    (the `rows` it drives first), and which entries are real (not padding)."""
    if order == 1:
        return rows, None
    A, q = rows.shape
    n = params.state_size
    mask = recurrent_mask(params.dynamics)
    if mask is None:
        jpat = np.ones((n, n), dtype=bool)
    else:
        jpat = np.zeros((n, n), dtype=bool)
        jpat[: mask.shape[0], : mask.shape[1]] = mask
        jpat |= np.eye(n, dtype=bool)
    prio = np.zeros((n, q), dtype=int)
    for a in range(A):
        prio = np.maximum(prio, jpat[:, rows[a]].astype(int))
    cols = np.arange(q)
    for a in range(A):  # the driven units first, in their order
        prio[rows[a], cols] = 2 + A - a
    R = int(np.max(np.sum(prio > 0, axis=0)))
    idx = np.argsort(-prio, axis=0, kind="stable")[:R]
    valid = np.take_along_axis(prio, idx, axis=0) > 0
    return idx, valid


def init_unit_traces(params, h, inp, order):
    _, imm = structured_jacobians(params, h, *inp)
    traces = {}
    for name, i in dynamics_leaves(params).items():
        del i
        r = imm[name]
        idx, _ = unit_pattern(params, r.rows, order)
        shape = idx.shape if r.v is None else (*idx.shape, r.v.shape[0])
        traces[name] = jnp.zeros(shape, r.vals.dtype)
    return traces


def advance_unit_traces(params, J, imm, traces, order):
    """`(J P + I) ⊙ M` on the compact layout, for every trace; also returns the
    patterns `{name: (idx, valid)}` for `unit_gradient`."""
    out, patterns = {}, {}
    for name, P in traces.items():
        r = imm[name]
        idx, valid = patterns[name] = unit_pattern(params, r.rows, order)
        Jg = J[idx[:, None, :], idx[None, :, :]]  # (R, R, q)
        if valid is not None:
            Jg = Jg * jnp.asarray(valid[:, None] & valid[None, :], Jg.dtype)
        JP = jnp.einsum("abq,bq...->aq...", Jg.astype(P.dtype), P)
        upd = r.vals if r.v is None else r.vals[..., None] * r.v
        out[name] = JP.at[: r.rows.shape[0]].add(upd.astype(P.dtype))
    return out, patterns


def unit_gradient(params, traces, patterns, dh):
    """`∂l/∂h · P̂` for every trace, by leaf index (`dh` may be a learning signal)."""
    index = dynamics_leaves(params)
    out = {}
    for name, P in traces.items():
        idx, valid = patterns[name]
        lam = dh[idx]
        if valid is not None:
            lam = lam * jnp.asarray(valid, lam.dtype)
        g = jnp.einsum("aq,aq...->q...", lam.astype(P.dtype), P)
        out[index[name]] = mask_gradient(params.dynamics, name, g)
    return out


def eligibility_advance(step, params, h, traces, inp):
    """One step of RFLO / e-prop traces: SnAp-1 with the local Jacobian."""
    t, x, x_next = inp
    J, imm = structured_jacobians(params, h, t, x, x_next)
    J = local_jacobian(params, J, h, x)
    traces, patterns = advance_unit_traces(params, J, imm, traces, 1)
    return step(params, h, inp), traces, patterns


def eligibility_gradient(feedback, seed, params, traces, patterns, dh, h, y, loss):
    """The learning signal times the eligibility traces."""
    signal = feedback_signal(feedback, seed, params, dh, h, y, loss)
    return unit_gradient(params, traces, patterns, signal)
