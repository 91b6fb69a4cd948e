"""Gradient methods: strategy objects passed as `gradient=` to `sequence_loss`."""

from .._fixed_point import (
    AbstractFixedPointSolver as AbstractFixedPointSolver,
    Anderson as Anderson,
    EquilibriumSolution as EquilibriumSolution,
    FixedPointIteration as FixedPointIteration,
    fixed_point_map as fixed_point_map,
)
from .._step_inputs import AbstractStepInputs as AbstractStepInputs
from ._base import (
    AbstractBatchGradient as AbstractBatchGradient,
    AbstractGradient as AbstractGradient,
    AbstractStepwiseGradient as AbstractStepwiseGradient,
    Autodiff as Autodiff,
)
from ._bptt import BPTT as BPTT
from ._coverage import (
    ANY as ANY,
    ONLINE_COVERAGE as ONLINE_COVERAGE,
    coverage_table as coverage_table,
)
from ._deer import DEER as DEER
from ._elk import ELK as ELK
from ._eprop import EProp as EProp
from ._implicit import (
    AbstractEquilibriumGradient as AbstractEquilibriumGradient,
    Implicit as Implicit,
    Unrolled as Unrolled,
)
from ._kf_rtrl import KFRTRL as KFRTRL
from ._layer_local import LayerLocalRTRL as LayerLocalRTRL
from ._newton import (
    AbstractNewtonTrajectory as AbstractNewtonTrajectory,
    TrajectorySolution as TrajectorySolution,
    parallel_rollout as parallel_rollout,
)
from ._online import (
    AbstractOnlineGradient as AbstractOnlineGradient,
    OnlineState as OnlineState,
    step_keys as step_keys,
)
from ._rflo import RFLO as RFLO
from ._rtrl import RTRL as RTRL
from ._rtrl_structured import (
    Rows as Rows,
    local_jacobian as local_jacobian,
    structured_jacobians as structured_jacobians,
)
from ._rule_helpers import (
    check_cell as check_cell,
    dynamics_gradient as dynamics_gradient,
    learning_signal as learning_signal,
    unit_influence as unit_influence,
)
from ._snap import SnAp as SnAp
from ._table import (
    GRADIENT_VARIANTS as GRADIENT_VARIANTS,
    GRADIENTS as GRADIENTS,
    ONLINE_GRADIENTS as ONLINE_GRADIENTS,
    make_gradient as make_gradient,
)
from ._trace import AbstractTraceGradient as AbstractTraceGradient
from ._uoro import UORO as UORO
