"""Sweeps: search a config's hyperparameters with Optuna.

```python
from rnnode.sweep import load_spec, run_sweep, open_study, write_report

spec = load_spec("configs/sweeps/sine.yaml")   # validated in full
run_sweep(spec, workers=2)          # trials are ordinary runs in <out_dir>/trial_N/
report = write_report(open_study(spec), spec)  # trials.md/.csv, best.yaml, plots
```

The command line: `rnnode sweep SPEC.yaml [--workers N] [--storage URL]
[--report]`. Optuna is imported only when a study is opened.
"""

# the `rnnode sweep` command, for the CLI
from ._command import (
    add_sweep_parser as add_sweep_parser,
    sweep_command as sweep_command,
)
from ._report import trial_rows as trial_rows, write_report as write_report
from ._spec import (
    SweepSpec as SweepSpec,
    load_spec as load_spec,
    metric_names as metric_names,
    validate_spec as validate_spec,
)
from ._study import (
    WorkerFailed as WorkerFailed,
    counts as counts,
    open_study as open_study,
    run_sweep as run_sweep,
    storage_url as storage_url,
    sweep_dir as sweep_dir,
)
