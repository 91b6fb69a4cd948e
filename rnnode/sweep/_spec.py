"""The sweep file: its schema, its validation, and the search space it defines.

A sweep file is YAML:

```yaml
config: sine                 # a config file (relative to this file, or the
                             # working directory) or a built-in name
overrides: {train.steps: 600}        # fixed for every trial
params:                              # the search space, by dotted config key
  optim.lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
  model.hidden_size: {type: categorical, choices: [16, 32, 64]}
  train.batch_size: {type: int, low: 8, high: 32, step: 8}
  gradient:                          # a group: each choice sets several keys
    type: categorical
    choices:
      bptt: {gradient.name: bptt}
      rtrl8: {gradient.name: rtrl, gradient.block: 8}
metric: val_loss                     # val_loss, train_loss or val.NAME (the
                                     # validation split: never the test split)
direction: minimize
n_trials: 20
sampler: {name: tpe, seed: 0}        # tpe | random | grid, with their options
pruner: {name: median, n_startup_trials: 2}  # median | percentile | threshold |
                                     # successive_halving | hyperband | none
```

Everything is checked before the first trial: each parameter's bounds and each
choice is applied to the base config and validated as `rnnode train` validates
overrides; an error is one line naming the key (`ConfigError`, exit code 2).
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from ..train.config import (
    ConfigError,
    apply_overrides,
    format_errors,
    load_config,
    parse_yaml,
    resolve_config_path,
    show_value,
)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = (
    "median",
    "percentile",
    "threshold",
    "successive_halving",
    "hyperband",
    "none",
)
# options of Optuna's samplers and pruners that take Python callables: not
# expressible in YAML
_CALLABLE_OPTIONS = {"gamma", "weights", "constraints_func", "search_space"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class FloatParam(_Strict):
    """`low <= value <= high`, uniformly or (with `log: true`) log-uniformly;
    `step` makes it discrete."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: Annotated[float, Field(gt=0)] | None = None


class IntParam(_Strict):
    """An integer `low <= value <= high` in steps of `step` (or log-uniform)."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: Annotated[int, Field(ge=1)] = 1


class CategoricalParam(_Strict):
    """One of `choices`: a list of values for the key, or a mapping of labels to
    groups of overrides (`{label: {dotted.key: value, ...}}`, the parameter's name
    then being a free label)."""

    type: Literal["categorical"]
    choices: list[Any] | dict[str, dict[str, Any]]


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class _Options(BaseModel):
    """`name` plus the options of the Optuna class it names."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SamplerSpec(_Options):
    name: Literal["tpe", "random", "grid"] = "tpe"
    seed: Annotated[int, Field(ge=0)] | None = 0


class PrunerSpec(_Options):
    name: Literal[
        "median", "percentile", "threshold", "successive_halving", "hyperband", "none"
    ] = "median"


class SweepSpec(_Strict):
    """A validated sweep file (see the module docstring for the format)."""

    description: str = ""
    config: str = "quickstart"
    overrides: dict[str, Any] = {}
    params: dict[str, Param]
    metric: str = "val_loss"
    direction: Literal["minimize", "maximize"] = "minimize"
    n_trials: Annotated[int, Field(ge=1)] | None = None
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    storage: str | None = None
    study_name: str | None = None
    out_dir: str | None = None
    heartbeat_s: Annotated[int, Field(ge=1)] = 20
    grace_period_s: Annotated[int, Field(ge=1)] | None = None
    max_retries: Annotated[int, Field(ge=0)] = 3

    # set by `validate_spec`: the sweep's name (the file's stem) and the base
    # config's resolved path
    _name: str = PrivateAttr("sweep")
    _config_path: str = PrivateAttr("")

    @property
    def name(self) -> str:
        return self._name

    @property
    def config_path(self) -> str:
        return self._config_path

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _shorthand(cls, v):
        return {"name": v} if isinstance(v, str) else v

    # ---------------------------------------------------------- search space

    def fixed_overrides(self) -> list[str]:
        """The fixed overrides as `KEY=VALUE` strings."""
        return _as_overrides(self.overrides)

    def choice_labels(self, name: str) -> list:
        """The values Optuna chooses among for a categorical parameter: the
        choices themselves if they are plain values, else labels."""
        p = self.params[name]
        if isinstance(p.choices, dict):
            return list(p.choices)
        if all(_primitive(c) for c in p.choices):
            return list(p.choices)
        return [json.dumps(c) for c in p.choices]

    def overrides_for(self, params: dict[str, Any]) -> list[str]:
        """The overrides that a trial's parameters (as Optuna holds them) make."""
        out = []
        for name, value in params.items():
            p = self.params[name]
            if isinstance(p, CategoricalParam):
                if isinstance(p.choices, dict):
                    out += _as_overrides(p.choices[value])
                    continue
                labels = self.choice_labels(name)
                value = p.choices[labels.index(value)]
            out += _as_overrides({name: value})
        return out

    def suggest(self, trial) -> dict[str, Any]:
        """Sample every parameter on an `optuna.Trial`; returns its params."""
        for name, p in self.params.items():
            if isinstance(p, FloatParam):
                trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
            elif isinstance(p, IntParam):
                trial.suggest_int(name, p.low, p.high, log=p.log, step=p.step)
            else:
                trial.suggest_categorical(name, self.choice_labels(name))
        return dict(trial.params)

    def grid(self) -> dict[str, list]:
        """The grid sampler's search space (every value of every parameter)."""
        space = {}
        for name, p in self.params.items():
            if isinstance(p, CategoricalParam):
                space[name] = self.choice_labels(name)
            elif isinstance(p, IntParam):
                space[name] = list(range(p.low, p.high + 1, p.step))
            else:
                n = int(math.floor((p.high - p.low) / p.step + 1e-9))
                space[name] = [float(p.low + i * p.step) for i in range(n + 1)]
        return space

    def make_sampler(self, *, seed_offset: int = 0):
        import optuna

        s = self.sampler
        seed = None if s.seed is None else s.seed + seed_offset
        if s.name == "grid":
            return optuna.samplers.GridSampler(self.grid(), seed=seed, **s.options)
        cls = {
            "tpe": optuna.samplers.TPESampler,
            "random": optuna.samplers.RandomSampler,
        }
        return cls[s.name](seed=seed, **s.options)

    def make_pruner(self):

        cls = _pruner_class(self.pruner.name)
        return cls(**self.pruner.options)

    def fingerprint(self) -> dict:
        """What a study must keep to stay one study: the base config with the
        fixed overrides (resolved), the search space and the objective (not `n_trials`, which may
        grow, nor the sampler or pruner, which may change between sessions)."""
        base = load_config(self.config_path, self.fixed_overrides())
        data = base.model_dump(mode="json")
        for key in ("out_dir", "description"):
            data.pop(key, None)
        return {
            "config": data,
            "params": {k: v.model_dump(mode="json") for k, v in self.params.items()},
            "metric": self.metric,
            "direction": self.direction,
        }


