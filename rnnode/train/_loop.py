"""The training loop: a config in, a run directory of results out.

One call of the compiled "chunk" function runs up to `train.steps_per_call`
optimiser steps as a `lax.scan` (batch sampling from the training data on the
device, with a carried RNG key, the loss and its gradient by the configured
method, the optax update). The number of steps actually taken is an argument,
so the chunk compiles once whatever the intervals between evaluations and
checkpoints. A step whose loss or gradient is not finite is not applied, and
the run stops with `TrainingDiverged`.
"""

from __future__ import annotations

import collections
import json
import sys
import time
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import rnnode

from . import _checkpoint as ckpt, _metrics as mt
from ._config import (
    CELLS,
    DIFFRAX_SOLVERS,
    Config,
    ConfigError,
    _one_line,
    check_against_task,
    config_to_yaml,
    gradient_class,
    load_config,
    parse_yaml,
    validate_config,
)

try:  # the data-parallel helpers (issue 6)
    from . import _sharding
except ImportError:  # pragma: no cover - only while that module is missing
    _sharding = None

_TRACES = {"chunk": 0, "online": 0}
"""How many times the training functions were traced (tests check it stays 1)."""


class TrainingDiverged(RuntimeError):
    """The loss or its gradient became NaN or infinite, or an iterative solve inside
    it (an equilibrium, its adjoint) did not converge; the run was stopped."""


_CONFIG_HINT = (
    " In a config: the forward solve is the `equilibrium:` section "
    "(equilibrium.max_steps, equilibrium.damping, equilibrium.solver=anderson, "
    "equilibrium.step_size), the adjoint takes gradient.max_steps, gradient.damping "
    "and gradient.tol."
)


class EvaluationFailed(RuntimeError):
    """`evaluate` could not compute a saved run's metrics: an iterative solve (an
    equilibrium) did not converge on the test set. Nothing was written."""


def _runtime_message(e: Exception) -> str:
    """The message of an `equinox.EquinoxRuntimeError` (a failed `eqx.error_if`
    check), without equinox's debugging advice."""
    text = str(e)
    tag = "EquinoxRuntimeError: "
    if tag in text:
        text = text[text.rindex(tag) + len(tag) :]
    return text.split("\n\n")[0].strip()


def _solve_failed(e: Exception, step: int, run_dir, main: bool) -> TrainingDiverged:
    """A `TrainingDiverged` from an `equinox.EquinoxRuntimeError` (a failed
    `eqx.error_if` check, e.g. a non-converging equilibrium) raised near `step`;
    writes the run's summary."""
    text = _runtime_message(e)
    where = _last_checkpoint(run_dir)
    msg = (
        f"training stopped after step {step}: {text}{_CONFIG_HINT} "
        f"{where[0].upper()}{where[1:]}."
    )
    return _stopped(run_dir, main, "failed", msg, step)


def _last_checkpoint(run_dir) -> str:
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        return "no checkpoint had been written yet"
    return f"the last good checkpoint is {found[0][1]} (step {found[0][0]})"


def _stopped(run_dir, main: bool, status: str, msg: str, step: int):
    """Record a stopped run in its summary; the error to raise."""
    if main:
        mt.write_summary(
            run_dir,
            {"status": status, "message": msg, "step": step, "run_dir": str(run_dir)},
        )
    return TrainingDiverged(msg)


class First(eqx.Module):
    """Readout `o = h[:size]`: the first `size` observed values (e.g. the position
    of an oscillator's `(x, v)`)."""

    size: int = eqx.field(static=True)

    def __call__(self, h):
        return h[: self.size]


# --------------------------------------------------------------- building


def make_task(cfg: Config):
    """The config's task (`rnnode.data.make_task`)."""
    try:
        from rnnode import data
    except ImportError as e:  # pragma: no cover
        raise RuntimeError(f"rnnode.data is not available: {e}") from None
    try:
        return data.make_task(cfg.task.name, dict(cfg.task.options), seed=cfg.task.seed)
    except (ValueError, TypeError) as e:
        raise ConfigError([f"task: {_one_line(e)}"]) from None


