"""RTRL over a whole sequence: the forward pass of `RTRL`'s gradient (step by
step, two steps at a time, or in blocks of `k` steps), and one step of the
state and its sensitivity blocks (structured, generic, or a `Diffrax`
sensitivity ODE)."""

from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from .._integrate import input_at
from .._model import Model
from .._step_inputs import step_at
from ._rtrl_diagonal import lru_layers, traced_loss_fwd
from ._rtrl_structured import add_immediate, mask_gradient, structured_jacobians


def rtrl_sequence(
    strategy,
    method,
    step,
    loss,
    params,
    h0,
    inputs,
    targets,
    weights,
    p_params,
    learn_h0,
):
    """`(Σ_t a_t l_t, Σ_t a_t g_t, g_h0)` of exact RTRL over one sequence; `method`
    is `"diagonal"`, `"structured"`, `"generic"` or `"diffrax"`, `p_params` says
    which parameters are differentiated."""
    if method == "diagonal" and learn_h0:
        method = "generic"  # a differentiated h0: the dense `∂h_t/∂h_0` path
    if method == "diagonal" and strategy.block == 1:
        total, grads = traced_loss_fwd(
            params, lru_layers(params, "RTRL"), h0, inputs, targets, weights, loss
        )
        return total, grads, None
    if strategy.block > 1 and method != "structured":
        raise ValueError(
            f"`RTRL(block={strategy.block})` needs a structured Jacobian, which "
            "exists for `ElmanRNN`, `LSTM`, `GRU` and `CTRNN` with `Euler`; use "
            "`RTRL()` (block=1) for this model"
        )
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [p for p, _ in flat]
    leaves = [v for _, v in flat]
    pert = treedef.flatten_up_to(p_params)
    direct = [i for i, p in enumerate(pert) if p]
    if method == "generic":
        tracked = list(direct)
    else:
        tracked = [i for i in direct if in_dynamics(paths[i])]
        if method == "diffrax":
            stray = [paths[i] for i in direct if in_integrator(paths[i])]
            if stray:
                raise ValueError(
                    "`RTRL` with a `Diffrax` integrator differentiates the dynamics' "
                    "parameters, not the integrator's arrays "
                    f"({jax.tree_util.keystr(stray[0])}); wrap them in "
                    "`jax.lax.stop_gradient` or make them Python floats"
                )
    n = h0.shape[0]
    blocks = [jnp.zeros((n, *leaves[i].shape), leaves[i].dtype) for i in tracked]
    if learn_h0:
        tracked.append(None)
        blocks.append(jnp.eye(n, dtype=h0.dtype))
    plan = Plan(method, treedef, tuple(paths), tuple(tracked))

    def step_loss(h, y):
        def f(sub, h):
            return loss(_rebuild(treedef, leaves, direct, sub), h, y)

        return jax.value_and_grad(f, argnums=(0, 1))([leaves[i] for i in direct], h)

    def body(carry, xs):
        h, blocks, g_sens, g_direct, total = carry
        inp, y, a = xs
        h, blocks = advance_blocks(plan, step, params, leaves, h, blocks, inp)
        value, (dsub, dh) = step_loss(h, y)
        g_direct = [g + a * d for g, d in zip(g_direct, dsub, strict=True)]
        g_sens = [
            g + a * jnp.tensordot(dh, P, axes=1)
            for g, P in zip(g_sens, blocks, strict=True)
        ]
        return (h, blocks, g_sens, g_direct, total + a * value), None

    g_sens = [jnp.zeros(P.shape[1:], P.dtype) for P in blocks]
    g_direct = [jnp.zeros_like(leaves[i]) for i in direct]
    total = jnp.zeros((), jnp.result_type(weights))
    carry = (h0, blocks, g_sens, g_direct, total)
    sequence = (inputs, targets, weights)
    T = weights.shape[0]

    def at(i):
        # step i's inputs are built here, from the sequence (no length-T copies)
        return step_at(inputs, i), jax.tree.map(lambda x: x[i], targets), weights[i]

    if strategy.block > 1:
        carry = _block_scan(
            plan, step, step_loss, params, carry, sequence, strategy.block
        )
    elif sum(P.size for P in blocks) < _UNROLL_MIN_SIZE:

        def one(carry, _):
            carry, i = carry  # a counter, not a scanned `arange`
            return (body(carry, at(i))[0], i + 1), None

        (carry, _), _ = jax.lax.scan(one, (carry, 0), None, length=T)
    else:
        # Two steps per iteration: each step's `J P` product then writes straight
        # into the buffer the other one read, instead of `P` being copied once a
        # step. (Indexing the sequence, rather than `scan(..., unroll=2)`, which
        # would copy it into pairs.)
        def pair(carry, _):
            carry, i = carry
            carry = body(carry, at(2 * i))[0]
            return (body(carry, at(2 * i + 1))[0], i + 1), None

        (carry, _), _ = jax.lax.scan(pair, (carry, 0), None, length=T // 2)
        if T % 2:
            carry = body(carry, at(T - 1))[0]
    _, _, g_sens, g_direct, total = carry
    grads = [None] * len(leaves)
    for i, g in zip(direct, g_direct, strict=True):
        grads[i] = g
    g_h0 = None
    for i, g in zip(tracked, g_sens, strict=True):
        if i is None:
            g_h0 = g
        else:
            grads[i] = grads[i] + g
    grads = mask_sparse(params, paths, grads, plan.method)
    return total, jax.tree_util.tree_unflatten(treedef, grads), g_h0


def _block_scan(plan, step, step_loss, params, carry, sequence, k):
    """`RTRL(block=k)`: the sequence in blocks of `k` steps, the sensitivities
    propagated once a block (Schmidhuber, 1992). A last, partial block is filled
    up with masked steps (zero weight, after every real step, so they change
    nothing that is returned), so that one compiled block serves every length and
    the working memory does not depend on `T`."""
    T = sequence[2].shape[0]
    k = min(k, T)
    # The static row pattern of each tracked block's immediate Jacobian (the values
    # of this call are unused and removed by XLA).
    inputs, targets, weights = sequence
    _, imm0 = structured_jacobians(params, carry[0], *step_at(inputs, 0))
    rows = [
        None if r is None else r.rows
        for r in (_immediate_of(plan, i, imm0) for i in plan.tracked)
    ]

    def one_block(carry, _):
        carry, i = carry  # a counter, not a scanned `arange` (an O(T / k) array)
        idx = i * k + jnp.arange(k)
        j = jnp.minimum(idx, T - 1)
        seq = (
            jax.vmap(lambda j: step_at(inputs, j))(j),
            *jax.tree.map(lambda a: a[j], (targets, weights)),
        )
        carry = _block_step(plan, step, step_loss, params, rows, carry, seq, idx < T)
        return (carry, i + 1), None

    (carry, _), _ = jax.lax.scan(one_block, (carry, 0), None, length=-(-T // k))
    return carry


def _block_step(plan, step, step_loss, params, rows, carry, seq, valid):
    """One block of `k` steps from `P_0` (the sensitivities at its start):

    - forward: `h_s`, `J_s = ∂h_s/∂h_{s-1}`, the immediate Jacobians, and
      `e_s = a_s ∂l_s/∂h_s` for `s = 1 … k`;
    - reverse: `λ_s = e_s + λ_{s+1} J_{s+1}` (the in-block adjoint, `λ_{k+1} = 0`)
      and `M_s = J_k ⋯ J_{s+1}` (`M_k = I`);
    - then `Σ_s e_s P_s = λ_1 J_1 P_0 + Σ_s λ_s ∂step_s/∂θ` and
      `P_k = M_0 P_0 + Σ_s M_s ∂step_s/∂θ`.

    An immediate Jacobian `Rows(rows, vals, v)` has entries
    `Σ_a [i = rows[a, j]] vals[a, j] v[l]`, so `M ∂step/∂θ` is
    `Q[:, j] ⊗ v` with `Q[:, j] = Σ_a M[:, rows[a, j]] vals[a, j]`. Steps with
    `valid` false (the filling of a last block) add no loss.
    """
    h, blocks, g_sens, g_direct, total = carry

    def forward(carry, xs):
        h, g_direct, total = carry
        (inp, y, a), ok = xs
        J, imm = structured_jacobians(params, h, *inp)
        h = step(params, h, inp)
        value, (dsub, dh) = step_loss(h, y)
        # `where`, not a zero weight: a masked step's loss may be non-finite
        mask = lambda v: jnp.where(ok, a * v, jnp.zeros_like(v))
        g_direct = [g + mask(d) for g, d in zip(g_direct, dsub, strict=True)]
        imm = [_immediate_of(plan, i, imm) for i in plan.tracked]
        out = (J, mask(dh), [None if r is None else (r.vals, r.v) for r in imm])
        return (h, g_direct, total + mask(value)), out

    (h, g_direct, total), (Js, es, imms) = jax.lax.scan(
        forward, (h, g_direct, total), (seq, valid)
    )

    def gather(R, r, vals):  # Σ_a R[..., r[a, j]] vals[a, j]  →  (..., q)
        return sum(R[..., r[a]] * vals[a] for a in range(r.shape[0]))

    def reverse(carry, xs):
        lam_J, M = carry  # λ_{s+1} J_{s+1} and M_s
        J, e, imm = xs
        lam = e + lam_J
        out = [
            (gather(lam, r, im[0]), gather(M, r, im[0]))
            for r, im in zip(rows, imm, strict=True)
            if r is not None
        ]
        return (lam @ J, M @ J), out

    n = h.shape[0]
    eye = jnp.eye(n, dtype=Js.dtype)
    (lam_J, M), outs = jax.lax.scan(
        reverse, (jnp.zeros_like(h), eye), (Js, es, imms), reverse=True
    )
    outs = iter(outs)
    new_blocks, new_g = [], []
    for P, g, r, imm in zip(blocks, g_sens, rows, imms, strict=True):
        g = g + jnp.tensordot(lam_J, P, axes=1)
        P = jnp.tensordot(M, P, axes=1)
        if r is not None:
            lam_v, Q = next(outs)  # (k, q), (k, n, q)
            v = imm[1]
            if v is None:
                g = g + jnp.sum(lam_v, axis=0).astype(g.dtype)
                P = P + jnp.sum(Q, axis=0).astype(P.dtype)
            else:
                g = g + jnp.einsum("sj,sl->jl", lam_v, v).astype(g.dtype)
                P = P + jnp.einsum("sij,sl->ijl", Q, v).astype(P.dtype)
        new_blocks.append(P)
        new_g.append(g)
    return h, new_blocks, new_g, g_direct, total


# --------------------------------------------------------------------------------------
# One step of the state and its sensitivities


_UNROLL_MIN_SIZE = 4096  # sensitivities (numbers) from which the scan is unrolled


class Plan(NamedTuple):
    """Static bookkeeping: which leaves of the parameters carry sensitivities."""

    method: str  # "structured" | "generic" | "diffrax"
    treedef: jax.tree_util.PyTreeDef
    paths: tuple
    tracked: tuple  # leaf indices; None stands for the initial state


def advance_blocks(plan, step, params, leaves, h, blocks, inp):
    """`h_t` and the sensitivity blocks `P_t = J_t P_{t-1} + ∂step_t/∂θ`."""
    if plan.method == "diffrax":
        return _diffrax_advance(plan, params, leaves, h, blocks, inp)
    if plan.method == "structured":
        h_new = step(params, h, inp)
        J, imm = structured_jacobians(params, h, *inp)
        return h_new, [
            add_immediate(_immediate_of(plan, i, imm), jnp.tensordot(J, P, axes=1))
            for i, P in zip(plan.tracked, blocks, strict=True)
        ]
    # Generic: J and ∂step/∂θ row by row from n VJPs of the step.
    idx = [i for i in plan.tracked if i is not None]

    def f(h, sub):
        return step(_rebuild(plan.treedef, leaves, idx, sub), h, inp)

    h_new, vjp = jax.vjp(f, h, [leaves[i] for i in idx])
    J, B = jax.vmap(vjp)(jnp.eye(h_new.shape[0], dtype=h_new.dtype))
    B = dict(zip(idx, B, strict=True))
    return h_new, [
        jnp.tensordot(J, P, axes=1) + (0 if i is None else B[i])
        for i, P in zip(plan.tracked, blocks, strict=True)
    ]


def _diffrax_advance(plan, model, leaves, h, blocks, inp):
    """Integrate `(r, P)` over one interval with the model's diffrax solver:
    `dr/dt = F(t, r, x(t))`, `dP/dt = (∂F/∂r) P + ∂F/∂θ`."""
    integ = model.integrator
    t, x, x_next = inp[:3]  # noise-free dynamics (noisy ones are `generic`)
    idx = [i for i in plan.tracked if i is not None and in_dynamics(plan.paths[i])]
    eye = jnp.eye(h.shape[0], dtype=h.dtype)

    def vf(s, y, args):
        del args
        r, P = y
        x_s = input_at(integ.interpolation, (s - t) / integ.dt, x, x_next)

        def field(r, sub):
            return _rebuild(plan.treedef, leaves, idx, sub).dynamics(s, r, x_s)

        dr, vjp = jax.vjp(field, r, [leaves[i] for i in idx])
        J, B = jax.vmap(vjp)(eye)
        B = dict(zip(idx, B, strict=True))
        dP = [
            jnp.tensordot(J, Pb, axes=1) + B.get(i, 0)
            for i, Pb in zip(plan.tracked, P, strict=True)
        ]
        return dr, dP

    dt0 = integ.dt0
    if dt0 is None and isinstance(integ.stepsize_controller, diffrax.ConstantStepSize):
        dt0 = integ.dt
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        integ.solver,
        t0=t,
        t1=t + integ.dt,
        dt0=dt0,
        y0=(h, list(blocks)),
        stepsize_controller=integ.stepsize_controller,
        adjoint=diffrax.ForwardMode(),
        max_steps=integ.max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    r, P = jax.tree.map(lambda a: a[-1], sol.ys)
    return r, P


# --------------------------------------------------------------------------------------
# Helpers


def mask_sparse(params, paths, grads, method):
    """The structured path's gradient of `W` back to the stored `W`: zeroed off
    a sparse `W`'s mask (the structured immediate Jacobian carries sensitivities
    of the missing connections too, harmless since they never feed `J`) and
    through Dale's law (its sensitivities are those of the weights the
    dynamics use). The other paths differentiate the stored `W` directly."""
    if not isinstance(params, Model) or method != "structured":
        return grads
    return [
        g
        if g is None or not in_dynamics(p)
        else mask_gradient(params.dynamics, _field(p, 1), g)
        for p, g in zip(paths, grads, strict=True)
    ]


def _immediate_of(plan, i, imm):
    if i is None or not in_dynamics(plan.paths[i]):
        return None
    return imm[plan.paths[i][1].name]


def _rebuild(treedef, leaves, idx, sub):
    leaves = list(leaves)
    for i, v in zip(idx, sub, strict=True):
        leaves[i] = v
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _field(path, k=0):
    return getattr(path[k], "name", None) if len(path) > k else None


def in_dynamics(path) -> bool:
    return _field(path) == "dynamics"


def in_integrator(path) -> bool:
    return _field(path) == "integrator"


def is_initial_state(path) -> bool:
    return len(path) == 1 and _field(path) == "initial_state"
