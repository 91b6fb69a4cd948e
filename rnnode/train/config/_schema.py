"""The schema of an experiment config: the pydantic models of its sections
and the tables of names (dynamics, gradient methods, solvers, tasks) that the
rest of the package reads.

Every model forbids unknown keys; a validator's error names the key below the
model it checks (`_PathError`), and `format_errors` turns them into one line
each (`model.integrator.dt: must be > 0, got -0.1`).
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ._errors import _PathError, one_line
from ._names import (
    _DYNAMICS_OWN_ARGS,
    CELLS,
    DIFFRAX_SOLVERS,
    EQUILIBRIUM_GRADIENTS,
    EQUILIBRIUM_TASKS,
    GRADIENTS,
    ONLINE_GRADIENTS,
    SEQUENCE_TASKS,
    VECTOR_FIELDS,
    _check_kwargs,
    _dynamics_signature,
    gradient_class,
    optimiser_signature,
)


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, validate_default=True
    )

    def explicit(self, name: str) -> bool:
        """Whether the key `name` was given (rather than defaulted)."""
        return name in self.model_fields_set

    @model_validator(mode="before")
    @classmethod
    def _null_sections(cls, data):
        # `schedule: null` (or `optim.schedule=null`) switches an optional
        # section off: the same as leaving it out, i.e. its defaults
        if isinstance(data, dict):
            nulls = [k for k, v in data.items() if v is None and _is_section(cls, k)]
            data = {k: v for k, v in data.items() if k not in nulls}
        return data


class TaskConfig(_Strict):
    """`task:` which data set or generator, and its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0


class IntegratorConfig(_Strict):
    """`model.integrator:` how a continuous-time model is stepped."""

    name: Literal["euler", "heun", "rk4", "diffrax"] = "euler"
    dt: float | None = Field(None, gt=0)
    interpolation: Literal["constant", "linear"] = "constant"
    solver: str = "tsit5"
    rtol: float | None = Field(None, gt=0)
    atol: float | None = Field(None, gt=0)
    dt0: float | None = Field(None, gt=0)
    max_steps: int = Field(4096, gt=0)

    @field_validator("solver")
    @classmethod
    def _solver(cls, v: str) -> str:
        if v.lower() not in DIFFRAX_SOLVERS:
            raise ValueError(
                f"unknown diffrax solver {v!r}; choose one of "
                + ", ".join(DIFFRAX_SOLVERS)
            )
        return v.lower()

    @model_validator(mode="after")
    def _diffrax_only(self):
        if self.name != "diffrax":
            for key in ("solver", "rtol", "atol", "dt0", "max_steps"):
                if self.explicit(key):
                    raise _PathError(
                        key, f"only used by the diffrax integrator, not {self.name}"
                    )
        if (self.rtol is None) != (self.atol is None):
            raise _PathError(
                "rtol", "give both rtol and atol (adaptive steps) or neither"
            )
        return self