def build_integrator(ic):
    if ic is None:
        return None
    dt = float(ic.dt)
    if ic.name == "euler":
        return rnnode.Euler(dt=dt, interpolation=ic.interpolation)
    if ic.name == "heun":
        return rnnode.Heun(dt=dt, interpolation=ic.interpolation)
    if ic.name == "rk4":
        return rnnode.RK4(dt=dt, interpolation=ic.interpolation)
    import diffrax

    solver = getattr(diffrax, DIFFRAX_SOLVERS[ic.solver])()
    if ic.rtol is not None:
        controller = diffrax.PIDController(rtol=ic.rtol, atol=ic.atol)
    else:
        controller = diffrax.ConstantStepSize()
    return rnnode.Diffrax(
        dt=dt,
        solver=solver,
        stepsize_controller=controller,
        dt0=ic.dt0,
        max_steps=ic.max_steps,
        interpolation=ic.interpolation,
    )


def build_model(cfg: Config, task, key) -> rnnode.Model:
    """The model the config describes, sized for `task`, initialised from `key`."""
    m = cfg.model
    dkey, rkey = jr.split(key)
    opts = dict(m.options)
    n, inp = m.hidden_size, task.input_size
    try:
        if m.dynamics == "ctrnn":
            dyn = rnnode.CTRNN(
                n, inp, tau=m.tau, activation=m.activation, key=dkey, **opts
            )
        elif m.dynamics == "linear":
            dyn = rnnode.LinearExample(size=inp, **opts)
        elif m.dynamics == "oscillator":
            dyn = rnnode.DampedOscillator(**opts)
        elif m.dynamics == "elman":
            dyn = rnnode.ElmanRNN(n, inp, activation=m.activation, key=dkey, **opts)
        elif m.dynamics == "lstm":
            dyn = rnnode.LSTM(n, inp, key=dkey, **opts)
        else:
            dyn = rnnode.GRU(n, inp, key=dkey, **opts)
    except (ValueError, TypeError) as e:
        raise ConfigError([f"model.options: {_one_line(e)}"]) from None
    if m.readout == "linear":
        readout = rnnode.Linear(dyn.observe_size, task.output_size, key=rkey)
    elif m.readout == "first":
        readout = First(task.output_size)
    else:
        readout = None
    integrator = None if m.dynamics in CELLS else build_integrator(m.integrator)
    return rnnode.Model(
        dyn, integrator, readout, learn_initial_state=m.learn_initial_state
    )


def build_gradient(cfg: Config):
    g = cfg.gradient
    cls = gradient_class(g.name)
    if cls is None:
        raise ConfigError(
            [f"gradient.name: {g.name} is not available in this installation of rnnode"]
        )
    try:
        return cls(**g.options)
    except Exception as e:  # noqa: BLE001
        raise ConfigError([f"gradient: {_one_line(e)}"]) from None


def build_schedule(cfg: Config):
    o, s = cfg.optim, cfg.optim.schedule
    lr = float(o.lr)
    decay = int(s.decay_steps or cfg.train.steps)
    end = lr * s.end_factor
    if s.name == "constant":
        return lr
    if s.name == "cosine":
        return optax.cosine_decay_schedule(lr, decay, alpha=s.end_factor)
    if s.name == "linear":
        return optax.linear_schedule(lr, end, decay)
    if s.name == "exponential":
        return optax.exponential_decay(lr, decay, s.decay_rate)
    if s.warmup_steps >= decay and s.name == "warmup_cosine":
        raise ConfigError(
            [
                f"optim.schedule.warmup_steps: must be < the decay steps ({decay}), "
                f"got {s.warmup_steps}"
            ]
        )
    if s.name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, s.warmup_steps, decay, end_value=end
        )
    # warmup_constant
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, lr, max(s.warmup_steps, 1)),
            optax.constant_schedule(lr),
        ],
        [max(s.warmup_steps, 1)],
    )


def build_optimiser(cfg: Config) -> optax.GradientTransformation:
    o = cfg.optim
    try:
        opt = getattr(optax, o.name)(learning_rate=build_schedule(cfg), **o.options)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConfigError([f"optim: optax.{o.name}: {_one_line(e)}"]) from None
    if o.clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
    return opt


def _dtype(cfg: Config):
    return jnp.float64 if cfg.train.dtype == "float64" else jnp.float32


