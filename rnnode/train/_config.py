"""The experiment config: a YAML file validated by pydantic models.

Every model forbids unknown keys. Errors are collected and reported as one line
each, naming the dotted key path (`model.integrator.dt: must be > 0, got -0.1`);
`ConfigError` carries them. Validation happens in two stages, both before any
file is written: `load_config` checks the file on its own, `check_against_task`
checks the combination with the task's data (sizes, the task's kind).
"""

from __future__ import annotations

import difflib
import importlib.resources
import inspect
import math
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DYNAMICS = ("ctrnn", "linear", "oscillator", "elman", "lstm", "gru", "lru", "stack")
VECTOR_FIELDS = ("ctrnn", "linear", "oscillator")
CELLS = ("elman", "lstm", "gru", "lru", "stack")
LAYERS = ("lru", "gru", "lstm", "elman", "ctrnn")  # the cores a `stack` takes
# gradient names → rnnode class names; a class's keyword arguments are the
# `gradient:` section's options
GRADIENTS = {
    "autodiff": "Autodiff",
    "bptt": "BPTT",
    "rtrl": "RTRL",
    "implicit": "Implicit",
    "snap": "SnAp",
    "uoro": "UORO",
    "kf_rtrl": "KFRTRL",
    "rflo": "RFLO",
    "eprop": "EProp",
    "layer_local": "LayerLocalRTRL",
}
# the methods with an online `init` / `step` (for `train.online: true`)
ONLINE_GRADIENTS = ("rtrl", "snap", "uoro", "kf_rtrl", "rflo", "eprop", "layer_local")
# the methods that differentiate an equilibrium (the rest differentiate a sequence)
EQUILIBRIUM_GRADIENTS = ("autodiff", "implicit")
DIFFRAX_SOLVERS = {
    "euler": "Euler",
    "heun": "Heun",
    "midpoint": "Midpoint",
    "ralston": "Ralston",
    "bosh3": "Bosh3",
    "tsit5": "Tsit5",
    "dopri5": "Dopri5",
    "dopri8": "Dopri8",
    "kvaerno3": "Kvaerno3",
    "kvaerno4": "Kvaerno4",
    "kvaerno5": "Kvaerno5",
}
# keyword arguments of a dynamics' constructor that the config sets itself
_DYNAMICS_OWN_ARGS = {
    "hidden_size",
    "input_size",
    "key",
    "activation",
    "tau",
    "size",
    "density",
    "form",
}


class ConfigError(ValueError):
    """An invalid config: `errors` holds one line per problem (`path: message`)."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


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
            msg = f"{self.name}: {_one_line(e)}"
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


# Tasks whose kind is known without building them (the data helper's names);
# `check_against_task` checks every task's real kind after it is built.
EQUILIBRIUM_TASKS = {"steady_state"}
SEQUENCE_TASKS = {
    "oscillator_fit",
    "oscillator_ctrnn",
    "linear_example",
    "sine",
    "adding",
    "copy",
    "digits",
    "sunspots",
}


class _PathError(ValueError):
    """A validation error for a key below the model being validated."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"@{path}@ {message}")


# ------------------------------------------------------------------ helpers


def gradient_class(name: str):
    """The rnnode class behind a gradient name, or None if not available."""
    import rnnode

    return getattr(rnnode, GRADIENTS[name], None)


