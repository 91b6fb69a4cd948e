"""The task registry: `make_task`, `TASK_OPTIONS`, `list_tasks`."""

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel

from ._add import AddOptions, add
from ._base import Task
from ._cognitive_tasks import (
    ContextOptions,
    DecisionOptions,
    DelayMatchOptions,
    GoNoGoOptions,
    ReadySetGoOptions,
    context,
    decision,
    delay_match,
    go_nogo,
    ready_set_go,
)
from ._flipflop import FlipFlopOptions, flipflop
from ._memory import AddingOptions, CopyOptions, adding, copy
from ._oscillator import (
    OscillatorCTRNNOptions,
    OscillatorFitOptions,
    oscillator_ctrnn,
    oscillator_fit,
)
from ._real import DigitsOptions, SunspotsOptions, digits, sunspots
from ._series import (
    HenonOptions,
    LaserOptions,
    LorenzOptions,
    MackeyGlassOptions,
    henon,
    laser,
    lorenz,
    mackey_glass,
)
from ._synthetic import (
    LinearExampleOptions,
    SineOptions,
    SteadyStateOptions,
    linear_example,
    sine,
    steady_state,
)

_TASKS = {
    "oscillator_fit": (oscillator_fit, OscillatorFitOptions),
    "oscillator_ctrnn": (oscillator_ctrnn, OscillatorCTRNNOptions),
    "linear_example": (linear_example, LinearExampleOptions),
    "sine": (sine, SineOptions),
    "adding": (adding, AddingOptions),
    "copy": (copy, CopyOptions),
    "add": (add, AddOptions),
    "digits": (digits, DigitsOptions),
    "sunspots": (sunspots, SunspotsOptions),
    "steady_state": (steady_state, SteadyStateOptions),
    "flipflop": (flipflop, FlipFlopOptions),
    "henon": (henon, HenonOptions),
    "mackey_glass": (mackey_glass, MackeyGlassOptions),
    "lorenz": (lorenz, LorenzOptions),
    "laser": (laser, LaserOptions),
    "decision": (decision, DecisionOptions),
    "context": (context, ContextOptions),
    "delay_match": (delay_match, DelayMatchOptions),
    "go_nogo": (go_nogo, GoNoGoOptions),
    "ready_set_go": (ready_set_go, ReadySetGoOptions),
}

TASK_OPTIONS: dict[str, type[BaseModel]] = {
    name: options for name, (_, options) in _TASKS.items()
}
"""The options model of each task (pydantic, unknown keys rejected):
`TASK_OPTIONS[name].model_validate(dict)` checks a config's `task.options`."""


def make_task(
    name: str,
    options: Mapping[str, Any] | BaseModel | None = None,
    *,
    seed: int = 0,
) -> Task:
    """Build a task's data.

    **Arguments:**

    - `name`: one of the names of `list_tasks()`.
    - `options`: the task's options as a dict (validated by `TASK_OPTIONS[name]`;
      missing keys take their defaults) or an instance of that model; `None` for
      the defaults.
    - `seed`: a non-negative integer; the same seed gives the same data.

    **Returns:** a `Task`.

    **Raises:** `ValueError` for an unknown name or a bad seed, and
    `pydantic.ValidationError` (a `ValueError`) naming the key of a bad option.
    """
    if name not in _TASKS:
        raise ValueError(f"unknown task `{name}`; choose one of: {', '.join(_TASKS)}")
    build, model = _TASKS[name]
    if options is None:
        options = model()
    elif isinstance(options, Mapping):
        options = model.model_validate(dict(options))
    elif not isinstance(options, model):
        raise ValueError(
            f"`options` of task `{name}` must be a dict or a `{model.__name__}`, "
            f"got {type(options).__name__}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}")
    return build(options, seed=int(seed))


def list_tasks() -> list[tuple[str, str]]:
    """The tasks as `(name, one-line description)` pairs."""
    return [
        (name, " ".join(build.__doc__.split("\n\n")[0].split()))
        for name, (build, _) in _TASKS.items()
    ]
