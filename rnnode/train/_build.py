"""Objects built from a config: the task, the model and its integrator, the
gradient method, the optimiser and its schedule, the loss function and the data
as device arrays; `prepare` builds (and caches) them all before a run writes
anything."""

from __future__ import annotations

import collections
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from .. import data
from .._cells import GRU, LSTM, ElmanRNN
from .._dynamics import CTRNN, DampedOscillator, LinearExample, is_noisy
from .._equilibrium import equilibrium_loss
from .._fixed_point import Anderson, FixedPointIteration
from .._integrate import RK4, Diffrax, Euler, Heun
from .._linear import Linear
from .._losses import cross_entropy, mse
from .._lru import LRU
from .._model import Model
from .._sequence import sequence_loss
from .._stack import Stack
from ..gradients import AbstractOnlineGradient
from .config import (
    CELLS,
    DIFFRAX_SOLVERS,
    Config,
    ConfigError,
    check_against_task,
    gradient_class,
    one_line,
)


class First(eqx.Module):
    """Readout `o = h[:size]`: the first `size` observed values (e.g. the position
    of an oscillator's `(x, v)`)."""

    size: int = eqx.field(static=True)

    def __call__(self, h):
        return h[: self.size]


def make_task(cfg: Config):
    """The config's task (`rnnode.data.make_task`)."""
    try:
        return data.make_task(cfg.task.name, dict(cfg.task.options), seed=cfg.task.seed)
    except (ValueError, TypeError) as e:
        raise ConfigError([f"task: {one_line(e)}"]) from None


def build_integrator(ic):
    if ic is None:
        return None
    dt = float(ic.dt)
    if ic.name == "euler":
        return Euler(dt=dt, interpolation=ic.interpolation)
    if ic.name == "heun":
        return Heun(dt=dt, interpolation=ic.interpolation)
    if ic.name == "rk4":
        return RK4(dt=dt, interpolation=ic.interpolation)
    import diffrax

    solver = getattr(diffrax, DIFFRAX_SOLVERS[ic.solver])()
    if ic.rtol is not None:
        controller = diffrax.PIDController(rtol=ic.rtol, atol=ic.atol)
    else:
        controller = diffrax.ConstantStepSize()
    return Diffrax(
        dt=dt,
        solver=solver,
        stepsize_controller=controller,
        dt0=ic.dt0,
        max_steps=ic.max_steps,
        interpolation=ic.interpolation,
    )


def build_model(cfg: Config, task, key) -> Model:
    """The model the config describes, sized for `task`, initialised from `key`."""
    m = cfg.model
    dkey, rkey = jr.split(key)
    try:
        if m.dynamics == "stack":
            keys = jr.split(dkey, len(m.layers) + 1)
            dyn = Stack(
                [
                    _core(ly, ly.dynamics, m.width, k)
                    for ly, k in zip(m.layers, keys[1:], strict=True)
                ],
                input_size=task.input_size,
                mixing=m.mixing,
                norm=m.norm,
                integrator=None
                if m.integrator is None
                else build_integrator(m.integrator),
                key=keys[0],
            )
        else:
            dyn = _core(m, m.dynamics, task.input_size, dkey)
    except (ValueError, TypeError) as e:
        where = "model.layers" if m.dynamics == "stack" else "model.options"
        raise ConfigError([f"{where}: {one_line(e)}"]) from None
    if m.readout == "linear":
        readout = Linear(dyn.observe_size, task.output_size, key=rkey)
    elif m.readout == "first":
        readout = First(task.output_size)
    else:
        readout = None
    integrator = None if m.dynamics in CELLS else build_integrator(m.integrator)
    return Model(dyn, integrator, readout, learn_initial_state=m.learn_initial_state)


def _core(m, dynamics: str, inp: int, key):
    """The dynamics `dynamics` from a model's (or a stack layer's) config keys."""
    opts, n = dict(m.options), m.hidden_size
    if dynamics == "ctrnn":
        return CTRNN(
            n,
            inp,
            tau=m.tau,
            activation=m.activation,
            form=m.form,
            density=m.density,
            key=key,
            **opts,
        )
    if dynamics == "linear":
        return LinearExample(size=inp, **opts)
    if dynamics == "oscillator":
        return DampedOscillator(**opts)
    if dynamics == "elman":
        return ElmanRNN(
            n, inp, activation=m.activation, density=m.density, key=key, **opts
        )
    if dynamics == "lstm":
        return LSTM(n, inp, key=key, **opts)
    if dynamics == "lru":
        return LRU(n, inp, key=key, **opts)
    return GRU(n, inp, key=key, **opts)


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
        raise ConfigError([f"gradient: {one_line(e)}"]) from None


