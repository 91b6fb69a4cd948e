"""Tasks: generated and packaged data sets with train/test splits, time-major.

`make_task(name, options, seed=...)` returns a `Task` whose `train`, `val`
(validation) and `test` `Split`s hold `xs (T, N, input_size)`, `ys (T, N, output_size)` (or integer labels
`(T, N)`) and the time weights `a_t`; `list_tasks()` names the tasks and
`TASK_OPTIONS[name]` is the pydantic model of each task's options. No network:
the data are generated, or loaded from scikit-learn, statsmodels and reservoirpy.
`nmse` is the normalised mean squared error of the series tasks.
"""

from ._add import AddOptions as AddOptions
from ._base import Split as Split, Task as Task, nmse as nmse
from ._cognitive import (
    psychometric as psychometric,
    responses as responses,
)
from ._cognitive_tasks import (
    ContextOptions as ContextOptions,
    DecisionOptions as DecisionOptions,
    DelayMatchOptions as DelayMatchOptions,
    GoNoGoOptions as GoNoGoOptions,
    ReadySetGoOptions as ReadySetGoOptions,
    produced_intervals as produced_intervals,
)
from ._flipflop import FlipFlopOptions as FlipFlopOptions
from ._memory import AddingOptions as AddingOptions, CopyOptions as CopyOptions
from ._oscillator import (
    OscillatorCTRNNOptions as OscillatorCTRNNOptions,
    OscillatorFitOptions as OscillatorFitOptions,
)
from ._real import DigitsOptions as DigitsOptions, SunspotsOptions as SunspotsOptions
from ._registry import (
    TASK_OPTIONS as TASK_OPTIONS,
    list_tasks as list_tasks,
    make_task as make_task,
)
from ._series import (
    HenonOptions as HenonOptions,
    LaserOptions as LaserOptions,
    LorenzOptions as LorenzOptions,
    MackeyGlassOptions as MackeyGlassOptions,
)
from ._synthetic import (
    LinearExampleOptions as LinearExampleOptions,
    SineOptions as SineOptions,
    SteadyStateOptions as SteadyStateOptions,
)
