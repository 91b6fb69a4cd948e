"""Training: configs, the training loop, runs and checkpoints.

```python
from rnnode.train import load_config, train, evaluate, load_run

cfg = load_config("configs/sine.yaml", ["optim.lr=3e-3"])
summary = train(cfg)                      # writes cfg.out_dir/…
model, cfg, task = load_run(summary["run_dir"])
```
"""

from ._build import (
    build_model as build_model,
    run_dtype as run_dtype,
    step_loss as step_loss,
    x64_context as x64_context,
)
from ._checkpoint import (
    CheckpointError as CheckpointError,
    CheckpointWarning as CheckpointWarning,
)
from ._environment import format_environment as format_environment
from ._metrics import read_losses as read_losses, to_json as to_json
from ._plots import plot_psychometric as plot_psychometric
from ._run import (
    StopTraining as StopTraining,
    TrainingDiverged as TrainingDiverged,
    train as train,
)
from ._saved import (
    EvaluationFailed as EvaluationFailed,
    evaluate as evaluate,
    load_checkpoints as load_checkpoints,
    load_run as load_run,
    load_run_config as load_run_config,
)
from .config import (
    Config as Config,
    ConfigError as ConfigError,
    builtin_configs as builtin_configs,
    load_config as load_config,
    validate_config as validate_config,
)