def _cast(tree, dtype):
    def f(x):
        if eqx.is_inexact_array(x) and x.dtype != dtype:
            return x.astype(dtype)
        return x

    return jax.tree.map(f, tree)


def loss_name(cfg: Config, task) -> str:
    return task.loss if cfg.loss.name == "task" else cfg.loss.name


def split_weights(cfg: Config, task, split) -> np.ndarray:
    T = split.xs.shape[0]
    w = cfg.loss.weights
    if w == "task":
        return np.asarray(split.weights)
    if w == "uniform":
        return np.full((T,), 1.0 / T)
    if w == "last":
        out = np.zeros((T,))
        out[-1] = 1.0
        return out
    dt = cfg.model.integrator.dt if cfg.model.integrator is not None else task.dt
    return np.full((T,), float(dt))


def split_arrays(cfg: Config, task, split, dtype):
    """`(xs, ys, weights)` of a split as device arrays of the run's dtype."""
    xs = jnp.asarray(split.xs, dtype=dtype)
    ys = split.ys
    ys = (
        jnp.asarray(ys, dtype=jnp.int32)
        if np.issubdtype(ys.dtype, np.integer)
        else jnp.asarray(ys, dtype=dtype)
    )
    ws = jnp.asarray(split_weights(cfg, task, split), dtype=dtype)
    return xs, ys, ws


def build_equilibrium(cfg: Config) -> dict:
    """The keyword arguments (`solver=`, `step_size=`) of `rnnode.equilibrium` from
    the config's `equilibrium:` section."""
    e = cfg.equilibrium
    common = dict(rtol=e.rtol, atol=e.atol, max_steps=e.max_steps, damping=e.damping)
    if e.solver == "anderson":
        solver = rnnode.Anderson(memory=e.memory, **common)
    else:
        solver = rnnode.FixedPointIteration(**common)
    return dict(solver=solver, step_size=e.step_size)


def make_loss_fn(cfg: Config, task, gradient):
    """`loss(model, xs, ys, weights) -> scalar` for a batch."""
    per_step = (
        rnnode.cross_entropy if loss_name(cfg, task) == "cross_entropy" else rnnode.mse
    )
    if task.kind == "equilibrium":
        eq_loss = getattr(rnnode, "equilibrium_loss", None)
        if eq_loss is None:
            raise ConfigError(
                [
                    "task.name: equilibrium tasks need rnnode.equilibrium_loss, which "
                    "is not available in this installation"
                ]
            )

        eq = build_equilibrium(cfg)

        def loss_fn(model, xs, ys, ws):
            return eq_loss(model, xs[0], ys[0], loss=per_step, gradient=gradient, **eq)

    else:

        def loss_fn(model, xs, ys, ws):
            return rnnode.sequence_loss(
                model, xs, ys, loss=per_step, weights=ws, gradient=gradient
            )

    return loss_fn


def _rollout(model, xs, kind, eq=None):
    if kind == "equilibrium":

        def one(x):
            h = rnnode.equilibrium(model, x, **(eq or {}))
            return h, model.output(h)

        hs, outs = jax.vmap(one)(xs[0])
        return hs[None], outs[None]
    h0 = model.init_state().astype(xs.dtype)
    return model.rollout(xs, h0=h0)


def _loss_of(outputs, ys, ws, name):
    per_step = rnnode.cross_entropy if name == "cross_entropy" else rnnode.mse
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


def fitted_params(model) -> dict | None:
    """The physical parameters of an oscillator or the linear example (to compare
    with a task's `info["true_params"]`); `None` for other dynamics."""
    dyn = model.dynamics
    if isinstance(dyn, rnnode.DampedOscillator):
        return {
            "mass": float(dyn.mass),
            "damping": float(dyn.damping),
            "stiffness": float(dyn.stiffness),
        }
    if isinstance(dyn, rnnode.LinearExample):
        w, b = np.asarray(dyn.w, dtype=float), np.asarray(dyn.b, dtype=float)
        return {"w": w.tolist(), "b": b.tolist(), "w_plus_b": (w + b).tolist()}
    return None


def num_params(model) -> int:
    return int(
        sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    )


