"""The compiled functions of a run: the training chunk (batch, or online RTRL)
and the evaluation of a model on a split.

One call of the compiled "chunk" function runs up to `train.steps_per_call`
optimiser steps as a `lax.scan` (batch sampling from the training data on the
device, with a carried RNG key, the loss and its gradient by the configured
method, the optax update). The number of steps actually taken is an argument,
so the chunk compiles once whatever the intervals between evaluations and
checkpoints. A step whose loss or gradient is not finite is not applied, and
the run stops with `TrainingDiverged`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

from .._equilibrium import equilibrium
from . import _sharding
from ._build import step_loss

_TRACES = {"chunk": 0, "online": 0}
"""How many times the training functions were traced (tests check it stays 1)."""


def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _batch_constraint(mesh, tree):
    if mesh is None:
        return tree
    split = _sharding.batch_sharding(mesh, axis=1)
    repl = _sharding.replicated_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, split if x.ndim >= 2 else repl),
        tree,
    )


def make_chunk(static, opt, loss_fn, *, steps_per_call, batch_size, dtype, mesh):
    """The jitted `chunk(params, opt_state, key, n, data) -> (carry, losses)`:
    `n <= steps_per_call` optimiser steps as one `lax.scan`."""

    def sample(data, key):
        xs, ys, ws = data
        N = xs.shape[1]
        if batch_size >= N:
            idx = jr.permutation(key, N)
        else:
            idx = jr.choice(key, N, (batch_size,), replace=False)
        batch = (xs[:, idx], ys[:, idx], ws[:, idx] if ws.ndim == 2 else ws)
        return _batch_constraint(mesh, batch)

    def one_step(params, opt_state, key, data):
        key, sub = jr.split(key)
        xb, yb, wb = sample(data, sub)

        def f(p):
            # the batch's noise (noisy models only) from the batch's own key
            return loss_fn(eqx.combine(p, static), xb, yb, wb, jr.fold_in(sub, 1))

        loss, grads = jax.value_and_grad(f)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ok = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(params)
        return params, opt_state, key, ok, loss.astype(dtype)

    def chunk(params, opt_state, key, n, data):
        _TRACES["chunk"] += 1

        def body(carry, i):
            params, opt_state, key, bad = carry
            new_params, new_opt, new_key, ok, loss = one_step(
                params, opt_state, key, data
            )
            # steps past `n`, and every step after a non-finite one, change
            # nothing: the state stays the last good one
            active = (i < n) & ~bad
            keep = active & ok
            params, opt_state = _tree_where(
                keep, (new_params, new_opt), (params, opt_state)
            )
            key = jnp.where(active, new_key, key)
            failed = active & ~ok
            return (params, opt_state, key, bad | failed), (
                jnp.where(active, loss, jnp.nan),
                failed,
            )

        carry = (params, opt_state, key, jnp.asarray(False))
        return jax.lax.scan(body, carry, jnp.arange(steps_per_call))

    return eqx.filter_jit(chunk)


def make_online_chunk(
    static,
    opt,
    method,
    per_step,
    *,
    steps_per_call,
    batch_size,
    dtype,
    mesh,
    reset_every=None,
):
    """Online learning with any online method (`RTRL`, `SnAp`, `UORO`, `KFRTRL`,
    `RFLO`, `EProp`): every step consumes one time step of `batch_size` parallel
    streams (training sequences), updates the weights with that step's gradient
    (estimate), and carries the method's online state on; at the end of a
    sequence new ones are drawn and the states are restarted.

    `init_states(params, batch, key)` starts one online state per stream, each
    stochastic method's with its own key split from `key` (deterministic methods
    ignore it). The keys come from the run's key and live on in the online states,
    which are checkpointed, so a resumed run is bit-identical. With
    `reset_every = k`, every `k` steps of a stream the states and traces start
    afresh (`method.reset`, a washout) and the keys go on."""

    def draw(data, key):
        xs, ys, ws = data
        N = xs.shape[1]
        idx = (
            jr.permutation(key, N)
            if batch_size >= N
            else jr.choice(key, N, (batch_size,), replace=False)
        )
        wb = (
            ws[:, idx]
            if ws.ndim == 2
            else jnp.broadcast_to(ws[:, None], (ws.shape[0], idx.shape[0]))
        )
        return _batch_constraint(mesh, (xs[:, idx], ys[:, idx], wb))

    def init_states(params, batch, key):
        model = eqx.combine(params, static)
        h0 = None if model.learn_initial_state else model.init_state().astype(dtype)
        return method.init(model, h0, key=key, streams=batch[0].shape[1])

    def one_step(carry, data):
        params, opt_state, key, bad, stream, rstate, t = carry
        model = eqx.combine(params, static)
        xs, ys, ws = stream
        T = xs.shape[0]
        x_t, y_t, a_t = xs[t], ys[t], ws[t]
        x_next = xs[jnp.minimum(t + 1, T - 1)]

        new_rstate, loss, grads = method.step(
            model, rstate, x_t, y_t, loss=per_step, weight=a_t, x_next=x_next
        )
        # the mean over the streams of a_t dl_t/dθ, scaled by T so that uniform
        # weights a_t = 1/T give the plain per-step gradient
        grads = eqx.filter(grads, eqx.is_inexact_array)
        grads = jax.tree.map(lambda g: (T * g).astype(g.dtype), grads)
        loss = T * loss
        updates, new_opt = opt.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        ok = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_params)
        params, opt_state = _tree_where(ok, (new_params, new_opt), (params, opt_state))
        t = t + 1
        key, sub = jr.split(key)

        def restart(_):
            s = draw(data, sub)
            return s, init_states(params, s, states_key(sub)), jnp.asarray(0, t.dtype)

        def go_on(_):
            if reset_every is None:
                return stream, new_rstate, t
            new_model = eqx.combine(params, static)
            h0 = None if new_model.learn_initial_state else new_model.init_state()

            def washout(s):
                return method.reset(
                    new_model, s, None if h0 is None else h0.astype(dtype)
                )

            rstate = jax.lax.cond(
                t % reset_every == 0, washout, lambda s: s, new_rstate
            )
            return stream, rstate, t

        stream, rstate, t = jax.lax.cond(t >= T, restart, go_on, None)
        carry = (params, opt_state, key, ~ok, stream, rstate, t)
        return carry, (loss.astype(dtype), ~ok)

    def chunk(params, opt_state, key, n, data, stream, rstate, t):
        _TRACES["online"] += 1

        def body(carry, i):
            active = (i < n) & ~carry[3]
            return jax.lax.cond(
                active,
                lambda c: one_step(c, data),
                lambda c: (c, (jnp.asarray(jnp.nan, dtype), jnp.asarray(False))),
                carry,
            )

        carry = (params, opt_state, key, jnp.asarray(False), stream, rstate, t)
        return jax.lax.scan(body, carry, jnp.arange(steps_per_call))

    return eqx.filter_jit(chunk), eqx.filter_jit(draw), eqx.filter_jit(init_states)


def states_key(key):
    """The key that starts the online states of the streams drawn with `key`
    (folded in, so that the draws themselves are as they always were)."""
    return jr.fold_in(key, 1)


# ------------------------------------------------------------- evaluation


def _rollout(model, xs, kind, eq=None):
    if kind == "equilibrium":

        def one(x):
            h = equilibrium(model, x, **(eq or {}))
            return h, model.output(h)

        hs, outs = jax.vmap(one)(xs[0])
        return hs[None], outs[None]
    h0 = model.init_state().astype(xs.dtype)
    return model.rollout(xs, h0=h0)


def _loss_of(outputs, ys, ws, name):
    per_step = step_loss(name)
    ls = jax.vmap(jax.vmap(per_step))(outputs, ys)  # (T, N)
    w = ws if ws.ndim == 2 else ws[:, None]
    return jnp.mean(jnp.sum(w * ls, axis=0))


@eqx.filter_jit
def _evaluate(model, xs, ys, ws, kind, name, eq=None):
    hs, outs = _rollout(model, xs, kind, eq)
    return hs, outs, _loss_of(outs, ys, ws, name)


def eval_loss(outputs, ys, ws, name: str) -> float:
    """The weighted loss `mean_N Σ_t a_t l(o_t, y_t)` of given outputs."""
    return float(eqx.filter_jit(_loss_of)(outputs, ys, ws, name))
