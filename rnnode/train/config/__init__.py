"""The experiment config: a YAML file validated by pydantic models.

Four rooms: `_names` (the tables of names and the look-ups behind them),
`_schema` (the pydantic models of the sections),
`_load` (YAML reading, dotted overrides, file lookup, validation, the checks
against a built task, the resolved config as data) and `_errors`
(`ConfigError` and one line per problem, naming the dotted key path:
`model.integrator.dt: must be > 0, got -0.1`). The names below are this
package's interface to the rest of rnnode (`train`, `sweep`, the CLI).
"""

from ._errors import (
    ConfigError as ConfigError,
    format_errors as format_errors,
    one_line as one_line,
    show_value as show_value,
)
from ._load import (
    apply_overrides as apply_overrides,
    builtin_config_dir as builtin_config_dir,
    builtin_configs as builtin_configs,
    check_against_task as check_against_task,
    config_to_yaml as config_to_yaml,
    dump_config as dump_config,
    load_config as load_config,
    parse_scalar as parse_scalar,
    parse_yaml as parse_yaml,
    read_config_text as read_config_text,
    resolve_config_path as resolve_config_path,
    validate_config as validate_config,
)
from ._names import (
    CELLS as CELLS,
    DIFFRAX_SOLVERS as DIFFRAX_SOLVERS,
    DYNAMICS as DYNAMICS,
    EQUILIBRIUM_GRADIENTS as EQUILIBRIUM_GRADIENTS,
    EQUILIBRIUM_TASKS as EQUILIBRIUM_TASKS,
    GRADIENTS as GRADIENTS,
    LAYERS as LAYERS,
    ONLINE_GRADIENTS as ONLINE_GRADIENTS,
    SEQUENCE_TASKS as SEQUENCE_TASKS,
    VECTOR_FIELDS as VECTOR_FIELDS,
    gradient_class as gradient_class,
    optimiser_signature as optimiser_signature,
)
from ._schema import (
    Config as Config,
    DistributedConfig as DistributedConfig,
    EquilibriumConfig as EquilibriumConfig,
    GradientConfig as GradientConfig,
    IntegratorConfig as IntegratorConfig,
    LayerConfig as LayerConfig,
    LossConfig as LossConfig,
    ModelConfig as ModelConfig,
    OptimConfig as OptimConfig,
    ScheduleConfig as ScheduleConfig,
    TaskConfig as TaskConfig,
    TrainConfig as TrainConfig,
)