# --------------------------------------------------------- compiled steps


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
            return loss_fn(eqx.combine(p, static), xb, yb, wb)

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
    static, opt, rtrl, per_step, *, steps_per_call, batch_size, dtype, mesh
):
    """Online RTRL: every step consumes one time step of `batch_size` parallel
    streams (training sequences), updates the weights with that step's RTRL
    gradient, and carries the sensitivities on; at the end of a sequence new ones
    are drawn and the state is reset."""

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

    def init_states(params, batch):
        model = eqx.combine(params, static)
        h0 = None if model.learn_initial_state else model.init_state().astype(dtype)
        B = batch[0].shape[1]
        return jax.vmap(lambda _: rtrl.init(model, h0))(jnp.arange(B))

    def one_step(carry, data):
        params, opt_state, key, bad, stream, rstate, t = carry
        model = eqx.combine(params, static)
        xs, ys, ws = stream
        T = xs.shape[0]
        x_t, y_t, a_t = xs[t], ys[t], ws[t]
        x_next = xs[jnp.minimum(t + 1, T - 1)]

        def one(s, x, xn, y, a):
            return rtrl.step(model, s, x, y, loss=per_step, weight=a, x_next=xn)

        new_rstate, ls, grads = jax.vmap(one)(rstate, x_t, x_next, y_t, a_t)
        # `grads` are a_t dl_t/dθ per stream: average over the streams, scaled by T
        # so that uniform weights a_t = 1/T give the plain per-step gradient
        grads = eqx.filter(grads, eqx.is_inexact_array)
        grads = jax.tree.map(lambda g: (T * jnp.mean(g, axis=0)).astype(g.dtype), grads)
        loss = T * jnp.mean(ls)
        updates, new_opt = opt.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        ok = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new_params)
        params, opt_state = _tree_where(ok, (new_params, new_opt), (params, opt_state))
        t = t + 1
        key, sub = jr.split(key)

        def restart(_):
            s = draw(data, sub)
            return s, init_states(params, s), jnp.asarray(0, t.dtype)

        def go_on(_):
            return stream, new_rstate, t

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


# ------------------------------------------------------------- run state


class _Setup:
    """Everything built from a config and its task before training starts."""

    def __init__(self, cfg: Config, task):
        self.cfg, self.task = cfg, task
        self.dtype = _dtype(cfg)
        self.gradient = build_gradient(cfg)
        self.optimiser = build_optimiser(cfg)
        seed, dtype, optimiser = cfg.train.seed, self.dtype, self.optimiser

        def init():
            # one compiled program instead of dozens of small eager ones
            model_key, train_key = jr.split(jr.PRNGKey(seed))
            model = _cast(build_model(cfg, task, model_key), dtype)
            params = eqx.filter(model, eqx.is_inexact_array)
            return model, optimiser.init(params), train_key

        self.model, self.opt_state, self.train_key = eqx.filter_jit(init)()
        self.params, self.static = eqx.partition(self.model, eqx.is_inexact_array)
        self.rtrl = None
        if cfg.train.online:
            self.rtrl = self.gradient
            if not (hasattr(self.rtrl, "init") and hasattr(self.rtrl, "step")):
                raise ConfigError(
                    [
                        "train.online: this installation's RTRL has no online init/step API"
                    ]
                )

    def state(self, params=None, opt_state=None, key=None):
        return {
            "params": self.params if params is None else params,
            "opt_state": self.opt_state if opt_state is None else opt_state,
            "key": self.train_key if key is None else key,
        }

    def model_from(self, params):
        return eqx.combine(params, self.static)


def _x64_context(cfg: Config):
    """Float64 runs need JAX's x64 mode; switch it on (process-wide) if asked."""
    if cfg.train.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return jax.numpy_dtype_promotion("standard")


_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 8


def _cached(kind: str, key_data, build):
    """Reuse what was built (and compiled) for the same config in this process:
    resuming, evaluating or re-running a config does not compile it again. The
    key leaves out what does not change the computation (the output directory,
    the description)."""
    key = (kind, json.dumps(key_data, sort_keys=True), jax.config.jax_enable_x64)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = build()
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def _config_key(cfg: Config) -> dict:
    data = cfg.model_dump(mode="json")
    data.pop("out_dir", None)
    data.pop("description", None)
    return data


