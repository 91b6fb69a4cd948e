"""rnnode: recurrent networks as differentiable dynamical systems, in JAX."""

import importlib.metadata

from . import analysis as analysis, sweep as sweep, train as train
from ._cells import GRU as GRU, LSTM as LSTM, ElmanRNN as ElmanRNN
from ._dynamics import (
    CTRNN as CTRNN,
    AbstractCell as AbstractCell,
    AbstractDynamics as AbstractDynamics,
    AbstractNoisyField as AbstractNoisyField,
    AbstractSequenceCell as AbstractSequenceCell,
    AbstractVectorField as AbstractVectorField,
    DampedOscillator as DampedOscillator,
    LinearExample as LinearExample,
    recurrent_weights as recurrent_weights,
)
from ._equilibrium import (
    equilibrium as equilibrium,
    equilibrium_loss as equilibrium_loss,
)
from ._integrate import (
    RK4 as RK4,
    AbstractIntegrator as AbstractIntegrator,
    Diffrax as Diffrax,
    Euler as Euler,
    Heun as Heun,
)
from ._iterative import (
    RESULTS as RESULTS,
    IterativeSolution as IterativeSolution,
    iterative_inverse as iterative_inverse,
    neumann_solve as neumann_solve,
)
from ._linear import Linear as Linear
from ._losses import (
    cross_entropy as cross_entropy,
    integral_weights as integral_weights,
    last_step_weights as last_step_weights,
    mask_weights as mask_weights,
    mse as mse,
    uniform_weights as uniform_weights,
)
from ._lru import LRU as LRU
from ._model import Model as Model
from ._nn_ode import NNODESolution as NNODESolution, solve_ode_nn as solve_ode_nn
from ._sequence import sequence_loss as sequence_loss
from ._stack import Stack as Stack
from .analysis import (
    adjoint_trajectory as adjoint_trajectory,
    implicit_adjoint as implicit_adjoint,
    spectral_radius_estimate as spectral_radius_estimate,
)
from .gradients import (
    BPTT as BPTT,
    DEER as DEER,
    ELK as ELK,
    GRADIENT_VARIANTS as GRADIENT_VARIANTS,
    GRADIENTS as GRADIENTS,
    KFRTRL as KFRTRL,
    ONLINE_COVERAGE as ONLINE_COVERAGE,
    ONLINE_GRADIENTS as ONLINE_GRADIENTS,
    RFLO as RFLO,
    RTRL as RTRL,
    UORO as UORO,
    AbstractBatchGradient as AbstractBatchGradient,
    AbstractEquilibriumGradient as AbstractEquilibriumGradient,
    AbstractFixedPointSolver as AbstractFixedPointSolver,
    AbstractGradient as AbstractGradient,
    AbstractNewtonTrajectory as AbstractNewtonTrajectory,
    AbstractOnlineGradient as AbstractOnlineGradient,
    AbstractStepInputs as AbstractStepInputs,
    AbstractStepwiseGradient as AbstractStepwiseGradient,
    AbstractTraceGradient as AbstractTraceGradient,
    Anderson as Anderson,
    Autodiff as Autodiff,
    EProp as EProp,
    EquilibriumSolution as EquilibriumSolution,
    FixedPointIteration as FixedPointIteration,
    Implicit as Implicit,
    LayerLocalRTRL as LayerLocalRTRL,
    OnlineState as OnlineState,
    Rows as Rows,
    SnAp as SnAp,
    TrajectorySolution as TrajectorySolution,
    Unrolled as Unrolled,
    check_cell as check_cell,
    coverage_table as coverage_table,
    dynamics_gradient as dynamics_gradient,
    fixed_point_map as fixed_point_map,
    learning_signal as learning_signal,
    local_jacobian as local_jacobian,
    make_gradient as make_gradient,
    parallel_rollout as parallel_rollout,
    step_keys as step_keys,
    structured_jacobians as structured_jacobians,
    unit_influence as unit_influence,
)

__version__ = importlib.metadata.version("rnnode")
