"""SnAp-n: the influence matrix kept on the sparsity pattern of `n` steps."""

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._rtrl_structured import (
    local_jacobian,
    mask_gradient,
    recurrent_mask,
    structured_jacobians,
)
from ._rule_helpers import (
    check_coverage,
    dynamics_fields,
    dynamics_gradient,
    learning_signal,
)
from ._trace import AbstractTraceGradient


class SnAp(AbstractTraceGradient):
    """The sparse n-step approximation (Menick, Elsen, Evci, Osindero, Simonyan &
    Graves, 2021, "Practical real time recurrent learning with a sparse
    approximation", ICLR).

    A weight `A_jl` of the pre-activation `z_j` reaches, in one step, the units `z_j`
    drives (unit `j`; for an LSTM the pair `h_j`, `C_j`, kept together for
    every gate, the output gate's too), and in two steps every unit
    those connect to. SnAp-n keeps `P_t = ∂h_t/∂θ` only on the units `n` steps
    reach and drops the rest after every step:

        P_t = (J_t P_{t-1} + I_t) ⊙ M_n.

    Storage is compact: for each weight row `j` the `R` reachable units are
    gathered (an `(q, R, k)` array for a `(q, k)` weight), never a dense
    `(state, q, k)` array with zeros; a masked `W` keeps only its connections,
    padded to the longest row (`(n, R, L)`, `L ≈ p n` for density `p`).

    - `order=1`: `R` = 1 (2 for an LSTM): one number per parameter; for an Elman
      or CTRNN weight `P[j, l] ≈ ∂h_j/∂W_jl`, updated by `P ← diag(J) ⊙ P + I`.
      Time and memory per step `O(m)` for `m` parameters, plus the step's own
      `O(n²)`. Exact when `J` is diagonal. Biased otherwise.
    - `order=2`: `R` = 1 + the number of units that unit `j` feeds, about
      `1 + p n` for a recurrent mask of density `p` (`density=` of `CTRNN` /
      `ElmanRNN`). Time `O(R² m)`, memory `O(R m)` for `m` (nonzero)
      parameters: for a dense network `R = n` and SnAp-2 *is* exact RTRL
      (`O(n² m) = O(n⁴)`); at density `p` the recurrent part costs about
      `p³ n⁴`. Biased unless dense.

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

    def validate(self, model):
        check_coverage(
            "SnAp",
            f"SnAp(order={self.order})",
            model,
            "Use `UORO()` for any other step.",
        )

    def init_trace(self, model, h, inputs):
        return init_unit_traces(model, h, inputs, self.order)

    def advance(self, step, model, h, trace, key, inputs):
        del key
        J, imm = structured_jacobians(model, h, *inputs)
        trace, patterns = advance_unit_traces(model, J, imm, trace, self.order)
        return step(model, h, inputs), trace, patterns

    def gradient(self, model, trace, aux, dh, h, y, loss):
        del h, y, loss
        return dynamics_gradient(model, unit_gradient(model, trace, aux, dh))


# --------------------------------------------------------------------------------------
# Per-unit traces, shared with RFLO and e-prop (order 1, with the local Jacobian)


class Layout(NamedTuple):
    """Where a weight's compact trace lives (static NumPy index tables).

    - `idx`, `valid` `(R, q)`: the state units kept for each row `j` of the weight
      (pre-activation `j`; the units it drives first) and which are real, not
      padding (`valid is None`: all are).
    - `cols`, `cvalid` `(q, L)`: for a masked `W`, the columns `l` of row `j` that
      are connections, padded to the longest row (`None`: all `k` columns).
    - `dense`: every row keeps every state unit (SnAp-2 on a dense network), in
      their natural order, so that `J P` is one matrix product (as in `RTRL`).
    """

    idx: np.ndarray
    valid: np.ndarray | None
    cols: np.ndarray | None
    cvalid: np.ndarray | None
    dense: bool = False  # every unit is kept, in order: `J P` is a plain product


def unit_layout(params, name: str, rows: np.ndarray, order: int) -> Layout:
    """The `Layout` of the trace of the field `name`, whose immediate Jacobian
    drives the state units `rows` `(A, q)`."""
    mask = recurrent_mask(params.dynamics)
    cols = cvalid = None
    if mask is not None and name == "W":
        L = int(mask.sum(axis=1).max())
        cols = np.argsort(~mask, axis=1, kind="stable")[:, :L]
        cvalid = np.take_along_axis(mask, cols, axis=1)
    if order == 1:
        return Layout(rows, None, cols, cvalid)
    A, q = rows.shape
    n = params.state_size
    if mask is None:
        jpat = np.ones((n, n), dtype=bool)
    else:
        jpat = np.zeros((n, n), dtype=bool)
        jpat[: mask.shape[0], : mask.shape[1]] = mask
        jpat |= np.eye(n, dtype=bool)
    prio = np.zeros((n, q), dtype=int)
    for a in range(A):
        prio = np.maximum(prio, jpat[:, rows[a]].astype(int))
    for a in range(A):  # the driven units first, in their order
        prio[rows[a], np.arange(q)] = 2 + A - a
    R = int(np.max(np.sum(prio > 0, axis=0)))
    if R == n and np.all(prio > 0):
        return Layout(
            np.broadcast_to(np.arange(n)[:, None], (n, q)), None, cols, cvalid, True
        )
    idx = np.argsort(-prio, axis=0, kind="stable")[:R]
    valid = np.take_along_axis(prio, idx, axis=0) > 0
    return Layout(idx, valid, cols, cvalid)


def init_unit_traces(params, h, inp, order):
    _, imm = structured_jacobians(params, h, *inp)
    traces = {}
    for name in dynamics_fields(params):
        r = imm[name]
        lay = unit_layout(params, name, r.rows, order)
        # batch-first `(q, R, ...)` (XLA's batched products want the batch axis
        # first), or `(n, q, ...)` when every unit is kept (a plain `J P`)
        shape = lay.idx.shape if lay.dense else lay.idx.shape[::-1]
        if r.v is not None:
            shape = (*shape, r.v.shape[0] if lay.cols is None else lay.cols.shape[1])
        traces[name] = jnp.zeros(shape, r.vals.dtype)
    return traces


def advance_unit_traces(params, J, imm, traces, order):
    """`(J P + I) ⊙ M` on the compact layout, for every trace; also returns the
    layouts `{name: Layout}` for `unit_gradient`."""
    out, layouts, gathered = {}, {}, {}
    for name, P in traces.items():
        r = imm[name]
        lay = layouts[name] = unit_layout(params, name, r.rows, order)
        idx, valid = lay.idx, lay.valid
        if lay.dense:
            JP = jnp.tensordot(J.astype(P.dtype), P, axes=1)
        else:
            # one gather of J per layout (W, U and b share theirs): XLA's gathers
            # on CPU are slow
            which = (
                idx.shape,
                idx.tobytes(),
                None if valid is None else valid.tobytes(),
            )
            if which not in gathered:
                iT = idx.T
                Jg = J[iT[:, :, None], iT[:, None, :]]  # (q, R, R)
                if valid is not None:
                    vT = valid.T
                    Jg = Jg * jnp.asarray(vT[:, :, None] & vT[:, None, :], Jg.dtype)
                gathered[which] = Jg
            Jg = gathered[which].astype(P.dtype)
            if idx.shape[0] == 1:  # one unit per row: an elementwise product
                JP = Jg[:, 0, 0].reshape((-1, 1) + (1,) * (P.ndim - 2)) * P
            else:
                JP = jnp.einsum("qab,qb...->qa...", Jg, P)
        if r.v is None:
            upd = r.vals
        elif lay.cols is None:
            upd = r.vals[..., None] * r.v
        else:  # v[l] for the connections l of each row
            v = r.v[lay.cols] * jnp.asarray(lay.cvalid, r.v.dtype)
            upd = r.vals[..., None] * v[None]
        if lay.dense:  # the driven units are rows `r.rows`, not the first slots
            q = np.arange(r.rows.shape[1])
            for a in range(r.rows.shape[0]):
                JP = JP.at[r.rows[a], q].add(upd[a].astype(P.dtype))
            out[name] = JP
        else:
            upd = jnp.moveaxis(upd, 0, 1).astype(P.dtype)  # (q, A, ...)
            out[name] = JP.at[:, : r.rows.shape[0]].add(upd)
    return out, layouts


def unit_gradient(params, traces, layouts, dh):
    """`∂l/∂h · P̂` for every trace, by field name (`dh` may be a learning signal)."""
    out = {}
    for name, P in traces.items():
        lay = layouts[name]
        if lay.dense:
            g = jnp.tensordot(dh.astype(P.dtype), P, axes=1)
        else:
            lam = dh[lay.idx.T]  # (q, R)
            if lay.valid is not None:
                lam = lam * jnp.asarray(lay.valid.T, lam.dtype)
            g = jnp.einsum("qa,qa...->q...", lam.astype(P.dtype), P)
        if lay.cols is not None:  # back to the weight's shape, zero off the mask
            g = g * jnp.asarray(lay.cvalid, g.dtype)
            full = jnp.zeros(params.dynamics.W.shape, g.dtype)
            g = full.at[np.arange(g.shape[0])[:, None], lay.cols].add(g)
        out[name] = mask_gradient(params.dynamics, name, g)
    return out


def eligibility_advance(step, params, h, traces, inp, decay=None):
    """One step of RFLO / e-prop traces: SnAp-1 with the local Jacobian (or, with
    `decay`, the local Jacobian `decay · I` of a trace time constant of its own)."""
    x = inp[1]
    J, imm = structured_jacobians(params, h, *inp)
    if decay is None:
        J = local_jacobian(params, J, h, x)
    else:
        J = jnp.eye(J.shape[0], dtype=J.dtype) * jnp.asarray(decay, J.dtype)
    traces, patterns = advance_unit_traces(params, J, imm, traces, 1)
    return step(params, h, inp), traces, patterns


def eligibility_gradient(feedback, seed, params, traces, patterns, dh, h, y, loss):
    """The learning signal times the eligibility traces."""
    signal = learning_signal(params, dh, h, y, loss, feedback=feedback, seed=seed)
    return dynamics_gradient(params, unit_gradient(params, traces, patterns, signal))