def prepare(cfg: Config):
    """Build and check everything that can fail because of the config, writing
    nothing: `(cfg, task, setup)`. Raises `ConfigError`."""
    cfg = cfg.model_copy(deep=True)
    task = _cached("task", cfg.task.model_dump(mode="json"), lambda: make_task(cfg))
    check_against_task(cfg, task)
    setup = _cached("setup", _config_key(cfg), lambda: _Setup(cfg, task))
    return cfg, task, setup


def _fresh_dir(path: Path) -> Path:
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return path
    i = 2
    while True:
        p = path.with_name(f"{path.name}-{i}")
        if not p.exists() or (p.is_dir() and not any(p.iterdir())):
            return p
        i += 1


def _is_main() -> bool:
    return _sharding is None or _sharding.is_main_process()


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------- train


def train(
    config: Config | str | Path | None,
    *,
    resume: bool = False,
    progress: bool = True,
    overrides: list[str] = (),
) -> dict:
    """Run (or resume) the experiment a config describes; returns the summary.

    **Arguments:**

    - `config`: a `Config`, or a path / built-in name passed to `load_config`
      (with `overrides`).
    - `resume`: continue the run in `config.out_dir` from its last valid
      checkpoint (a fresh start if it has none); otherwise a new run directory
      is used (`out_dir`, or `out_dir-2`, … if that one is taken).
    - `progress`: show a progress bar and messages on stderr.

    **Raises:** `ConfigError` for an invalid config (before anything is
    written), `TrainingDiverged` if the loss stops being finite.
    """
    if not isinstance(config, Config):
        config = load_config(config, list(overrides))
    if config.distributed.enabled and _sharding is not None:
        d = config.distributed
        _sharding.initialize_distributed(
            d.coordinator_address, d.num_processes, d.process_id
        )
    with _x64_context(config):
        return _train(config, resume=resume, progress=progress)