class LayerConfig(_Strict):
    """One entry of `model.layers:` (for `dynamics: stack`): a recurrent core."""

    dynamics: Literal["lru", "gru", "lstm", "elman", "ctrnn"] = "lru"
    hidden_size: int = Field(32, gt=0)
    activation: Literal["tanh", "relu", "sigmoid", "softplus", "gelu", "identity"] = (
        "tanh"
    )
    tau: float = Field(1.0, gt=0)
    form: Literal["current", "rate"] = "current"
    density: float = Field(1.0, gt=0, le=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _combinations(self):
        _check_core_keys(self, self.dynamics)
        return self


class ModelConfig(_Strict):
    """`model:` the dynamics, how they are integrated, and the readout.

    `dynamics: stack` takes `layers:` (a list of cores, each with `dynamics`,
    `hidden_size`, `options`, …), the model `width`, `mixing` (glu, mlp) and `norm`
    (pre, post, none); `integrator` then steps its ctrnn layers."""

    dynamics: Literal[
        "ctrnn", "linear", "oscillator", "elman", "lstm", "gru", "lru", "stack"
    ] = "ctrnn"
    hidden_size: int = Field(32, gt=0)
    activation: Literal["tanh", "relu", "sigmoid", "softplus", "gelu", "identity"] = (
        "tanh"
    )
    tau: float = Field(1.0, gt=0)
    form: Literal["current", "rate"] = "current"
    density: float = Field(1.0, gt=0, le=1)
    integrator: IntegratorConfig | None = None
    readout: Literal["linear", "none", "first"] = "linear"
    learn_initial_state: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    layers: list[LayerConfig] | None = None
    width: int = Field(64, gt=0)
    mixing: Literal["glu", "mlp"] = "glu"
    norm: Literal["pre", "post", "none"] = "pre"

    @model_validator(mode="after")
    def _combinations(self):
        d = self.dynamics
        if d == "stack":
            return self._stack()
        for key in ("layers", "width", "mixing", "norm"):
            if self.explicit(key):
                raise _PathError(key, f"only used by stack dynamics, not {d}")
        if d in CELLS and self.integrator is not None:
            raise _PathError(
                "integrator",
                f"{d} is a discrete-time cell and is stepped directly; remove "
                "model.integrator (integrators are for ctrnn, linear, oscillator)",
            )
        if d in VECTOR_FIELDS and self.integrator is None:
            self.integrator = IntegratorConfig()
        if d in ("linear", "oscillator") and self.explicit("hidden_size"):
            size = "2 (position, velocity)" if d == "oscillator" else "the input size"
            raise _PathError(
                "hidden_size", f"not used by {d} dynamics (its state size is {size})"
            )
        _check_core_keys(self, d)
        return self

    def _stack(self):
        if not self.layers:
            raise _PathError(
                "layers",
                "stack dynamics need a non-empty list of layers, e.g. "
                "[{dynamics: lru, hidden_size: 64}, {dynamics: lru, hidden_size: 64}]",
            )
        for key in ("hidden_size", "activation", "tau", "form", "density", "options"):
            if self.explicit(key):
                raise _PathError(
                    key, f"set per layer for stack dynamics (model.layers[i].{key})"
                )
        if any(ly.dynamics in VECTOR_FIELDS for ly in self.layers):
            if self.integrator is None:
                self.integrator = IntegratorConfig()
        elif self.integrator is not None:
            raise _PathError(
                "integrator", "only used by the ctrnn layers of a stack; it has none"
            )
        return self


def _check_core_keys(m, d: str) -> None:
    """The keys of a model (or of a stack's layer) that its dynamics `d` use."""
    if d in ("linear", "oscillator", "lstm", "gru", "lru") and m.explicit("activation"):
        raise _PathError("activation", f"not used by {d} dynamics")
    for key in ("tau", "form"):
        if d != "ctrnn" and m.explicit(key):
            raise _PathError(key, f"only used by ctrnn dynamics, not {d}")
    if d not in ("ctrnn", "elman") and m.explicit("density"):
        raise _PathError("density", f"only used by ctrnn and elman dynamics, not {d}")
    _check_kwargs(
        m.options,
        _dynamics_signature(d),
        "options",
        f"{d} dynamics",
        exclude=_DYNAMICS_OWN_ARGS,
    )


class GradientConfig(_Strict):
    """`gradient:` the method, plus its own options as further keys
    (`gradient: {name: bptt, truncate: 20}`)."""

    model_config = ConfigDict(
        extra="allow", strict=True, allow_inf_nan=False, validate_default=True
    )
    name: Literal[tuple(GRADIENTS)] = "autodiff"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _options(self):
        cls = gradient_class(self.name)
        if cls is None:  # not in this installation: reported when the run starts
            return self
        _check_kwargs(self.options, inspect.signature(cls), None, f"{self.name}")
        try:
            cls(**self.options)
        except Exception as e:  # noqa: BLE001 - report the constructor's message
            msg = f"{self.name}: {one_line(e)}"
            # name the key when the message is about exactly one of the options
            named = [k for k in self.options if re.search(rf"\b{k}\b", msg)]
            if len(named) == 1:
                raise _PathError(named[0], msg) from None
            raise ValueError(msg) from None
        return self


class EquilibriumConfig(_Strict):
    """`equilibrium:` how an equilibrium task's fixed points are found (the forward
    solve of `rnnode.equilibrium`; the adjoint's options are `gradient:` keys,
    e.g. `gradient: {name: implicit, max_steps: 2000, damping: 0.5}`)."""

    solver: Literal["fixed_point", "anderson"] = "fixed_point"
    damping: float = Field(1.0, gt=0, le=1)
    max_steps: int = Field(1000, gt=0)
    rtol: float | None = Field(None, gt=0)
    atol: float | None = Field(None, gt=0)
    memory: int = Field(5, gt=0)
    step_size: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _anderson_only(self):
        if self.explicit("memory") and self.solver != "anderson":
            raise _PathError("memory", f"only used by anderson, not {self.solver}")
        return self


class LossConfig(_Strict):
    """`loss:` the per-step loss and the time weights `a_t`; `task` takes the
    task's own choice."""

    name: Literal["task", "mse", "cross_entropy"] = "task"
    weights: Literal["task", "uniform", "last", "integral"] = "task"


class ScheduleConfig(_Strict):
    """`optim.schedule:` a learning-rate schedule (a name alone is shorthand for
    `{name: ...}`)."""

    name: Literal[
        "constant",
        "cosine",
        "warmup_cosine",
        "exponential",
        "linear",
        "warmup_constant",
    ] = "constant"
    warmup_steps: int = Field(0, ge=0)
    decay_steps: int | None = Field(None, gt=0)
    end_factor: float = Field(0.0, ge=0)
    decay_rate: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _warmup(self):
        if self.warmup_steps and self.name not in ("warmup_cosine", "warmup_constant"):
            raise _PathError(
                "warmup_steps",
                f"only used by warmup_cosine and warmup_constant, not {self.name}",
            )
        return self


class OptimConfig(_Strict):
    """`optim:` any optax optimiser by name, its learning rate and schedule,
    gradient clipping, and the optimiser's own keyword arguments as further keys
    (`optim: {name: adamw, lr: 1e-3, weight_decay: 1e-4}`)."""

    model_config = ConfigDict(
        extra="allow", strict=True, allow_inf_nan=False, validate_default=True
    )
    name: str = "adam"
    lr: float = Field(1e-3, gt=0)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    clip_norm: float | None = Field(None, gt=0)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @field_validator("schedule", mode="before")
    @classmethod
    def _shorthand(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        optimiser_signature(v)
        return v

    @model_validator(mode="after")
    def _options(self):
        for k, v in self.options.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise _PathError(k, f"must be a finite number, got {v}")
        _check_kwargs(
            self.options,
            optimiser_signature(self.name),
            None,
            f"optax.{self.name}",
            exclude={"learning_rate"},
        )
        return self


class TrainConfig(_Strict):
    """`train:` how long, how much per step, how often to evaluate and save."""

    steps: int = Field(1000, gt=0)
    batch_size: int = Field(32, gt=0)
    seed: int = 0
    eval_every: int = Field(100, gt=0)
    checkpoint_every: int = Field(500, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    steps_per_call: int = Field(50, gt=0)
    online: bool = False
    # online: `batch_size` parallel streams, the gradient averaged over them;
    # every `reset_every` steps of a stream its state and the method's traces
    # start afresh (a washout; the method's keys go on)
    reset_every: int | None = Field(None, gt=0)
    dtype: Literal["float32", "float64"] = "float32"


class DistributedConfig(_Strict):
    """`distributed:` join a multi-host run (`true` reads everything from the
    environment; see `rnnode.train._sharding.initialize_distributed`)."""

    enabled: bool = True
    coordinator_address: str | None = None
    num_processes: int | None = Field(None, gt=0)
    process_id: int | None = Field(None, ge=0)


class Config(_Strict):
    """A whole experiment."""

    description: str = ""
    task: TaskConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    gradient: GradientConfig = Field(default_factory=GradientConfig)
    equilibrium: EquilibriumConfig = Field(default_factory=EquilibriumConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out_dir: str | None = None
    devices: int | Literal["all"] = 1
    distributed: DistributedConfig = Field(
        default_factory=lambda: DistributedConfig(enabled=False)
    )

    @field_validator("devices")
    @classmethod
    def _devices(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"must be 'all' or a positive integer, got {v}")
        return v

    @field_validator("distributed", mode="before")
    @classmethod
    def _dist_shorthand(cls, v):
        if isinstance(v, bool):
            return {"enabled": v}
        if v is None:
            return {"enabled": False}
        return v

    @model_validator(mode="after")
    def _combinations(self):
        g = self.gradient.name
        if self.train.reset_every is not None and not self.train.online:
            raise _PathError(
                "train.reset_every",
                "resets are for online training (the streams' states and traces); "
                "set train.online: true, or drop train.reset_every",
            )
        if self.train.online and g not in ONLINE_GRADIENTS:
            raise _PathError(
                "train.online",
                f"online training updates the weights at every time step and needs "
                f"an online gradient.name ({', '.join(ONLINE_GRADIENTS)}), got {g}",
            )
        m = self.model
        lrus = m.dynamics == "lru" or (
            m.dynamics == "stack" and all(ly.dynamics == "lru" for ly in m.layers)
        )
        if g == "layer_local" and not lrus:
            raise _PathError(
                "gradient.name",
                "layer_local learns LRUs: it needs model.dynamics: lru, or a stack "
                f"whose layers are all lru; got {m.dynamics} (use rtrl or bptt)",
            )
        if self.task.name in EQUILIBRIUM_TASKS and g not in EQUILIBRIUM_GRADIENTS:
            raise _PathError(
                "gradient.name",
                f"{g} differentiates a sequence; task {self.task.name} is an "
                "equilibrium task: use implicit (or autodiff)",
            )
        if self.explicit("equilibrium") and self.task.name in SEQUENCE_TASKS:
            raise _PathError(
                "equilibrium",
                f"only used by equilibrium tasks; {self.task.name} is a sequence task",
            )
        if g == "implicit" and self.task.name in SEQUENCE_TASKS:
            raise _PathError(
                "gradient.name",
                f"implicit gradients need a task with an equilibrium; "
                f"{self.task.name} is a sequence task (use autodiff, bptt or rtrl)",
            )
        return self

    @property
    def name(self) -> str:
        return Path(self.out_dir).name if self.out_dir else self.task.name


def _is_section(model: type[BaseModel], key: str) -> bool:
    """Whether `key` of `model` is a section (a nested config with defaults)."""
    field = model.model_fields.get(key)
    if field is None or field.is_required():
        return False
    return isinstance(field.annotation, type) and issubclass(
        field.annotation, BaseModel
    )
