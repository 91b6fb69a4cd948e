"""Real-time recurrent learning: the gradient of a sequence loss by forward
sensitivities, in memory independent of the sequence length, and online."""

from collections.abc import Callable
from typing import Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._dynamics import is_noisy
from .._integrate import Diffrax, _input_at
from .._losses import mse
from .._model import Model
from .._step_inputs import step_at
from ._base import AbstractStepwiseGradient, scan_loss
from ._online import AbstractOnlineGradient
from ._rtrl_diagonal import (
    init_traces,
    is_diagonal,
    lru_layers,
    traced_loss_fwd,
    traced_step,
)
from ._rtrl_structured import (
    add_immediate,
    has_structure,
    mask_gradient,
    structured_jacobians,
)


class RTRLState(eqx.Module):
    """Where an online RTRL run stands after `t` steps.

    - `h`: the current state `h_t`.
    - `P`: the sensitivities `∂h_t/∂θ`, a pytree shaped like
      `eqx.filter(model, eqx.is_inexact_array)` whose leaf for a parameter of
      shape `s` has shape `(state_size, *s)`, e.g.
      `P.dynamics.W[i, j, k] = ∂h_i/∂W_jk`. Leaves are `None` for parameters the
      step does not depend on (the readout, a fixed initial state).
    - `t`: the time of the next input.
    """

    h: Float[Array, " state"]
    P: PyTree[Float[Array, "state ..."]]
    t: Float[Array, ""]