def _train(config: Config, *, resume: bool, progress: bool) -> dict:
    t_start = time.perf_counter()
    cfg, task, setup = prepare(config)
    tc = cfg.train
    mesh = None
    if _sharding is not None and cfg.devices != 1:
        try:
            mesh = _sharding.make_mesh(cfg.devices)
        except ValueError as e:
            raise ConfigError([f"devices: {_one_line(e)}"]) from None
        n_dev = _sharding.num_devices(mesh)
        if tc.batch_size % n_dev:
            raise ConfigError(
                [
                    f"train.batch_size: must be a multiple of the {n_dev} devices, "
                    f"got {tc.batch_size}"
                ]
            )
    elif cfg.devices != 1:
        raise ConfigError(["devices: data-parallel training is not available"])

    # ---- everything is validated: from here on files are written
    run_dir = Path(cfg.out_dir)
    if not resume:
        run_dir = _fresh_dir(run_dir)
    cfg.out_dir = str(run_dir)
    main = _is_main()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "plots").mkdir(exist_ok=True)
        ckpt.atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))

    dtype = setup.dtype
    train_data = split_arrays(cfg, task, task.train, dtype)
    test_data = split_arrays(cfg, task, task.test, dtype)
    lname = loss_name(cfg, task)
    spc = tc.steps_per_call
    online = tc.online
    params, opt_state, key = setup.params, setup.opt_state, setup.train_key
    extra = {}
    if online:
        per_step = rnnode.cross_entropy if lname == "cross_entropy" else rnnode.mse
        chunk, draw, init_states = _cached(
            "online",
            _config_key(cfg),
            lambda: make_online_chunk(
                setup.static,
                setup.optimiser,
                setup.rtrl,
                per_step,
                steps_per_call=spc,
                batch_size=tc.batch_size,
                dtype=dtype,
                mesh=mesh,
            ),
        )
        key, stream_key = jr.split(key)
        stream = draw(train_data, stream_key)
        # the streams' position is part of the training state
        extra = {
            "stream": stream,
            "rstate": init_states(params, stream),
            "t": jnp.asarray(0, jnp.int32),
        }
    else:
        chunk = _cached(
            "chunk",
            _config_key(cfg),
            lambda: make_chunk(
                setup.static,
                setup.optimiser,
                make_loss_fn(cfg, task, setup.gradient),
                steps_per_call=spc,
                batch_size=tc.batch_size,
                dtype=dtype,
                mesh=mesh,
            ),
        )

    step, elapsed_before = 0, 0.0
    if resume:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ckpt.CheckpointWarning)
            loaded = ckpt.load_latest(
                run_dir, {**setup.state(params, opt_state, key), **extra}
            )
        for w in caught:
            _say(f"warning: {w.message}", True)
        if loaded is None:
            _say(f"no usable checkpoint in {run_dir}: starting from step 0", progress)
        else:
            header, state = loaded
            params, opt_state, key = state["params"], state["opt_state"], state["key"]
            extra = {k: state[k] for k in extra}
            step = int(header["step"])
            elapsed_before = float(header.get("meta", {}).get("elapsed_s", 0.0))
            _say(f"resuming {run_dir} from step {step}", progress)
        if main:
            mt.truncate_after(run_dir, step)
    elif main:
        for name in (mt.METRICS, mt.LOSSES, mt.SUMMARY):
            if (run_dir / name).exists():
                (run_dir / name).unlink()
    if mesh is not None:
        train_data = _sharding.replicate(mesh, train_data)
        params, opt_state = _sharding.replicate(mesh, (params, opt_state))

    def evaluate_now(p):
        model = setup.model_from(p)
        hs, outs, test_loss = _evaluate(
            model, *test_data, task.kind, lname, build_equilibrium(cfg)
        )
        outs_np = np.asarray(outs, dtype=np.float64)
        test_loss = float(test_loss)
        metrics = task.metrics(outs_np, task.test)
        return test_loss, metrics, np.asarray(hs), outs_np

    def save(p, o, k, s, elapsed, extra):
        # Gathering sharded arrays is a collective: every process takes part,
        # then only the main process writes.
        state = {**setup.state(p, o, k), **extra}
        if mesh is not None:
            state = _sharding.to_numpy(state)
        if not main:
            return None
        return ckpt.save_checkpoint(
            run_dir,
            s,
            state,
            keep=tc.keep_checkpoints,
            meta={"elapsed_s": elapsed, "config": cfg.model_dump(mode="json")},
        )

    total = tc.steps
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            initial=step,
            unit="step",
            desc=Path(run_dir).name,
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=0.25,
            smoothing=0.1,
        )
    losses_since_eval: list[float] = []
    postfix: dict[str, str] = {}
    if step and main:
        # a resumed run's first record averages over the steps since the last
        # evaluation, some of which ran before the stop
        since = step - step % tc.eval_every
        steps_done, losses_done = mt.read_losses(run_dir)
        losses_since_eval = losses_done[steps_done > since].tolist()
    t_loop = time.perf_counter()
    first_call_s = None
    first_n, start_step = 0, step
    last_record = None
    try:
        while step < total:
            n = min(
                spc,
                total - step,
                tc.eval_every - step % tc.eval_every,
                tc.checkpoint_every - step % tc.checkpoint_every,
            )
            t0 = time.perf_counter()
            if online:
                carry, losses = chunk(
                    params,
                    opt_state,
                    key,
                    jnp.asarray(n, jnp.int32),
                    train_data,
                    extra["stream"],
                    extra["rstate"],
                    extra["t"],
                )
                params, opt_state, key, bad, *rest = carry
                extra = dict(zip(("stream", "rstate", "t"), rest, strict=True))
            else:
                (params, opt_state, key, bad), losses = chunk(
                    params, opt_state, key, jnp.asarray(n, jnp.int32), train_data
                )
            losses, failed = losses
            losses = np.asarray(losses)[:n].astype(np.float64)
            if first_call_s is None:
                first_call_s, first_n = time.perf_counter() - t0, n
            if bool(bad):
                i = int(np.argmax(np.asarray(failed)[:n]))
                good = losses[:i]
                if main and len(good):
                    mt.write_losses(run_dir, step + 1, good)
                bad_step = step + i + 1
                step += i
                what = (
                    f"the loss became {losses[i]}"
                    if not np.isfinite(losses[i])
                    else "the gradient or the updated parameters stopped being "
                    f"finite (loss {losses[i]:.4g})"
                )
                msg = (
                    f"training stopped at step {bad_step}: {what}; "
                    f"{_last_checkpoint(run_dir)}. Try a smaller optim.lr, "
                    "optim.clip_norm, or a smaller model.integrator.dt"
                )
                raise _stopped(run_dir, main, "diverged", msg, bad_step)
            if main:
                mt.write_losses(run_dir, step + 1, losses)
            losses_since_eval.extend(losses.tolist())
            step += n
            if bar is not None:
                postfix["loss"] = f"{losses[-1]:.4g}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(n)
            elapsed = elapsed_before + time.perf_counter() - t_loop
            if step % tc.eval_every == 0 or step == total:
                test_loss, metrics, _, _ = evaluate_now(params)
                record = {
                    "step": step,
                    "train_loss": float(np.mean(losses_since_eval)),
                    "test_loss": test_loss,
                    "test": metrics,
                    "time_s": round(elapsed, 3),
                }
                losses_since_eval = []
                last_record = record
                if main:
                    mt.write_metrics(run_dir, record)
                if bar is not None:
                    postfix["test"] = f"{test_loss:.4g}"
                    bar.set_postfix(postfix)
            if step % tc.checkpoint_every == 0 or step == total:
                save(params, opt_state, key, step, elapsed, extra)
        # ---- final evaluation (inside: a failed solve is reported the same way)
        test_loss, metrics, hs, outs = evaluate_now(params)
    except eqx.EquinoxRuntimeError as e:
        raise _solve_failed(e, step, run_dir, main) from None
    finally:
        if bar is not None:
            bar.close()
    loop_s = time.perf_counter() - t_loop
    elapsed = elapsed_before + loop_s

    # ---- plots, summary
    records = mt.read_metrics(run_dir) if main else []
    summary = {
        "status": "finished",
        "name": Path(run_dir).name,
        "task": task.name,
        "steps": step,
        "train_loss": last_record["train_loss"]
        if last_record
        else (records[-1]["train_loss"] if records else None),
        "test_loss": test_loss,
        "test": metrics,
        "num_params": num_params(setup.model_from(params)),
        **_params_report(setup.model_from(params), task),
        "wall_time_s": round(elapsed, 3),
        "session_time_s": round(time.perf_counter() - t_start, 3),
        "first_call_s": None if first_call_s is None else round(first_call_s, 3),
        # speed after the first call (which includes compilation)
        "steps_per_s": _rate(step - start_step - first_n, loop_s - (first_call_s or 0)),
        "run_dir": str(run_dir),
        "files": {},
    }
    if main:
        summary["files"] = _write_plots(cfg, task, run_dir, records, hs, outs)
        mt.write_summary(run_dir, summary)
    return summary


