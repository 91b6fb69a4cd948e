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
from ._eprop import EProp as EProp
from ._implicit import (
    AbstractEquilibriumGradient as AbstractEquilibriumGradient,
    Implicit as Implicit,
    Unrolled as Unrolled,
)
from ._kf_rtrl import KFRTRL as KFRTRL
from ._layer_local import LayerLocalRTRL as LayerLocalRTRL
from ._online import (
    AbstractOnlineGradient as AbstractOnlineGradient,
    AbstractTraceGradient as AbstractTraceGradient,
    OnlineState as OnlineState,
)
from ._rflo import RFLO as RFLO
from ._rtrl import RTRL as RTRL, RTRLState as RTRLState
from ._snap import SnAp as SnAp
from ._uoro import UORO as UORO