def optimiser_signature(name: str) -> inspect.Signature:
    import optax

    fn = getattr(optax, name, None) if not name.startswith("_") else None
    sig = None
    if callable(fn) and not inspect.isclass(fn):
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
    if sig is None or "learning_rate" not in sig.parameters:
        choices = [
            n
            for n in (
                "adam",
                "adamw",
                "sgd",
                "rmsprop",
                "adagrad",
                "lion",
                "lamb",
                "nadam",
                "adabelief",
                "radam",
                "yogi",
                "novograd",
            )
            if hasattr(optax, n)
        ]
        close = difflib.get_close_matches(name, _optax_optimisers(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(
            f"unknown optax optimiser {name!r}{hint}; e.g. " + ", ".join(choices)
        )
    return sig


def _optax_optimisers() -> list[str]:
    import optax

    names = []
    for n in dir(optax):
        fn = getattr(optax, n, None)
        if n.startswith("_") or not callable(fn) or inspect.isclass(fn):
            continue
        try:
            if "learning_rate" in inspect.signature(fn).parameters:
                names.append(n)
        except (TypeError, ValueError):
            pass
    return names


def _dynamics_signature(name: str) -> inspect.Signature:
    import rnnode

    cls = {
        "ctrnn": rnnode.CTRNN,
        "linear": rnnode.LinearExample,
        "oscillator": rnnode.DampedOscillator,
        "elman": rnnode.ElmanRNN,
        "lstm": rnnode.LSTM,
        "gru": rnnode.GRU,
        "lru": rnnode.LRU,
    }[name]
    return inspect.signature(cls.__init__)


def _check_kwargs(kwargs, sig, path, what, *, exclude=()):
    params = {
        k: p
        for k, p in sig.parameters.items()
        if k != "self"
        and k not in exclude
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    for k in kwargs:
        if k in params or accepts_any:
            continue
        close = difflib.get_close_matches(k, list(params), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        choices = ", ".join(params) or "none"
        key = k if path is None else f"{path}.{k}"
        raise _PathError(key, f"unknown option for {what}{hint}; options: {choices}")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _show(v) -> str:
    if isinstance(v, float):
        return f"{v:g}" if math.isfinite(v) else str(v)
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if v is None:
        return "null"
    return repr(v)


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def format_errors(exc: ValidationError, prefix: str = "", root=None) -> list[str]:
    """One line per pydantic error: `dotted.path: message`."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        typ = err["type"]
        ctx = err.get("ctx") or {}
        inp = err.get("input")
        msg = err["msg"]
        if typ == "value_error":
            msg = str(ctx.get("error", msg))
            msg = re.sub(r"^Value error, ", "", msg)
            m = re.match(r"^@([^@]+)@ (.*)$", msg, re.S)
            if m:
                loc = loc + m.group(1).split(".")
                msg = m.group(2)
        elif typ == "extra_forbidden":
            msg = "unknown key" + _suggest(Config if root is None else root, loc)
        elif typ == "missing":
            msg = "required key is missing"
        elif typ == "greater_than":
            msg = f"must be > {_num(ctx['gt'])}, got {_show(inp)}"
        elif typ == "greater_than_equal":
            msg = f"must be >= {_num(ctx['ge'])}, got {_show(inp)}"
        elif typ == "less_than":
            msg = f"must be < {_num(ctx['lt'])}, got {_show(inp)}"
        elif typ == "less_than_equal":
            msg = f"must be <= {_num(ctx['le'])}, got {_show(inp)}"
        elif typ == "finite_number":
            msg = f"must be a finite number, got {_show(inp)}"
        elif typ == "literal_error":
            msg = f"must be one of {ctx['expected']}, got {_show(inp)}"
        elif typ in _TYPE_WORDS:
            msg = f"must be {_TYPE_WORDS[typ]}, got {_show(inp)}"
        else:
            msg = f"{msg}, got {_show(inp)}"
        # a whole-model check (no location) reports under the prefix itself;
        # its message names the key (`task.options: num_steps: ...`)
        path = (prefix + ".".join(loc)).rstrip(".")
        lines.append(f"{path}: {msg}" if path else msg)
    # a union (e.g. `int | 'all'`) reports one error per member: keep the first
    seen, out = set(), []
    for line in lines:
        key = line.split(": ", 1)[0]
        if key not in seen:
            seen.add(key)
            out.append(line)
    return out


def _is_union_tag(p) -> bool:
    return isinstance(p, str) and (
        p in ("int", "float", "str", "bool", "none")
        or p.startswith(("literal[", "function-", "constrained-"))
        or p.endswith("Config")
    )


def _suggest(model: Any, loc: list[str]) -> str:
    for part in loc[:-1]:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return ""
        ann = field.annotation
        model = next(
            (
                a
                for a in getattr(ann, "__args__", (ann,))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if model is None:
            return ""
    keys = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], keys, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{hint}; keys here: {', '.join(keys)}"


# ------------------------------------------------------------- YAML loading


class _Loader(yaml.SafeLoader):
    """YAML 1.1 with `1e-3`, `nan` and `inf` read as floats (as people write them)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)
        |[-+]?(?:inf|Inf|INF)|(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789.iInN"),
)


def _float_constructor(loader, node):
    value = loader.construct_scalar(node).replace("_", "").lower()
    if value.lstrip("+-").lstrip(".") in ("inf",):
        return -math.inf if value.startswith("-") else math.inf
    if value.lstrip(".") == "nan":
        return math.nan
    return float(value)


_Loader.add_constructor("tag:yaml.org,2002:float", _float_constructor)


def parse_yaml(text: str, *, source: str = "config"):
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{source}: not valid YAML{where}: {problem}"]) from None


def parse_scalar(text: str, annotation: Any = None):
    """A command-line override's value, read as the type of the field it sets
    (`annotation`, `None` if not known): the text as written for a string
    field (`null` for an optional one is `None`), a YAML scalar otherwise."""
    if annotation is str or annotation == (str | None):
        if annotation is not str and text in _YAML_NULLS:
            return None
        return text
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set dotted keys (`optim.lr=1e-3`) in a raw config mapping."""
    errors = []
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            errors.append(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
            continue
        parts = key.split(".")
        node = raw
        ok = True
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str) and ".".join(parts[: i + 1]) in (
                "optim.schedule",
            ):
                child = node[part] = {"name": child}
            elif not isinstance(child, dict):
                errors.append(
                    f"{'.'.join(parts[: i + 1])}: cannot set {key} inside "
                    f"{_show(child)} (not a mapping)"
                )
                ok = False
                break
            node = child
        if ok:
            node[parts[-1]] = parse_scalar(value, _annotation(parts))
    if errors:
        raise ConfigError(errors)
    return raw


_YAML_NULLS = ("null", "Null", "NULL", "~")


def _is_section(model: type[BaseModel], key: str) -> bool:
    """Whether `key` of `model` is a section (a nested config with defaults)."""
    field = model.model_fields.get(key)
    if field is None or field.is_required():
        return False
    return isinstance(field.annotation, type) and issubclass(
        field.annotation, BaseModel
    )


def _annotation(parts: list[str]) -> Any:
    """The type of the config field at a dotted key path (`None` where it is
    not a declared field, e.g. `model.options.*` or an optimiser's keyword)."""
    model: Any = Config
    annotation = None
    for part in parts:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        # step into a section, also an optional one (`IntegratorConfig | None`)
        members = typing.get_args(annotation) or (annotation,)
        model = next(
            (t for t in members if isinstance(t, type) and issubclass(t, BaseModel)),
            None,
        )
    return annotation


def builtin_config_dir() -> Path:
    return Path(str(importlib.resources.files("rnnode") / "configs"))


def builtin_configs() -> dict[str, Path]:
    """Built-in configs by name (`quickstart`, `sine`, …)."""
    d = builtin_config_dir()
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d.is_dir() else {}


def resolve_config_path(name: str | Path | None) -> Path:
    """A config file path, or the name of a built-in config (`sine`); `None`
    is the built-in quickstart."""
    if name is None:
        name = "quickstart"
    p = Path(name)
    if p.is_file():
        return p
    builtins = builtin_configs()
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if stem in builtins and (p.parent == Path(".") or not p.exists()):
        if p.parent == Path(".") or not p.parent.exists():
            return builtins[stem]
    if p.exists():
        raise ConfigError(
            [f"config: {str(name)!r} is a directory, not a config file (YAML)"]
        )
    choices = ", ".join(builtins) or "none"
    close = difflib.get_close_matches(stem, list(builtins), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(
        [
            f"config: no file {str(name)!r} and no built-in config of that name{hint}; "
            f"built-ins: {choices}"
        ]
    )


def read_config_text(path: Path) -> str:
    """The text of a config file.

    **Raises:** `ConfigError` if the file cannot be read (a directory, no
    permission) or is not UTF-8 text (a binary file passed by mistake).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise ConfigError([f"config: cannot read {str(path)!r}: {why}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            [
                f"config: {str(path)!r} is not a text file (byte 0x{data[e.start]:02x} "
                f"at offset {e.start} is not UTF-8); a config is a YAML file"
            ]
        ) from None


def validate_config(raw: Any, *, name: str | None = None) -> Config:
    """Validate a raw mapping; raise `ConfigError` with one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError([f"config: must be a mapping of keys, got {_show(raw)}"])
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from None
    errors = _check_task_options(cfg)
    if errors:
        raise ConfigError(errors)
    if cfg.out_dir is None:
        cfg.out_dir = str(Path("runs") / (name or cfg.task.name))
    return cfg


def _check_task_options(cfg: Config) -> list[str]:
    try:
        from rnnode import data
    except ImportError:
        return []
    options = getattr(data, "TASK_OPTIONS", {})
    names = [n for n, _ in data.list_tasks()] if hasattr(data, "list_tasks") else []
    names = names or list(options)
    if names and cfg.task.name not in names:
        close = difflib.get_close_matches(cfg.task.name, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return [
            f"task.name: unknown task {cfg.task.name!r}{hint}; tasks: "
            + ", ".join(names)
        ]
    schema = options.get(cfg.task.name)
    if schema is None:
        return []
    try:
        validated = schema.model_validate(cfg.task.options)
    except ValidationError as e:
        return format_errors(e, prefix="task.options.", root=schema)
    cfg.task.options = validated.model_dump(mode="json", exclude_unset=True)
    return []


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (a path, a built-in name, or `None` for the built-in
    quickstart), apply dotted `overrides`, and validate it.

    **Raises:** `ConfigError` (one line per problem) if anything is wrong.
    """
    p = resolve_config_path(path)
    raw = parse_yaml(read_config_text(p), source=str(p)) or {}
    if not isinstance(raw, dict):
        raise ConfigError([f"config: {p} must be a mapping of keys, got {_show(raw)}"])
    raw = apply_overrides(raw, list(overrides))
    return validate_config(raw, name=p.stem)


def config_to_yaml(cfg: Config) -> str:
    data = dump_config(cfg)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def dump_config(cfg: Config) -> dict:
    """The resolved config as plain data, without keys that do not apply (so
    that it validates again as it is)."""
    data = cfg.model_dump(mode="json")
    m = data["model"]
    d = m["dynamics"]
    _drop_unused(m, d)
    if d == "stack":
        for ly in m["layers"]:
            _drop_unused(ly, ly["dynamics"])
        for key in ("hidden_size", "options"):
            m.pop(key)
    else:
        for key in ("layers", "width", "mixing", "norm"):
            m.pop(key)
    if m["integrator"] is None:
        m.pop("integrator")
    elif m["integrator"]["name"] != "diffrax":
        for key in ("solver", "rtol", "atol", "dt0", "max_steps"):
            m["integrator"].pop(key)
    s = data["optim"]["schedule"]
    if s["name"] == "constant":
        data["optim"]["schedule"] = {"name": "constant"}
    else:
        if s["name"] not in ("warmup_cosine", "warmup_constant"):
            s.pop("warmup_steps")
        if s["name"] != "exponential":
            s.pop("decay_rate")
        if s["name"] in ("exponential", "warmup_constant"):
            s.pop("end_factor")
        if s["name"] == "warmup_constant":
            s.pop("decay_steps")
    if not data["distributed"]["enabled"]:
        data["distributed"] = False
    if cfg.task.name in EQUILIBRIUM_TASKS or cfg.explicit("equilibrium"):
        if data["equilibrium"]["solver"] != "anderson":
            data["equilibrium"].pop("memory")
    else:
        data.pop("equilibrium")
    return data


def _drop_unused(m: dict, d: str) -> None:
    if d in ("linear", "oscillator"):
        m.pop("hidden_size")
    if d in ("linear", "oscillator", "lstm", "gru", "lru", "stack"):
        m.pop("activation")
    if d != "ctrnn":
        m.pop("tau")
        m.pop("form")
    if d not in ("ctrnn", "elman"):
        m.pop("density")


def check_against_task(cfg: Config, task) -> None:
    """The checks that need the built task (its kind and sizes); fills in the
    integrator's `dt` from the task when the config leaves it out.

    **Raises:** `ConfigError`.
    """
    errors = []
    kind = getattr(task, "kind", "sequence")
    g = cfg.gradient.name
    if kind == "equilibrium":
        if g not in EQUILIBRIUM_GRADIENTS:
            errors.append(
                f"gradient.name: {g} differentiates a sequence; task {task.name} is "
                "an equilibrium task: use implicit (or autodiff)"
            )
        if cfg.train.online:
            errors.append(
                f"train.online: task {task.name} is an equilibrium task, not a stream"
            )
        if cfg.model.dynamics in CELLS:
            pass
    else:
        if g == "implicit":
            errors.append(
                f"gradient.name: implicit gradients need a task with an equilibrium; "
                f"{task.name} is a {kind} task (use autodiff, bptt or rtrl)"
            )
        if cfg.explicit("equilibrium"):
            errors.append(
                f"equilibrium: only used by equilibrium tasks; {task.name} is a "
                f"{kind} task"
            )
    m = cfg.model
    if m.dynamics == "oscillator" and task.input_size != 1:
        errors.append(
            f"model.dynamics: oscillator takes one input (the force); task "
            f"{task.name} has {task.input_size}"
        )
    observe = {
        "oscillator": 2,
        "linear": task.input_size,
        "lru": task.input_size,
        "stack": m.width,
    }.get(m.dynamics, m.hidden_size)
    loss_name = task.loss if cfg.loss.name == "task" else cfg.loss.name
    width = task.output_size
    if m.readout == "none" and observe != width:
        errors.append(
            f"model.readout: none outputs the {observe} observed state value"
            f"{'s' if observe != 1 else ''}, but task {task.name} has {width} "
            f"output{'s' if width != 1 else ''} (use linear, or first)"
        )
    if m.readout == "first" and observe < width:
        errors.append(
            f"model.readout: first needs at least {width} observed state values, "
            f"{m.dynamics} has {observe}"
        )
    if loss_name == "cross_entropy" and task.loss != "cross_entropy":
        errors.append(
            f"loss.name: cross_entropy needs class labels; task {task.name} has "
            "real-valued targets"
        )
    if loss_name == "mse" and task.loss == "cross_entropy":
        errors.append(
            f"loss.name: task {task.name} has class labels; use cross_entropy"
        )
    if errors:
        raise ConfigError(errors)
    if m.integrator is not None and m.integrator.dt is None:
        m.integrator.dt = float(task.dt)