def _rate(steps: int, seconds: float) -> float | None:
    if steps <= 0 or seconds <= 0:
        return None
    return round(steps / seconds, 2)


def _params_report(model, task) -> dict:
    fitted = fitted_params(model)
    if fitted is None:
        return {}
    return {"fitted_params": fitted, "true_params": task.info.get("true_params")}


def _write_plots(cfg, task, run_dir, records, hs, outs) -> dict:
    from . import _plots

    plots = Path(run_dir) / "plots"
    plots.mkdir(exist_ok=True)
    files = {}
    try:
        steps, losses = mt.read_losses(run_dir)
        _plots.plot_losses(
            plots / "loss.png", steps, losses, records, title=f"{task.name}: loss"
        )
        files["loss"] = str(plots / "loss.png")
        _plots.plot_predictions(
            plots / "predictions.png",
            outs,
            task.test.ys,
            classification=task.loss == "cross_entropy",
            dt=float(task.dt),
            weights=task.test.weights,
            equilibrium=task.kind == "equilibrium",
            title=f"{task.name}: test predictions vs targets",
        )
        files["predictions"] = str(plots / "predictions.png")
        if task.name.startswith("oscillator"):
            if (
                outs.shape[-1] >= 2
                and task.test.ys.ndim == 3
                and task.test.ys.shape[-1] >= 2
            ):
                model_xv, target_xv = outs[..., :2], task.test.ys[..., :2]
            elif cfg.model.dynamics == "oscillator":
                model_xv, target_xv = hs[..., :2], None
            else:
                model_xv, target_xv = None, None
            if model_xv is not None:
                _plots.plot_phase(
                    plots / "phase.png",
                    model_xv,
                    target_xv,
                    title=f"{task.name}: phase portrait (test)",
                )
                files["phase"] = str(plots / "phase.png")
    except Exception as e:  # noqa: BLE001 - a plot must not lose a finished run
        warnings.warn(f"plotting failed: {_one_line(e)}", stacklevel=2)
    return files


