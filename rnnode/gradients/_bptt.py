"""Backpropagation through time (BPTT) as an explicit adjoint recursion.

For the recurrence and loss of `AbstractGradient.loss`,

    h_t = step(θ, h_{t-1}, x_t),   L = Σ_{t=1}^T a_t l(θ, h_t, y_t),

the adjoint (the total derivative of `L` with respect to the state `h_t`) obeys

    λ_T = a_T ∂l_T/∂h_T,   λ_t = a_t ∂l_t/∂h_t + J_{t+1}ᵀ λ_{t+1},   J_{t+1} = ∂h_{t+1}/∂h_t,

and the gradients are

    dL/dθ   = Σ_t (∂step_t/∂θ)ᵀ λ_t + Σ_t a_t ∂l_t/∂θ,
    dL/dh_0 = J_1ᵀ λ_1.

`BPTT` implements exactly this as a custom VJP: the forward pass is a `lax.scan`
storing the states (or, with checkpoints, only some of them); the backward pass a
reverse `lax.scan` that takes, at each step, one `jax.vjp` of the step with
respect to the state and the parameters together (`J` is never formed): its state
part is `J_tᵀ λ_t`, carried to the previous step, and its parameter part
`(∂step_t/∂θ)ᵀ λ_t` is accumulated in the carry.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, PyTree

from ._base import AbstractBatchGradient


def _check_count(name: str, value) -> None:
    if value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < 1:
        raise ValueError(
            f"`BPTT({name}=...)` must be None or an integer >= 1, got {value!r}"
        )


class BPTT(AbstractBatchGradient):
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
      pass (memory `O(T n)`). An integer `k ≥ 1` stores only the first state of
      each of at most `k` segments of `L = ⌈T/k⌉` steps (when `L` does not divide
      `T`, the first segment starts with a few masked steps that leave the state
      unchanged), and the backward pass recomputes the states of one segment at a
      time from its stored state: memory `O(k n + (T/k) n)` for one extra forward
      pass. `k ≈ √T` minimises it (`O(√T n)`); this is what lets a sequence of 10⁶
      steps be trained where storing every state would not fit.

    Gradients flow to every floating-point array in the model (including a learnt
    initial state, and arrays a `loss` function closes over) and also to the inputs,
    float targets and the time weights when those are differentiated. For a
    `Diffrax` integrator each per-step vector-Jacobian product goes through the
    integrator's own `adjoint=` (e.g. `diffrax.RecursiveCheckpointAdjoint()` or
    `diffrax.BacksolveAdjoint()`).

    Works under `jax.jit`, `jax.vmap`, `jax.grad`, `vmap(grad)` and `grad(vmap)`.
    Reverse mode only: forward-mode differentiation (`jax.jvp`, `jax.jacfwd`) of a
    `BPTT` loss is not supported (use `Autodiff` or `RTRL`).

    See also `rnnode.analysis.adjoint_trajectory`, which returns the `λ_t` themselves.
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
        the sequences' states, so that the custom VJP sees the whole batch: each
        step's VJP contracts the parameter gradient over the batch, and a single
        parameter gradient is accumulated (under `jax.vmap` of a custom VJP every
        sequence would carry its own copy of it through the reverse scan). The
        result equals `jnp.mean(jax.vmap(loss)(...))`, gradients included.
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
#
# Checkpoints. With `k` checkpoints the sequence is cut into segments of
# `L = ⌈T/k⌉` steps. When `L` does not divide `T`, the sequence is padded at the
# front with `p` masked steps that leave the state at `h_0`
# (`h = where(valid, step(h), h)`, zero weight), so that every segment has the
# same length and one loop body is compiled. Step `s = 1 … T` of the sequence is
# padded step `s + p`.


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


def _add(a, b):
    return jtu.tree_map(lambda x, y: x + y, a, b)


def _filter(tree, flags):
    return jtu.tree_map(lambda x, f: x if f else None, tree, flags)


def _any(flags) -> bool:
    return any(jtu.tree_leaves(flags))


def _or_nones(ct, tree):
    return jtu.tree_map(lambda _: None, tree) if ct is None else ct


def _plan(T: int, checkpoints: int | None) -> tuple[int, int]:
    """`(p, L)`: front padding and segment length, `L | p + T` (`p = 0`, `L = T`
    without checkpoints)."""
    if checkpoints is None:
        return 0, T
    L = -(-T // checkpoints)
    return L * -(-T // L) - T, L


def _pad(inputs, targets, weights, p):
    """Prepend `p` masked steps (copies of the first inputs and targets, weight 0);
    returns the padded data and the mask (`None` when `p = 0`)."""
    if p == 0:
        return inputs, targets, weights, None

    def front(x):
        return jnp.concatenate([jnp.repeat(x[:1], p, axis=0), x], axis=0)

    inputs, targets = jtu.tree_map(front, (inputs, targets))
    weights = jnp.concatenate(
        [jnp.zeros((p,) + weights.shape[1:], weights.dtype), weights]
    )
    valid = jnp.arange(weights.shape[0]) >= p
    return inputs, targets, weights, valid


def _masked_step(theta, h, inp, v):
    h_next = _step(theta, h, inp)
    return h_next if v is None else jnp.where(v, h_next, h)


def _rollout(
    theta, h0, inputs, targets, weights, valid, *, store_states: bool, losses=True
):
    """Forward scan: final state, the states after each step (if `store_states`)
    and the per-step weighted losses `a_t l_t` (if `losses`)."""

    def body(h, xs):
        inp, y, a, v = xs
        h = _masked_step(theta, h, inp, v)
        l_t = a * _loss(theta, h, y) if losses else None
        return h, (h if store_states else None, l_t)

    h_last, (hs, ls) = jax.lax.scan(body, h0, (inputs, targets, weights, valid))
    return h_last, hs, ls


def _adjoints(theta, h0, hs, inputs, g, truncate):
    """The adjoints `λ_1 … λ_T` alone, by a reverse scan: `hs` the states after each
    step, `g` the direct terms `a_t ∂l_t/∂h_t`."""
    hs_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    s = jnp.arange(1, hs.shape[0] + 1)

    def body(c, xs):
        g_t, h_prev, inp, s_t = xs
        if truncate is not None:  # no gradient into h_t from step t+1 if k | t
            c = jnp.where(s_t % truncate == 0, jnp.zeros_like(c), c)
        lam = g_t + c
        _, vjp = jax.vjp(lambda h: _step(theta, h, inp), h_prev)
        (c,) = vjp(lam)
        return c, lam

    _, lams = jax.lax.scan(
        body, jnp.zeros_like(h0), (g, hs_prev, inputs, s), reverse=True
    )
    return lams


def _stretch_backward(
    theta, perturbed, h_start, hs, data, c_end, gbar, u0, p, truncate
):
    """The backward pass over the (padded) steps `u0+1 … u0+len(hs)`: a reverse
    scan over the stored states `hs` (and `h_start` before them), `data =
    (inputs, targets, weights, valid)` for these steps, starting from the
    cotangent `c_end` that reaches the last state from later steps.

    At each step one VJP of the weighted loss term and one VJP of the step, each
    with respect to the state and the parameters at once (`jax.vjp` once per
    step); the parameter gradient accumulates in the carry.

    Returns `(J_{u0+1}ᵀ λ_{u0+1}, (ct_theta, ct_inputs, ct_targets, ct_weights))`
    with per-step cotangents stacked, `None` where not perturbed."""
    inputs, targets, weights, valid = data
    p_theta, _, p_inputs, p_targets, p_weights = perturbed
    th_d, th_rest = eqx.partition(theta, p_theta)
    diff_w = _any(p_weights)
    n = hs.shape[0]

    def body(carry, xs):
        c, acc = carry
        i, inp, y, a, v = xs
        h = hs[i]
        h_prev = jnp.where(i == 0, h_start, hs[jnp.maximum(i - 1, 0)])
        s_t = u0 - p + i + 1
        y_d, y_rest = eqx.partition(y, p_targets)
        x_d, x_rest = eqx.partition(inp, p_inputs)

        def step_loss(th_d, h, y_d, a_d):
            th = eqx.combine(th_d, th_rest)
            return (a if a_d is None else a_d) * _loss(th, h, eqx.combine(y_d, y_rest))

        _, vjp = jax.vjp(step_loss, th_d, h, y_d, a if diff_w else None)
        ct_th_l, g, ct_y, ct_a = vjp(gbar)
        if truncate is not None:
            c = jnp.where((s_t > 0) & (s_t % truncate == 0), jnp.zeros_like(c), c)
        lam = g + c
        if v is not None:
            lam_step = jnp.where(v, lam, jnp.zeros_like(lam))
        else:
            lam_step = lam

        def step(th_d, h, x_d):
            return _step(eqx.combine(th_d, th_rest), h, eqx.combine(x_d, x_rest))

        _, vjp = jax.vjp(step, th_d, h_prev, x_d)
        ct_th_s, c_new, ct_x = vjp(lam_step)
        if v is not None:
            c_new = jnp.where(v, c_new, lam)
        return (c_new, _add(acc, _add(ct_th_l, ct_th_s))), (ct_x, ct_y, ct_a)

    acc0 = jtu.tree_map(jnp.zeros_like, _filter(theta, p_theta))
    (c, ct_theta), ct_data = jax.lax.scan(
        body,
        (c_end, acc0),
        (jnp.arange(n), inputs, targets, weights, valid),
        reverse=True,
    )
    return c, (ct_theta, *ct_data)


def _segment_starts(theta, h0, data, q, L):
    """Forward pass over `q` segments of `L` steps storing only each segment's
    first state: `(loss, starts)`."""

    def segment(h, seg):
        x, y, w, v = seg
        h_end, _, ls = _rollout(theta, h, x, y, w, v, store_states=False)
        return h_end, (h, jnp.sum(ls))

    split = jtu.tree_map(lambda z: z.reshape((q, L) + z.shape[1:]), data)
    _, (starts, seg_losses) = jax.lax.scan(segment, h0, split)
    return jnp.sum(seg_losses), starts


@eqx.filter_custom_vjp
def _bptt_loss(vjp_arg, truncate, checkpoints):
    theta, h0, inputs, targets, weights = vjp_arg
    _, _, ls = _rollout(theta, h0, inputs, targets, weights, None, store_states=False)
    return jnp.sum(ls)


@_bptt_loss.def_fwd
def _bptt_loss_fwd(perturbed, vjp_arg, truncate, checkpoints):
    theta, h0, inputs, targets, weights = vjp_arg
    T = weights.shape[0]
    p, L = _plan(T, checkpoints)
    data = _pad(inputs, targets, weights, p)
    if checkpoints is None:
        _, hs, ls = _rollout(theta, h0, *data, store_states=True)
        return jnp.sum(ls), hs
    return _segment_starts(theta, h0, data, (T + p) // L, L)


@_bptt_loss.def_bwd
def _bptt_loss_bwd(residuals, gbar, perturbed, vjp_arg, truncate, checkpoints):
    theta, h0, inputs, targets, weights = vjp_arg
    if gbar is None:
        return jtu.tree_map(lambda _: None, perturbed)
    T = weights.shape[0]
    p, L = _plan(T, checkpoints)
    data = _pad(inputs, targets, weights, p)
    c_end = jnp.zeros_like(h0)
    if checkpoints is None:
        c0, (ct_theta, *ct_data) = _stretch_backward(
            theta, perturbed, h0, residuals, data, c_end, gbar, 0, p, truncate
        )
    else:
        starts = residuals
        q = (T + p) // L
        split = jtu.tree_map(lambda z: z.reshape((q, L) + z.shape[1:]), data)

        def segment(carry, seg):
            c, acc = carry
            j, h_start, seg_data = seg
            _, hs, _ = _rollout(
                theta, h_start, *seg_data, store_states=True, losses=False
            )
            c, (ct_th, *ct_seg) = _stretch_backward(
                theta, perturbed, h_start, hs, seg_data, c, gbar, j * L, p, truncate
            )
            return (c, _add(acc, ct_th)), ct_seg

        acc0 = jtu.tree_map(jnp.zeros_like, _filter(theta, perturbed[0]))
        (c0, ct_theta), ct_data = jax.lax.scan(
            segment, (c_end, acc0), (jnp.arange(q), starts, split), reverse=True
        )
        ct_data = jtu.tree_map(lambda z: z.reshape((q * L,) + z.shape[2:]), ct_data)
    ct_x, ct_y, ct_w = jtu.tree_map(lambda z: z[p:], ct_data[:3])
    return (
        _or_nones(ct_theta, theta),
        c0 if perturbed[1] else None,
        _or_nones(ct_x, inputs),
        _or_nones(ct_y, targets),
        _or_nones(ct_w, weights),
    )
