"""Backpropagation through time (BPTT) as an explicit adjoint recursion.

For the recurrence and loss of `AbstractGradient.loss`,

    h_t = step(θ, h_{t-1}, x_t),   L = Σ_{t=1}^T a_t l(θ, h_t, y_t),

the adjoint (the total derivative of `L` with respect to the state `h_t`) obeys

    λ_T = a_T ∂l_T/∂h_T,   λ_t = a_t ∂l_t/∂h_t + J_{t+1}ᵀ λ_{t+1},   J_{t+1} = ∂h_{t+1}/∂h_t,

and the gradients are

    dL/dθ   = Σ_t (∂step_t/∂θ)ᵀ λ_t + Σ_t a_t ∂l_t/∂θ,
    dL/dh_0 = J_1ᵀ λ_1.

`BPTT` implements exactly this as a custom VJP: the forward pass is a `lax.scan`
storing the states, the backward pass a reverse `lax.scan` of vector-Jacobian
products `J_{t+1}ᵀ λ_{t+1}` (`jax.vjp` of one step; `J` is never formed). The
parameter part `Σ_t (∂step_t/∂θ)ᵀ λ_t` does not depend on later adjoints, so it is
not accumulated step by step inside the reverse scan; once the `λ_t` of a stretch
of steps are known it is computed as one vector-Jacobian product of the step
mapped over those steps, which XLA turns into a few large matrix products (a
contraction over time and batch) instead of `T` small ones.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._losses import mse
from ._base import AbstractGradient


def _check_count(name: str, value) -> None:
    if value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < 1:
        raise ValueError(
            f"`BPTT({name}=...)` must be None or an integer >= 1, got {value!r}"
        )


class BPTT(AbstractGradient):
    """Backpropagation through time by the explicit adjoint recursion (see the module
    docstring), as a custom VJP.

    **Arguments:**

    - `truncate`: `None` (default) for the exact gradient; an integer `k ≥ 1` for
      truncated BPTT in its usual (chunked) form: the sequence is cut into chunks of
      `k` steps, `1…k`, `k+1…2k`, …, and no gradient flows from one chunk into the
      previous one. This is exactly `Autodiff` of the recurrence in which the state
      entering every step `t+1` with `t` a positive multiple of `k` passes through
      `lax.stop_gradient`, i.e. `λ_t = a_t ∂l_t/∂h_t` (the `J_{t+1}ᵀ λ_{t+1}` term is
      dropped) when `t mod k = 0`. A loss term `l_t` thus reaches back through at
      most `k` steps (between 1 and `k`, depending on where `t` falls in its chunk).
      The initial state `h_0` receives the gradient of the first chunk. `truncate=k`
      with `k ≥ T` is the exact gradient.
    - `checkpoints`: `None` (default) stores every state `h_1 … h_T` in the forward
      pass (memory `O(T n)`). An integer `k ≥ 1` stores only the states at the
      boundaries of at most `k` segments of `L = ⌈T/k⌉` steps (the last one shorter
      when `k` does not divide `T`), and the backward pass recomputes the states of
      one segment at a time from its stored boundary state: memory
      `O(k n + (T/k) n)` for one extra forward pass. `k ≈ √T` minimises it
      (`O(√T n)`); this is what lets a sequence of 10⁶ steps be trained where storing
      every state would not fit.

    Gradients flow to every floating-point array in the model (including a learnt
    initial state, and arrays a `loss` function closes over) and also to the inputs,
    float targets and the time weights when those are differentiated. For a
    `Diffrax` integrator each per-step vector-Jacobian product goes through the
    integrator's own `adjoint=` (e.g. `diffrax.RecursiveCheckpointAdjoint()` or
    `diffrax.BacksolveAdjoint()`).

    Works under `jax.jit`, `jax.vmap`, `jax.grad`, `vmap(grad)` and `grad(vmap)`.
    Reverse mode only: forward-mode differentiation (`jax.jvp`, `jax.jacfwd`) of a
    `BPTT` loss is not supported (use `Autodiff` or `RTRL`).

    See also `rnnode.adjoint_trajectory`, which returns the `λ_t` themselves.
    """

    truncate: int | None = eqx.field(static=True, default=None)
    checkpoints: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        _check_count("truncate", self.truncate)
        _check_count("checkpoints", self.checkpoints)

    def loss(self, *, step, loss, params, h0, inputs, targets, weights):
        theta = _make_theta(step, loss, params, h0, inputs, targets)
        return _bptt_loss(
            (theta, h0, inputs, targets, weights), self.truncate, self.checkpoints
        )

    def batch_loss(
        self,
        *,
        step,
        loss,
        params: PyTree,
        h0: Float[Array, "batch state"],
        inputs: PyTree,
        targets: PyTree,
        weights: Float[Array, "time *batch"],
    ) -> Float[Array, ""]:
        """The mean over a batch of `loss(...)`, computed on the whole batch at once.

        Same arguments as `loss` except that `h0` has a leading batch axis and every
        leaf of `inputs` and `targets` has leading `(time, batch)` axes; `weights` is
        `(time,)` or `(time, batch)`. `sequence_loss` calls this (instead of
        `jax.vmap` of `loss`) for batched inputs.

        The batch is treated as one recurrent system whose state is the stack of
        the sequences' states, so that the custom VJP sees the whole batch: its
        parameter gradient then contracts over batch and time together in a few
        large matrix products (under `jax.vmap` of a custom VJP every sequence
        would carry its own copy of the parameter gradient). The result equals
        `jnp.mean(jax.vmap(loss)(...))`, gradients included.
        """
        B = h0.shape[0]

        def batch_step(params, hs, inp):
            return jax.vmap(step, in_axes=(None, 0, 0))(params, hs, inp)

        def per_sequence(params, hs, ys):
            return jax.vmap(loss, in_axes=(None, 0, 0))(params, hs, ys)

        if weights.ndim == 1:

            def batch_step_loss(params, hs, ys):
                return jnp.sum(per_sequence(params, hs, ys)) / B

            batch_targets = targets
        else:

            def batch_step_loss(params, hs, ys_and_weights):
                ys, a = ys_and_weights
                return jnp.sum(a * per_sequence(params, hs, ys)) / B

            batch_targets = (targets, weights)
            weights = jnp.ones(weights.shape[:1], dtype=weights.dtype)
        return self.loss(
            step=batch_step,
            loss=batch_step_loss,
            params=params,
            h0=h0,
            inputs=inputs,
            targets=batch_targets,
            weights=weights,
        )


# ---------------------------------------------------------------------------------
# The computation. `theta = (params, step_fn, loss_fn)`: the step and loss functions
# are closure-converted so that any arrays they close over become explicit leaves
# (differentiable like the parameters, and safe to carry across the custom VJP).


def _first(tree):
    return jtu.tree_map(lambda x: x[0], tree)


def _make_theta(step, loss, params, h0, inputs, targets):
    step_fn = eqx.filter_closure_convert(step, params, h0, _first(inputs))
    loss_fn = eqx.filter_closure_convert(loss, params, h0, _first(targets))
    return (params, step_fn, loss_fn)


def _step(theta, h, inp):
    params, step_fn, _ = theta
    return step_fn(params, h, inp)


def _loss(theta, h, y):
    params, _, loss_fn = theta
    return loss_fn(params, h, y)


def _num_steps(weights) -> int:
    return weights.shape[0]


def _rollout(theta, h0, inputs, targets, weights, *, store_states: bool):
    """Forward scan: final state, the states `h_1 … h_T` (if stored) and the
    per-step weighted losses `a_t l_t`."""

    def body(h, xs):
        inp, y, a = xs
        h = _step(theta, h, inp)
        return h, (h if store_states else None, a * _loss(theta, h, y))

    h_last, (hs, ls) = jax.lax.scan(body, h0, (inputs, targets, weights))
    return h_last, hs, ls


def _adjoints(theta, h_start, hs, inputs, g, c_end, s0, truncate):
    """Reverse scan over one stretch of steps `s0+1 … s0+L`.

    `hs`: the states `h_{s0+1} … h_{s0+L}`; `g`: the direct terms `a_t ∂l_t/∂h_t`
    (already scaled by the output cotangent); `c_end`: `J_{s0+L+1}ᵀ λ_{s0+L+1}`, the
    cotangent reaching `h_{s0+L}` from later steps. Returns `(J_{s0+1}ᵀ λ_{s0+1},
    λ_{s0+1 … s0+L}, states before each step)`.
    """
    L = hs.shape[0]
    hs_prev = jnp.concatenate([h_start[None], hs[:-1]], axis=0)
    idx = s0 + jnp.arange(1, L + 1)

    def body(c, xs):
        g_t, h_prev, inp, t = xs
        if truncate is not None:
            c = jnp.where(t % truncate == 0, jnp.zeros_like(c), c)
        lam = g_t + c
        _, vjp = jax.vjp(lambda h: _step(theta, h, inp), h_prev)
        (c,) = vjp(lam)
        return c, lam

    c_start, lams = jax.lax.scan(body, c_end, (g, hs_prev, inputs, idx), reverse=True)
    return c_start, lams, hs_prev


def _filter(tree, flags):
    return jtu.tree_map(lambda x, f: x if f else None, tree, flags)


def _any(flags) -> bool:
    return any(jtu.tree_leaves(flags))


_BLOCK = 64
"""The backward pass works through the stored states in blocks of this many steps,
so that its temporaries (states before each step, direct loss terms, adjoints)
stay small and in cache; the parameter gradient is accumulated once per block."""


def _block_backward(
    theta, perturbed, h_before, hs, inputs, targets, weights, c_end, gbar, s0, truncate
):
    """The backward pass over the steps `s0+1 … s0+len(hs)`, whose states `hs` (and
    the state `h_before` before them) are known.

    Returns `(c_start, (ct_theta, ct_inputs, ct_targets, ct_weights))` with `None`
    for whatever is not perturbed."""
    p_theta, _, p_inputs, p_targets, p_weights = perturbed
    th_d, th_rest = eqx.partition(theta, p_theta)
    y_d, y_rest = eqx.partition(targets, p_targets)
    x_d, x_rest = eqx.partition(inputs, p_inputs)
    diff_weights = _any(p_weights)

    # Direct loss terms, all steps of the block at once: g_t = ḡ a_t ∂l_t/∂h_t, plus
    # the loss's own gradients wrt θ, targets and weights.
    def block_loss(th_d, hs, y_d, w):
        th = eqx.combine(th_d, th_rest)
        ys = eqx.combine(y_d, y_rest)
        w = weights if w is None else w
        ls = jax.vmap(lambda h, y, a: a * _loss(th, h, y))(hs, ys, w)
        return jnp.sum(ls)

    w_d = weights if diff_weights else None
    _, loss_vjp = jax.vjp(block_loss, th_d, hs, y_d, w_d)
    ct_th_loss, g, ct_targets, ct_weights = loss_vjp(gbar)

    c_start, lams, hs_prev = _adjoints(
        theta, h_before, hs, inputs, g, c_end, s0, truncate
    )

    # Step terms Σ_t (∂step_t/∂θ)ᵀ λ_t (and the input cotangents), all steps at once.
    if _any(p_theta) or _any(p_inputs):

        def block_steps(th_d, x_d):
            th = eqx.combine(th_d, th_rest)
            xs = eqx.combine(x_d, x_rest)
            return jax.vmap(lambda h, inp: _step(th, h, inp))(hs_prev, xs)

        _, step_vjp = jax.vjp(block_steps, th_d, x_d)
        ct_th_step, ct_inputs = step_vjp(lams)
        ct_theta = _add(ct_th_loss, ct_th_step)
    else:
        ct_theta, ct_inputs = ct_th_loss, x_d
    return c_start, (ct_theta, ct_inputs, ct_targets, ct_weights)


def _add(a, b):
    return jtu.tree_map(lambda x, y: x + y, a, b)


def _slice(tree, start, size):
    if isinstance(start, int):
        return jtu.tree_map(lambda x: x[start : start + size], tree)
    return jtu.tree_map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size), tree)


def _stretch_backward(
    theta, perturbed, h_start, hs, inputs, targets, weights, c_end, gbar, s0, truncate
):
    """The backward pass over the steps `s0+1 … s0+L` starting from the state
    `h_start`: the whole sequence, or one checkpoint segment. `hs`: the stored states
    `h_{s0+1} … h_{s0+L}`, or `None` to recompute them from `h_start`.

    The stretch is processed in blocks of `_BLOCK` steps (a first, shorter block
    takes the remainder), last block first. Returns as `_block_backward`."""
    if hs is None:
        _, hs, _ = _rollout(theta, h_start, inputs, targets, weights, store_states=True)
    L = hs.shape[0]
    C = min(_BLOCK, L)
    nb, rem = divmod(L, C)
    data = (inputs, targets, weights)

    def state_before(start):
        prev = jax.lax.dynamic_index_in_dim(
            hs, jnp.maximum(start - 1, 0), keepdims=False
        )
        return jnp.where(start == 0, h_start, prev)

    def block(carry, j):
        c, acc = carry
        start = rem + j * C
        x, y, w = _slice(data, start, C)
        c, (ct_th, ct_x, ct_y, ct_w) = _block_backward(
            theta, perturbed, state_before(start), _slice(hs, start, C),
            x, y, w, c, gbar, s0 + start, truncate,
        )  # fmt: skip
        acc = ct_th if acc is None else _add(acc, ct_th)
        return (c, acc), (ct_x, ct_y, ct_w)

    if nb == 1:
        (c, ct_theta), (ct_x, ct_y, ct_w) = block((c_end, None), 0)
        ct_x, ct_y, ct_w = jtu.tree_map(lambda z: z[None], (ct_x, ct_y, ct_w))
    else:
        acc0 = jtu.tree_map(jnp.zeros_like, _filter(theta, perturbed[0]))
        (c, ct_theta), (ct_x, ct_y, ct_w) = jax.lax.scan(
            block, (c_end, acc0), jnp.arange(nb), reverse=True
        )
    # (nb, C, ...) -> (nb C, ...)
    ct_x, ct_y, ct_w = jtu.tree_map(
        lambda z: z.reshape((nb * C,) + z.shape[2:]), (ct_x, ct_y, ct_w)
    )
    if rem:
        x, y, w = _slice(data, 0, rem)
        c, (th_r, x_r, y_r, w_r) = _block_backward(
            theta, perturbed, h_start, hs[:rem], x, y, w, c, gbar, s0, truncate
        )
        ct_theta = _add(ct_theta, th_r)
        ct_x, ct_y, ct_w = jtu.tree_map(
            lambda r, z: jnp.concatenate([r, z], axis=0),
            (x_r, y_r, w_r),
            (ct_x, ct_y, ct_w),
        )
    return c, (ct_theta, ct_x, ct_y, ct_w)


def _segments(T: int, checkpoints: int) -> tuple[int, int, int]:
    """`(L, q, r)`: `q` full segments of `L = ⌈T/k⌉` steps and a tail of `r < L`."""
    L = -(-T // checkpoints)
    q = T // L
    return L, q, T - q * L


def _split_time(tree, q, L):
    """The first `q L` steps as `(q, L, ...)`, and the remaining tail."""
    head = jtu.tree_map(lambda x: x[: q * L].reshape((q, L) + x.shape[1:]), tree)
    tail = jtu.tree_map(lambda x: x[q * L :], tree)
    return head, tail


def _join_time(head, tail, q, L):
    """Inverse of `_split_time` (for cotangents; `None` stays `None`)."""
    if head is None:
        return None
    head = jtu.tree_map(lambda h: h.reshape((q * L,) + h.shape[2:]), head)
    if tail is None:
        return head
    return jtu.tree_map(lambda h, t: jnp.concatenate([h, t], axis=0), head, tail)


@eqx.filter_custom_vjp
def _bptt_loss(vjp_arg, truncate, checkpoints):
    theta, h0, inputs, targets, weights = vjp_arg
    _, _, ls = _rollout(theta, h0, inputs, targets, weights, store_states=False)
    return jnp.sum(ls)


@_bptt_loss.def_fwd
def _bptt_loss_fwd(perturbed, vjp_arg, truncate, checkpoints):
    theta, h0, inputs, targets, weights = vjp_arg
    T = _num_steps(weights)
    if checkpoints is None:
        _, hs, ls = _rollout(theta, h0, inputs, targets, weights, store_states=True)
        return jnp.sum(ls), hs
    L, q, r = _segments(T, checkpoints)
    (xs_h, ys_h, ws_h), (xs_t, ys_t, ws_t) = _split_time(
        (inputs, targets, weights), q, L
    )

    def segment(h, seg):
        x, y, w = seg
        h_end, _, ls = _rollout(theta, h, x, y, w, store_states=False)
        return h_end, (h, jnp.sum(ls))

    h, (starts, seg_losses) = jax.lax.scan(segment, h0, (xs_h, ys_h, ws_h))
    total = jnp.sum(seg_losses)
    if r:
        _, _, ls = _rollout(theta, h, xs_t, ys_t, ws_t, store_states=False)
        total = total + jnp.sum(ls)
    return total, (starts, h)


@_bptt_loss.def_bwd
def _bptt_loss_bwd(residuals, gbar, perturbed, vjp_arg, truncate, checkpoints):
    theta, h0, inputs, targets, weights = vjp_arg
    if gbar is None:
        return jtu.tree_map(lambda _: None, perturbed)
    p_theta, p_h0, p_inputs, p_targets, p_weights = perturbed
    T = _num_steps(weights)
    c_end = jnp.zeros_like(h0)
    if checkpoints is None:
        c0, (ct_theta, ct_x, ct_y, ct_w) = _stretch_backward(
            theta, perturbed, h0, residuals, inputs, targets, weights,
            c_end, gbar, 0, truncate,
        )  # fmt: skip
    else:
        starts, h_tail = residuals
        L, q, r = _segments(T, checkpoints)
        (xs_h, ys_h, ws_h), (xs_t, ys_t, ws_t) = _split_time(
            (inputs, targets, weights), q, L
        )
        c = c_end
        tail_cts = None
        if r:
            c, tail_cts = _stretch_backward(
                theta, perturbed, h_tail, None, xs_t, ys_t, ws_t,
                c, gbar, q * L, truncate,
            )  # fmt: skip

        def segment(carry, seg):
            c, acc = carry
            j, h_start, x, y, w = seg
            c, (ct_th, ct_x, ct_y, ct_w) = _stretch_backward(
                theta, perturbed, h_start, None, x, y, w, c, gbar, j * L, truncate
            )
            acc = jtu.tree_map(lambda a, b: a + b, acc, ct_th)
            return (c, acc), (ct_x, ct_y, ct_w)

        acc0 = jtu.tree_map(jnp.zeros_like, _filter(theta, p_theta))
        (c0, ct_theta), (ct_x, ct_y, ct_w) = jax.lax.scan(
            segment, (c, acc0), (jnp.arange(q), starts, xs_h, ys_h, ws_h), reverse=True
        )
        if tail_cts is not None:
            ct_theta = jtu.tree_map(lambda a, b: a + b, ct_theta, tail_cts[0])
            _, t_x, t_y, t_w = tail_cts
        else:
            t_x = t_y = t_w = None
        ct_x = _join_time(ct_x, t_x, q, L)
        ct_y = _join_time(ct_y, t_y, q, L)
        ct_w = _join_time(ct_w, t_w, q, L)
    ct_h0 = c0 if p_h0 else None
    return (
        _or_nones(ct_theta, theta),
        ct_h0,
        _or_nones(ct_x, inputs),
        _or_nones(ct_y, targets),
        _or_nones(ct_w, weights),
    )


def _or_nones(ct, tree):
    return jtu.tree_map(lambda _: None, tree) if ct is None else ct


# ---------------------------------------------------------------------------------
# The adjoint trajectory, for analysis.


def adjoint_trajectory(
    model,
    xs: Float[ArrayLike, "time *batch input"],
    ys: PyTree[ArrayLike],
    *,
    loss=mse,
    weights: Float[ArrayLike, "time *batch"] | None = None,
    h0: Float[ArrayLike, "*batch state"] | None = None,
    t0: float = 0.0,
    truncate: int | None = None,
) -> Float[Array, "time *batch state"]:
    """The adjoint states `λ_t = dL/dh_t`, `t = 1 … T`, of one sequence's loss
    `L = Σ_t a_t l(output(h_t), y_t)`, by the BPTT recursion
    `λ_T = a_T ∂l_T/∂h_T`, `λ_t = a_t ∂l_t/∂h_t + J_{t+1}ᵀ λ_{t+1}`.

    `λ_t` is the total sensitivity of the loss to a perturbation of the state
    `h_t` (through its own loss term and every later step); `‖λ_t‖` against
    `T - t` shows how gradients vanish or explode with the lag.

    **Arguments:** as `rnnode.sequence_loss`: a `Model`, time-major inputs
    `(time, input)` and targets, the per-step `loss`, time `weights` (default
    `1/T`), initial state `h0` and start time `t0`; `truncate` as in `BPTT`.

    A batch `(time, batch, input)` is handled sequence by sequence (as if by
    `jax.vmap`): the result is then `(time, batch, state)`, and each sequence's `λ`
    is that of its own loss (not of the batch mean used by `sequence_loss`, which is
    `1/batch` times it).

    **Returns:** `λ` with shape `(time, state)` (or `(time, batch, state)`).
    """
    from .._model import check_inputs

    _check_count("truncate", truncate)
    xs = check_inputs(model, xs)
    T = xs.shape[0]
    batched = xs.ndim == 3
    lead = xs.shape[:2] if batched else xs.shape[:1]
    ys = jtu.tree_map(jnp.asarray, ys)
    for leaf in jtu.tree_leaves(ys):
        if leaf.shape[: len(lead)] != lead:
            raise ValueError(
                f"targets must share the inputs' leading (time[, batch]) axes "
                f"{lead}, got shape {leaf.shape}"
            )
    if weights is None:
        weights = jnp.full((T,), 1.0 / T, dtype=xs.dtype)
    weights = jnp.asarray(weights, dtype=xs.dtype)
    if weights.shape not in ((T,), lead):
        raise ValueError(
            f"`weights` must have shape ({T},) or {lead}, got {weights.shape}"
        )

    def step(params, h, inp):
        return params.step(h, *inp)

    def step_loss(params, h, y):
        return loss(params.output(h), y)

    def one(x, y, a, h):
        h = model.init_state() if h is None else h
        h = jnp.asarray(h, dtype=x.dtype)
        theta = (model, step, step_loss)
        inputs = model.step_inputs(x, t0)
        _, hs, _ = _rollout(theta, h, inputs, y, a, store_states=True)
        weighted = lambda hs: jnp.sum(
            jax.vmap(lambda h, y_t, a_t: a_t * _loss(theta, h, y_t))(hs, y, a)
        )
        _, loss_vjp = jax.vjp(weighted, hs)
        (g,) = loss_vjp(jnp.ones((), dtype=hs.dtype))
        _, lams, _ = _adjoints(theta, h, hs, inputs, g, jnp.zeros_like(h), 0, truncate)
        return lams

    if not batched:
        return one(xs, ys, weights, h0)
    w_axis = 1 if weights.ndim == 2 else None
    h_axis = None if h0 is None or jnp.ndim(h0) == 1 else 0
    return jax.vmap(one, in_axes=(1, 1, w_axis, h_axis), out_axes=1)(
        xs, ys, weights, h0
    )