# -------------------------------------------------------------- saved runs


def load_run_config(run_dir: str | Path) -> Config:
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not an rnnode run (no config.yaml)")
    raw = parse_yaml(path.read_text(), source=str(path))
    cfg = validate_config(raw, name=run_dir.name)
    cfg.out_dir = str(run_dir)
    return cfg


def _load_run(run_dir):
    cfg = load_run_config(run_dir)
    with _x64_context(cfg):
        cfg, task, setup = prepare(cfg)
        like = setup.state()
        if cfg.train.online:
            like = {**like, **_online_like(cfg, task, setup)}
        loaded = ckpt.load_latest(run_dir, like)
        if loaded is None:
            raise FileNotFoundError(f"{run_dir} has no usable checkpoint")
        header, state = loaded
        model = setup.model_from(state["params"])
    return model, cfg, task, int(header["step"])


def _online_like(cfg, task, setup):
    dtype = setup.dtype
    train_data = split_arrays(cfg, task, task.train, dtype)
    per_step = (
        rnnode.cross_entropy if loss_name(cfg, task) == "cross_entropy" else rnnode.mse
    )
    _, draw, init_states = make_online_chunk(
        setup.static,
        setup.optimiser,
        setup.rtrl,
        per_step,
        steps_per_call=1,
        batch_size=cfg.train.batch_size,
        dtype=dtype,
        mesh=None,
    )
    stream = draw(train_data, setup.train_key)
    return {
        "stream": stream,
        "rstate": init_states(setup.params, stream),
        "t": jnp.asarray(0, jnp.int32),
    }


def load_run(run_dir: str | Path):
    """`(model, config, task)` of a saved run, the model from its newest valid
    checkpoint.

    **Raises:** `FileNotFoundError` if there is no run or no usable checkpoint.
    """
    model, cfg, task, _ = _load_run(run_dir)
    return model, cfg, task


def evaluate(run_dir: str | Path) -> dict:
    """The test metrics of a saved run's newest valid checkpoint; also written
    to `RUN_DIR/eval.json`.

    **Raises:** `FileNotFoundError` if there is no run or no usable checkpoint;
    `EvaluationFailed` if the model's equilibrium does not converge on the test
    set under the run's `equilibrium:` settings (then nothing is written, and an
    earlier `eval.json` is left as it was).
    """
    run_dir = Path(run_dir)
    model, cfg, task, step = _load_run(run_dir)
    with _x64_context(cfg):
        dtype = _dtype(cfg)
        xs, ys, ws = split_arrays(cfg, task, task.test, dtype)
        try:
            _, outs, test_loss = _evaluate(
                model,
                xs,
                ys,
                ws,
                task.kind,
                loss_name(cfg, task),
                build_equilibrium(cfg),
            )
            test_loss = float(test_loss)  # errors surface here at the latest
        except eqx.EquinoxRuntimeError as e:
            raise EvaluationFailed(
                f"evaluating {run_dir} (step {step}) failed: {_runtime_message(e)} "
                "The forward solve is the run's `equilibrium:` section in "
                f"{run_dir / 'config.yaml'} (equilibrium.max_steps, "
                "equilibrium.damping, equilibrium.solver=anderson, "
                "equilibrium.step_size). Nothing was written."
            ) from None
        result = {
            "run_dir": str(run_dir),
            "step": step,
            "task": task.name,
            "test_loss": test_loss,
            "test": task.metrics(np.asarray(outs, dtype=np.float64), task.test),
            **_params_report(model, task),
        }
    if _is_main():
        ckpt.atomic_write_text(
            run_dir / "eval.json", mt.to_json(result, indent=2) + "\n"
        )
    return result
