"""Gradient methods: strategy objects passed as `gradient=` to `sequence_loss`."""

from .._step_inputs import AbstractStepInputs as AbstractStepInputs
from ._base import (
    AbstractBatchGradient as AbstractBatchGradient,
    AbstractGradient as AbstractGradient,
    AbstractStepwiseGradient as AbstractStepwiseGradient,
    Autodiff as Autodiff,
)
from ._bptt import BPTT as BPTT, adjoint_trajectory as adjoint_trajectory
from ._deer import DEER as DEER
from ._elk import ELK as ELK
from ._eprop import EProp as EProp
from ._implicit import (
    AbstractEquilibriumGradient as AbstractEquilibriumGradient,
    AbstractFixedPointSolver as AbstractFixedPointSolver,
    Anderson as Anderson,
    EquilibriumSolution as EquilibriumSolution,
    FixedPointIteration as FixedPointIteration,
    Implicit as Implicit,
    Unrolled as Unrolled,
    equilibrium as equilibrium,
    equilibrium_loss as equilibrium_loss,
    fixed_point_map as fixed_point_map,
    implicit_adjoint as implicit_adjoint,
    spectral_radius_estimate as spectral_radius_estimate,
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
    AbstractTraceGradient as AbstractTraceGradient,
    OnlineState as OnlineState,
)
from ._rflo import RFLO as RFLO
from ._rtrl import RTRL as RTRL, RTRLState as RTRLState
from ._snap import SnAp as SnAp
from ._uoro import UORO as UORO