class RTRL(AbstractOnlineGradient, AbstractStepwiseGradient):
    """Real-time recurrent learning (Williams & Zipser, 1989): forward sensitivities.

    Along with the state it carries `P_t = ∂h_t/∂θ` for every parameter,

        P_t = J_t P_{t-1} + ∂step_t/∂θ,        J_t = ∂h_t/∂h_{t-1},   P_0 = 0,

    and accumulates the gradient `g = Σ_t a_t (∂l_t/∂h_t · P_t + ∂l_t/∂θ)` during the
    forward `lax.scan`. Its custom VJP only scales `g` by the incoming cotangent, so
    memory does not depend on the sequence length `T`; time is `O(T n² m)` for `n`
    states and `m` parameters, dominated by the matrix product `J_t P_{t-1}`.

    - **Structured path** (`ElmanRNN`, `LSTM`, `GRU`, `CTRNN` with `Euler`): `J_t` and
      the immediate Jacobian `∂step/∂θ` come in closed form. A weight `W_jk` touches
      only the units its row drives (`∂h_i/∂W_jk = φ'(z_i) δ_ij h_k` for Elman), so
      the immediate term is scattered into `J P` and no one-hot tangent is pushed
      through a dense product. The readout and a fixed initial state carry no
      sensitivity at all. Both forms of the `CTRNN` are covered; for a sparse
      `W` (`density < 1`) the sensitivities of the missing connections ride along
      (they never feed `J_t`) and their gradient is set to zero.
    - **Generic path** (any step): `J_t` and `∂step/∂θ` from `n` vector-Jacobian
      products of the step (`jax.vmap(jax.vjp)` over the state basis), then one
      dense `J P` product. `n` VJPs are cheaper than `m` JVPs since `m ≫ n`.
    - **Element-wise path** (a `Model` of an `LRU`, fixed initial state): the
      Jacobian is diagonal, so each unit's sensitivities follow their own scalar
      recursions, `O(n m)` numbers and work per step (see
      `rnnode/gradients/_rtrl_diagonal.py`); `RTRLState.P` then holds the complex
      traces `(∂h/∂λ, ∂h/∂γ_log, ∂h/∂B_re)` per layer.
    - **`Diffrax` integrator**: the sensitivity ODE `dP/dt = (∂F/∂r) P + ∂F/∂θ` is
      integrated alongside `r` with the model's own solver, step-size controller and
      `dt0` over each interval, not differentiated through the solver.

    **Initial state.** If `h0` is differentiated (a model with
    `learn_initial_state=True`, or an `h0` that depends on parameters), RTRL also
    carries `S_t = ∂h_t/∂h_0` with `S_0 = I` (`n²` more numbers, `O(n³)` per step)
    and returns `Σ_t a_t ∂l_t/∂h_t · S_t` as the cotangent of `h0`. Online,
    `RTRL.init` starts the sensitivity of a learnt `Model.initial_state` at the
    identity, so its gradient comes out with the others.

    **Arguments:**

    - `structured`: `"auto"` (default) uses the structured path where rnnode has one
      and the generic path elsewhere; `True` requires it (`ValueError` otherwise);
      `False` forces the generic path. It assumes the step is `Model.step`, which is
      how `sequence_loss` and `RTRL.step` call it.
    - `block`: propagate the sensitivities once every `block` steps instead of at
      every step (structured path only; default 1, the textbook recursion). Within
      a block of `k` steps a local reverse pass gives the in-block loss terms and
      the products `M_s = J_k ⋯ J_{s+1}` of the block's Jacobians, and then

          P_k = M_0 P_0 + Σ_s M_s ∂step_s/∂θ,

      where each immediate term is the structured outer product, so that
      `Σ_s M_s ∂step_s/∂θ` is one `(n q) × k × (k_l)` matrix product. The dense
      `(n, n) @ (n, m)` product happens once a block: time per step
      `O(n³ + n m + n² m / k)` instead of `O(n² m)`, extra memory `O(k n²)` (the
      block's Jacobians), still independent of `T`. The gradient is the same (up
      to rounding). `block ≈ n` balances the terms. This is Schmidhuber's (1992)
      fixed-size-storage `O(n³)` hybrid of RTRL and BPTT. `RTRL.step` (online)
      always works step by step.

    Only the parameters and the initial state are differentiated: gradients with
    respect to inputs, targets or weights need a reverse pass (use `Autodiff()` or
    `BPTT()`). Higher-order derivatives are not available (a custom VJP).
    """

    structured: bool | Literal["auto"] = eqx.field(static=True, default="auto")
    block: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if not (isinstance(self.block, int) and not isinstance(self.block, bool)) or (
            self.block < 1
        ):
            raise ValueError(
                f"`RTRL(block={self.block!r})`: `block` must be a positive integer "
                "(1: update the sensitivities at every step)"
            )
        if self.block > 1 and self.structured is False:
            raise ValueError(
                "`RTRL(block=...)` needs the structured path; drop "
                "`structured=False` or use `block=1`"
            )
        if not (self.structured is True or self.structured is False) and (
            self.structured != "auto"
        ):
            raise ValueError(
                f"`RTRL(structured={self.structured!r})`: choose `True`, `False` "
                "or `'auto'`"
            )

    def loss(self, *, step, loss, params, h0, inputs, targets, weights):
        return _rtrl_loss((params, h0, inputs, targets, weights), step, loss, self)

    def init(
        self,
        model: Model,
        h0: Float[ArrayLike, " state"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
        t0: float = 0.0,
    ) -> RTRLState:
        """Start an online run: the state `h0` (default `model.init_state()`) and
        zero sensitivities (the identity for a learnt initial state when `h0` is
        not given). `key` is accepted for the common online interface and unused
        (RTRL is deterministic).

        **Returns:** an `RTRLState` for `RTRL.step`.
        """
        del key
        _check_model(model, "init")
        method = _method(self.structured, model)
        n = model.state_size
        if h0 is None:
            h = model.init_state()
        else:
            h = jnp.asarray(h0)
            if h.shape != (n,):
                raise ValueError(
                    f"`RTRL.init(h0=...)` must have shape ({n},), got {h.shape}"
                )
        learnt_h0 = model.learn_initial_state and h0 is None
        if method == "diagonal":
            traces = init_traces(model, lru_layers(model, "RTRL"))
            return RTRLState(h=h, P=traces, t=jnp.asarray(t0, dtype=h.dtype))
        flat, treedef = jax.tree_util.tree_flatten_with_path(model)
        blocks = []
        for path, leaf in flat:
            if not eqx.is_inexact_array(leaf):
                blocks.append(None)
            elif _is_initial_state(path):
                blocks.append(jnp.eye(n, dtype=leaf.dtype) if learnt_h0 else None)
            elif _in_dynamics(path) or (method == "generic" and _in_integrator(path)):
                blocks.append(jnp.zeros((n, *leaf.shape), dtype=leaf.dtype))
            else:
                blocks.append(None)
        P = jax.tree_util.tree_unflatten(treedef, blocks)
        return RTRLState(h=h, P=P, t=jnp.asarray(t0, dtype=h.dtype))

    def step(
        self,
        model: Model,
        state: RTRLState,
        x_t: Float[ArrayLike, " input"],
        y_t: PyTree[ArrayLike],
        *,
        loss: Callable[[Array, Array], Float[Array, ""]] = mse,
        weight: Float[ArrayLike, ""] = 1.0,
        x_next: Float[ArrayLike, " input"] | None = None,
        t: Float[ArrayLike, ""] | None = None,
        noise_key: PRNGKeyArray | None = None,
    ) -> tuple[RTRLState, Float[Array, ""], PyTree]:
        """One step of real-time recurrent learning: consume `x_t`, compare
        `model.output(h_t)` with `y_t`, and return this step's gradient, so that
        weights can be updated at every step (e.g. with optax).

        **Arguments:**

        - `model`, `state`: the model and the running `RTRLState`.
        - `x_t`, `y_t`: this step's input and target.
        - `loss`: the per-step loss `l(output, target)`.
        - `weight`: the time weight `a_t` of this step.
        - `x_next`: the next input, used by integrators that interpolate the input
          linearly; default `x_t`.
        - `t`: the time of `x_t`; default `state.t`.
        - `noise_key`: the key of this step's private noise (noisy dynamics;
          `None`: noise-free). `jax.random.fold_in(key, i)` at step `i` gives
          the realisation that `sequence_loss(..., key=key)` uses.

        **Returns:** `(state, a_t l_t, grads)` with `grads = a_t dl_t/dθ` shaped like
        `eqx.filter(model, eqx.is_inexact_array)`. With fixed weights, summing the
        losses and grads over a sequence gives `sequence_loss` and its gradient.
        """
        _check_model(model, "step")
        if not isinstance(state, RTRLState):
            raise ValueError(
                f"`RTRL.step` needs the `RTRLState` from `RTRL.init`, got {type(state)}"
            )
        method = _method(self.structured, model)
        x_t = jnp.asarray(x_t)
        if x_t.shape != (model.input_size,):
            raise ValueError(
                f"`RTRL.step`: `x_t` must have shape ({model.input_size},), got "
                f"{x_t.shape}"
            )
        x_next = x_t if x_next is None else jnp.asarray(x_next)
        t = state.t if t is None else jnp.asarray(t, dtype=state.t.dtype)
        if method == "diagonal":
            h, traces, value, grads = traced_step(
                model,
                lru_layers(model, "RTRL"),
                state.h,
                state.P,
                x_t,
                y_t,
                lambda m, h, y: loss(m.output(h), y),
            )
            grads = jax.tree.map(lambda g: weight * g, grads)
            new_state = RTRLState(h=h, P=traces, t=t + model.dt)
            return new_state, weight * value, grads
        flat, treedef = jax.tree_util.tree_flatten_with_path(model)
        paths = [p for p, _ in flat]
        leaves = [v for _, v in flat]
        try:
            all_blocks = treedef.flatten_up_to(state.P)
        except (ValueError, TypeError):
            raise ValueError(
                "`RTRL.step`: `state` was made for a different model; call "
                "`RTRL.init(model)` again"
            ) from None
        tracked = [i for i, b in enumerate(all_blocks) if b is not None]
        plan = _Plan(method, treedef, tuple(paths), tuple(tracked))
        h, blocks = _advance(
            plan,
            _model_step,
            model,
            leaves,
            state.h,
            [all_blocks[i] for i in tracked],
            (t, x_t, x_next, noise_key),
        )
        direct = [i for i, v in enumerate(leaves) if eqx.is_inexact_array(v)]

        def step_loss(sub, h):
            return loss(_rebuild(treedef, leaves, direct, sub).output(h), y_t)

        value, (dsub, dh) = jax.value_and_grad(step_loss, argnums=(0, 1))(
            [leaves[i] for i in direct], h
        )
        grads = [None] * len(leaves)
        for i, g in zip(direct, dsub, strict=True):
            grads[i] = g
        new_blocks = [None] * len(leaves)
        for i, P in zip(tracked, blocks, strict=True):
            grads[i] = grads[i] + jnp.tensordot(dh, P, axes=1)
            new_blocks[i] = P
        grads = _mask_sparse(model, paths, grads, method)
        grads = [None if g is None else weight * g for g in grads]
        new_state = RTRLState(
            h=h,
            P=jax.tree_util.tree_unflatten(treedef, new_blocks),
            t=t + model.dt,
        )
        return new_state, weight * value, jax.tree_util.tree_unflatten(treedef, grads)


# --------------------------------------------------------------------------------------
# The sequence loss and its custom VJP


@eqx.filter_custom_vjp
def _rtrl_loss(vjp_arg, step, loss, strategy):
    params, h0, inputs, targets, weights = vjp_arg
    return scan_loss(step, loss, params, h0, inputs, targets, weights)


@_rtrl_loss.def_fwd
def _rtrl_loss_fwd(perturbed, vjp_arg, step, loss, strategy):
    params, h0, inputs, targets, weights = vjp_arg
    p_params, p_h0, *p_data = perturbed
    if any(jax.tree.leaves(p_data)):
        raise ValueError(
            "`RTRL` differentiates the parameters and the initial state only; for "
            "gradients with respect to inputs, targets or weights use `Autodiff()` "
            "or `BPTT()`"
        )
    method = _method(strategy.structured, params)
    if method == "diagonal" and p_h0:
        method = "generic"  # a differentiated h0: the dense `∂h_t/∂h_0` path
    if method == "diagonal" and strategy.block == 1:
        total, grads = traced_loss_fwd(
            params, lru_layers(params, "RTRL"), h0, inputs, targets, weights, loss
        )
        grads = jax.tree.map(
            lambda p, g: g if p else None, p_params, grads, is_leaf=_is_none
        )
        return total, (grads, None)
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
        tracked = [i for i in direct if _in_dynamics(paths[i])]
        if method == "diffrax":
            stray = [paths[i] for i in direct if _in_integrator(paths[i])]
            if stray:
                raise ValueError(
                    "`RTRL` with a `Diffrax` integrator differentiates the dynamics' "
                    "parameters, not the integrator's arrays "
                    f"({jax.tree_util.keystr(stray[0])}); wrap them in "
                    "`jax.lax.stop_gradient` or make them Python floats"
                )
    n = h0.shape[0]
    blocks = [jnp.zeros((n, *leaves[i].shape), leaves[i].dtype) for i in tracked]
    if p_h0:
        tracked.append(None)
        blocks.append(jnp.eye(n, dtype=h0.dtype))
    plan = _Plan(method, treedef, tuple(paths), tuple(tracked))

    def step_loss(h, y):
        def f(sub, h):
            return loss(_rebuild(treedef, leaves, direct, sub), h, y)

        return jax.value_and_grad(f, argnums=(0, 1))([leaves[i] for i in direct], h)

    def body(carry, xs):
        h, blocks, g_sens, g_direct, total = carry
        inp, y, a = xs
        h, blocks = _advance(plan, step, params, leaves, h, blocks, inp)
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
    grads = _mask_sparse(params, paths, grads, plan.method)
    return total, (jax.tree_util.tree_unflatten(treedef, grads), g_h0)


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


@_rtrl_loss.def_bwd
def _rtrl_loss_bwd(residuals, grad_obj, perturbed, vjp_arg, step, loss, strategy):
    del perturbed, step, loss, strategy
    grads, g_h0 = residuals
    _, _, inputs, targets, weights = vjp_arg
    no_grad = jax.tree.map(lambda _: None, (inputs, targets, weights))
    if grad_obj is None:
        grads, g_h0 = jax.tree.map(lambda _: None, (grads, g_h0))
    else:
        grads, g_h0 = jax.tree.map(lambda g: grad_obj * g, (grads, g_h0))
    return (grads, g_h0, *no_grad)


# --------------------------------------------------------------------------------------
# One step of the state and its sensitivities


_UNROLL_MIN_SIZE = 4096  # sensitivities (numbers) from which the scan is unrolled


class _Plan(NamedTuple):
    """Static bookkeeping: which leaves of the parameters carry sensitivities."""

    method: str  # "structured" | "generic" | "diffrax"
    treedef: jax.tree_util.PyTreeDef
    paths: tuple
    tracked: tuple  # leaf indices; None stands for the initial state


def _advance(plan, step, params, leaves, h, blocks, inp):
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
    `dr/dt = F(t, r, x(t))`, `dP/dt = (∂F/∂r) P + ∂F/∂θ` (noise-free dynamics;
    noisy ones take the generic path, through the SDE solve)."""
    integ = model.integrator
    t, x, x_next = inp[:3]
    idx = [i for i in plan.tracked if i is not None and _in_dynamics(plan.paths[i])]
    eye = jnp.eye(h.shape[0], dtype=h.dtype)

    def vf(s, y, args):
        del args
        r, P = y
        x_s = _input_at(integ.interpolation, (s - t) / integ.dt, x, x_next)

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


def _method(structured, params) -> str:
    if isinstance(params, Model) and isinstance(params.integrator, Diffrax):
        if structured is True:
            raise ValueError(
                "`RTRL(structured=True)` has no structured form for a `Diffrax` "
                "integrator (it integrates the sensitivity ODE); use "
                "`RTRL(structured='auto')`"
            )
        # the sensitivity ODE is not the SDE's: a noisy field goes through the
        # VJPs of its (stochastic) step instead
        return "generic" if is_noisy(params.dynamics) else "diffrax"
    if structured is False:
        return "generic"
    if is_diagonal(params) and not params.learn_initial_state:
        return "diagonal"  # an `LRU`: element-wise sensitivities, `_rtrl_diagonal.py`
    if has_structure(params):
        return "structured"
    if structured is True:
        what = (
            f"`{type(params.dynamics).__name__}` with "
            f"`{type(params.integrator).__name__}`"
            if isinstance(params, Model)
            else f"parameters of type `{type(params).__name__}`"
        )
        raise ValueError(
            f"`RTRL(structured=True)`: no structured Jacobian for {what}; it exists "
            "for `ElmanRNN`, `LSTM`, `GRU` and `CTRNN` with `Euler`. Use "
            "`RTRL(structured='auto')` for the generic path"
        )
    return "generic"


def _mask_sparse(params, paths, grads, method):
    """The structured path's gradient of `W` back to the stored `W`: zeroed off
    a sparse `W`'s mask (the structured immediate Jacobian carries sensitivities
    of the missing connections too, harmless since they never feed `J`) and
    through Dale's law (its sensitivities are those of the weights the
    dynamics use). The other paths differentiate the stored `W` directly."""
    if not isinstance(params, Model) or method != "structured":
        return grads
    return [
        g
        if g is None or not _in_dynamics(p)
        else mask_gradient(params.dynamics, _field(p, 1), g)
        for p, g in zip(paths, grads, strict=True)
    ]


def _immediate_of(plan, i, imm):
    if i is None or not _in_dynamics(plan.paths[i]):
        return None
    return imm[plan.paths[i][1].name]


def _rebuild(treedef, leaves, idx, sub):
    leaves = list(leaves)
    for i, v in zip(idx, sub, strict=True):
        leaves[i] = v
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _model_step(model, h, inp):
    return model.step(h, *inp)


def _field(path, k=0):
    return getattr(path[k], "name", None) if len(path) > k else None


def _in_dynamics(path) -> bool:
    return _field(path) == "dynamics"


def _in_integrator(path) -> bool:
    return _field(path) == "integrator"


def _is_initial_state(path) -> bool:
    return len(path) == 1 and _field(path) == "initial_state"


def _check_model(model, what: str) -> None:
    if not isinstance(model, Model):
        raise ValueError(
            f"`RTRL.{what}` needs an `rnnode.Model`, got {type(model).__name__}"
        )


def _is_none(x) -> bool:
    return x is None
