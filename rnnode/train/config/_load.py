"""From a YAML file to a checked `Config` and back: the YAML reader, dotted
command-line overrides, the lookup of config files and built-in configs,
validation (also of a task's options), the checks against a built task, and the
resolved config as plain data.

Validation happens in two stages, both before any file is written:
`load_config` checks the file on its own, `check_against_task` checks the
combination with the task's data (sizes, the task's kind).
"""

from __future__ import annotations

import difflib
import importlib.resources
import math
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ._errors import ConfigError, format_errors, show_value
from ._names import CELLS, EQUILIBRIUM_GRADIENTS, EQUILIBRIUM_TASKS
from ._schema import Config


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
                    f"{show_value(child)} (not a mapping)"
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
        raise ConfigError([f"config: must be a mapping of keys, got {show_value(raw)}"])
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, root=Config)) from None
    errors = _check_task_options(cfg)
    if errors:
        raise ConfigError(errors)
    if cfg.out_dir is None:
        cfg.out_dir = str(Path("runs") / (name or cfg.task.name))
    return cfg


def _check_task_options(cfg: Config) -> list[str]:
    from ... import data

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
        raise ConfigError(
            [f"config: {p} must be a mapping of keys, got {show_value(raw)}"]
        )
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