def load_spec(path: str | Path, overrides: list[str] = ()) -> SweepSpec:
    """Read and validate a sweep file in full (see the module docstring).

    **Arguments:**

    - `path`: the YAML file.
    - `overrides`: dotted `KEY=VALUE` overrides of the sweep file itself
      (`n_trials=8`, `sampler.seed=1`).

    **Returns:** a `SweepSpec`.

    **Raises:** `ConfigError` (one line per problem) before anything runs.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError([f"sweep: cannot read {str(p)!r}: {e.strerror}"]) from None
    raw = parse_yaml(text, source=str(p)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"sweep: {p} must be a mapping of keys, got {show_value(raw)}"]
        )
    raw = apply_overrides(raw, list(overrides))
    return validate_spec(raw, name=p.stem, base_dir=p.parent)


def validate_spec(
    raw: dict, *, name: str = "sweep", base_dir: str | Path = "."
) -> SweepSpec:
    """Validate a raw sweep mapping; `base_dir` is where a relative `config:`
    path is looked for first. **Raises:** `ConfigError`."""
    params = raw.get("params")
    if isinstance(params, dict):
        for key, p in params.items():
            kind = p.get("type") if isinstance(p, dict) else None
            if kind not in ("float", "int", "categorical"):
                raise ConfigError(
                    [
                        f"params.{key}.type: must be float, int or categorical, "
                        f"got {show_value(kind)}"
                        if isinstance(p, dict)
                        else f"params.{key}: must be a mapping with a type "
                        f"(float, int or categorical), got {show_value(p)}"
                    ]
                )
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, root=SweepSpec)) from None
    spec._name = name
    near = Path(base_dir) / spec.config
    spec._config_path = str(
        near.resolve() if near.is_file() else resolve_config_path(spec.config)
    )
    errors = _check(spec)
    if errors:
        raise ConfigError(errors)
    return spec


# ------------------------------------------------------------------ checks


def _check(spec: SweepSpec) -> list[str]:
    if not spec.params:
        return ["params: empty; give at least one parameter to search"]
    errors = []
    for name, p in spec.params.items():
        errors += _check_range(name, p, spec.sampler.name)
    if errors:
        return errors
    fixed = spec.fixed_overrides()
    try:
        base = load_config(spec.config_path, fixed)
    except ConfigError as e:
        return [f"overrides: {line}" for line in e.errors]
    # each parameter's extreme values and each choice, one at a time, on the base
    for name, p in spec.params.items():
        if isinstance(p, CategoricalParam):
            labels = spec.choice_labels(name)
            values = labels
            if len(set(map(str, labels))) != len(labels):
                errors.append(f"params.{name}.choices: the choices repeat")
                continue
        else:
            values = [p.low, p.high]
        for v in values:
            try:
                load_config(spec.config_path, [*fixed, *spec.overrides_for({name: v})])
            except ConfigError as e:
                errors.append(f"params.{name}: {show_value(v)}: {e.errors[0]}")
                break
    if spec.sampler.name == "grid":
        size = int(np.prod([len(v) for v in spec.grid().values()]))
        if spec.n_trials is None:
            spec.n_trials = size
        elif spec.n_trials > size:
            errors.append(
                f"n_trials: the grid has {size} points, got {spec.n_trials}; "
                "leave n_trials out to run the whole grid"
            )
    elif spec.n_trials is None:
        spec.n_trials = 20
    errors += _check_options("sampler", spec.sampler, spec)
    errors += _check_options("pruner", spec.pruner, spec)
    errors += _check_metric(spec, base)
    if spec.storage is not None and "://" not in spec.storage:
        errors.append(
            f"storage: expected a database URL such as sqlite:///path/study.db, "
            f"got {spec.storage!r}"
        )
    return errors


def _check_range(name: str, p, sampler: str) -> list[str]:
    where = f"params.{name}"
    if isinstance(p, CategoricalParam):
        if not p.choices:
            return [f"{where}.choices: empty; give at least one choice"]
        if isinstance(p.choices, dict):
            for label, group in p.choices.items():
                if not group:
                    return [f"{where}.choices.{label}: empty group of overrides"]
        return []
    if not p.low < p.high:
        return [
            f"{where}: empty range: low {show_value(p.low)} must be < high {show_value(p.high)}"
        ]
    if p.log and p.low <= 0:
        return [f"{where}.low: a log range must be > 0, got {show_value(p.low)}"]
    has_step = p.step is not None if isinstance(p, FloatParam) else p.step != 1
    if p.log and has_step:
        return [f"{where}.step: a log range has no step (leave one of them out)"]
    if sampler == "grid" and isinstance(p, FloatParam) and p.step is None:
        return [
            f"{where}: the grid sampler needs a `step` for a float range "
            "(or give the values as a categorical)"
        ]
    return []


def _check_options(what: str, s: _Options, spec: SweepSpec) -> list[str]:
    cls = (
        _pruner_class(s.name)
        if what == "pruner"
        else {"tpe": "TPESampler", "random": "RandomSampler", "grid": "GridSampler"}[
            s.name
        ]
    )
    if isinstance(cls, str):
        import optuna

        cls = getattr(optuna.samplers, cls)
    allowed = [
        k
        for k in inspect.signature(cls).parameters
        if k not in _CALLABLE_OPTIONS and k != "seed"
    ]
    for k in s.options:
        if k not in allowed:
            close = difflib.get_close_matches(k, allowed, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return [
                f"{what}.{k}: unknown option for {s.name}{hint}; options: "
                + (", ".join(allowed) or "none")
            ]
    try:
        spec.make_pruner() if what == "pruner" else spec.make_sampler()
    except (ValueError, TypeError) as e:
        return [f"{what}: {s.name}: {str(e).splitlines()[0]}"]
    return []


def _check_metric(spec: SweepSpec, cfg) -> list[str]:
    if spec.metric == "test_loss" or spec.metric.startswith("test."):
        # choosing by the test split makes its numbers too good
        valid = "val" + spec.metric[len("test") :]
        return [
            f"metric: {spec.metric} scores the test split, which a sweep must not "
            f"see (it is scored once, at the end of each run); use the validation "
            f"one, {valid}"
        ]
    names = metric_names(cfg)
    if spec.metric in names:
        return []
    close = difflib.get_close_matches(spec.metric, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return [
        f"metric: unknown metric {spec.metric!r}{hint}; metrics: {', '.join(names)}"
    ]


def metric_names(cfg) -> list[str]:
    """The metrics a run of `cfg` reports at each evaluation, what a sweep may
    select by: `val_loss`, `train_loss` and `val.NAME` for each of the task's
    metrics (on the validation split)."""
    from .. import data

    task = data.make_task(cfg.task.name, dict(cfg.task.options), seed=cfg.task.seed)
    split = task.val if task.val is not None else task.test
    outs = np.zeros((*split.xs.shape[:2], task.output_size))
    return ["val_loss", "train_loss"] + [f"val.{k}" for k in task.metrics(outs, split)]


def metric_value(record: dict, metric: str) -> float:
    """The metric `val_loss`, `train_loss` or `val.NAME` of an evaluation
    record of `metrics.jsonl` (or of a run's summary)."""
    if metric.startswith("val."):
        return float(record["val"][metric[len("val.") :]])
    return float(record[metric])


def _pruner_class(name: str):
    import optuna

    return {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "threshold": optuna.pruners.ThresholdPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }[name]


def _primitive(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _as_overrides(mapping: dict[str, Any]) -> list[str]:
    """`KEY=VALUE` as typed on the command line: a string as it is (a string
    field takes the text as written), anything else as JSON, which the config
    loader reads back as YAML."""
    return [
        f"{k}={v}" if isinstance(v, str) else f"{k}={json.dumps(v)}"
        for k, v in mapping.items()
    ]