def check_gradient_applies(cfg: Config, gradient, model) -> None:
    """Ask an online method (`RTRL`, `SnAp`, `UORO`, `KFRTRL`, `RFLO`, `EProp`)
    whether it covers the built model, by starting an online run in shapes only
    (its `init` raises a `ValueError` naming what it does not cover, e.g. KF-RTRL
    on an LSTM); for the config, one line naming `gradient.name`.

    **Raises:** `ConfigError`.
    """
    name = cfg.gradient.name
    if not isinstance(gradient, AbstractOnlineGradient):
        if cfg.train.online:  # the config allows only online names
            raise AssertionError(f"{name} is not an online method")
        return
    try:
        eqx.filter_eval_shape(gradient.init, model)
    except ValueError as e:
        d = cfg.model.dynamics
        raise ConfigError(
            [f"gradient.name: {name} does not cover this model ({d}): {one_line(e)}"]
        ) from None


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
        raise ConfigError([f"optim: optax.{o.name}: {one_line(e)}"]) from None
    if o.clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
    return opt


def run_dtype(cfg: Config):
    """The JAX dtype of a run: `float64` if `train.dtype` says so, else `float32`."""
    return jnp.float64 if cfg.train.dtype == "float64" else jnp.float32


def _cast(tree, dtype):
    def f(x):
        if eqx.is_inexact_array(x) and x.dtype != dtype:
            return x.astype(dtype)
        return x

    return jax.tree.map(f, tree)


def loss_name(cfg: Config, task) -> str:
    """The name of the per-step loss of a run: the config's `loss.name`, or the
    task's own (`mse`, `cross_entropy`) for `task`."""
    return task.loss if cfg.loss.name == "task" else cfg.loss.name


def step_loss(name: str):
    """The per-step loss `l(output, target)` of a loss name: `rnnode.cross_entropy`
    for `cross_entropy`, `rnnode.mse` otherwise (`mse`)."""
    return cross_entropy if name == "cross_entropy" else mse


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
        solver = Anderson(memory=e.memory, **common)
    else:
        solver = FixedPointIteration(**common)
    return dict(solver=solver, step_size=e.step_size)


def make_loss_fn(cfg: Config, task, gradient):
    """`loss(model, xs, ys, weights, key=None) -> scalar` for a batch; `key`
    draws the private noise of a noisy model (a fresh one per batch)."""
    per_step = step_loss(loss_name(cfg, task))
    if task.kind == "equilibrium":
        eq = build_equilibrium(cfg)

        def loss_fn(model, xs, ys, ws, key=None):
            del key  # equilibria are noise-free
            return equilibrium_loss(
                model, xs[0], ys[0], loss=per_step, gradient=gradient, **eq
            )

    else:

        def loss_fn(model, xs, ys, ws, key=None):
            # `key`: this batch's realisation of the private noise (noisy models)
            return sequence_loss(
                model,
                xs,
                ys,
                loss=per_step,
                weights=ws,
                gradient=gradient,
                key=key if is_noisy(model.dynamics) else None,
            )

    return loss_fn


def fitted_params(model) -> dict | None:
    """The physical parameters of an oscillator or the linear example (to compare
    with a task's `info["true_params"]`); `None` for other dynamics."""
    dyn = model.dynamics
    if isinstance(dyn, DampedOscillator):
        return {
            "mass": float(dyn.mass),
            "damping": float(dyn.damping),
            "stiffness": float(dyn.stiffness),
        }
    if isinstance(dyn, LinearExample):
        w, b = np.asarray(dyn.w, dtype=float), np.asarray(dyn.b, dtype=float)
        return {"w": w.tolist(), "b": b.tolist(), "w_plus_b": (w + b).tolist()}
    return None


def num_params(model) -> int:
    return int(
        sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    )


class _Setup:
    """Everything built from a config and its task before training starts."""

    def __init__(self, cfg: Config, task):
        self.cfg, self.task = cfg, task
        self.dtype = run_dtype(cfg)
        self.gradient = build_gradient(cfg)
        self.optimiser = build_optimiser(cfg)
        seed, dtype, optimiser = cfg.train.seed, self.dtype, self.optimiser

        def init():
            # one compiled program instead of dozens of small eager ones
            model_key, train_key = jr.split(jr.PRNGKey(seed))
            model = _cast(build_model(cfg, task, model_key), dtype)
            params = eqx.filter(model, eqx.is_inexact_array)
            return model, optimiser.init(params), train_key

        # a sparse network's mask is drawn when it is built, from a concrete key
        layers = cfg.model.layers or []
        sparse = cfg.model.density < 1 or any(ly.density < 1 for ly in layers)
        init = init if sparse else eqx.filter_jit(init)
        self.model, self.opt_state, self.train_key = init()
        self.params, self.static = eqx.partition(self.model, eqx.is_inexact_array)
        check_gradient_applies(cfg, self.gradient, self.model)

    def state(self, params=None, opt_state=None, key=None):
        return {
            "params": self.params if params is None else params,
            "opt_state": self.opt_state if opt_state is None else opt_state,
            "key": self.train_key if key is None else key,
        }

    def model_from(self, params):
        return eqx.combine(params, self.static)


def x64_context(cfg: Config):
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
