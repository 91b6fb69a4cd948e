"""rnnode: recurrent networks as differentiable dynamical systems, in JAX."""

import importlib.metadata

from ._cells import GRU as GRU
from ._cells import LSTM as LSTM
from ._cells import ElmanRNN as ElmanRNN
from ._dynamics import (
    CTRNN as CTRNN,
)
from ._dynamics import (
    AbstractCell as AbstractCell,
)
from ._dynamics import (
    AbstractDynamics as AbstractDynamics,
)
from ._dynamics import (
    AbstractVectorField as AbstractVectorField,
)
from ._dynamics import (
    DampedOscillator as DampedOscillator,
)
from ._dynamics import (
    LinearExample as LinearExample,
)
from ._integrate import (
    RK4 as RK4,
)
from ._integrate import (
    AbstractIntegrator as AbstractIntegrator,
)
from ._integrate import (
    Diffrax as Diffrax,
)
from ._integrate import (
    Euler as Euler,
)
from ._integrate import (
    Heun as Heun,
)
from ._losses import (
    cross_entropy as cross_entropy,
)
from ._losses import (
    integral_weights as integral_weights,
)
from ._losses import (
    last_step_weights as last_step_weights,
)
from ._losses import (
    mask_weights as mask_weights,
)
from ._losses import (
    mse as mse,
)
from ._losses import (
    uniform_weights as uniform_weights,
)
from ._model import Linear as Linear
from ._model import Model as Model
from ._nn_ode import NNODESolution as NNODESolution
from ._nn_ode import solve_ode_nn as solve_ode_nn
from . import analysis as analysis
from ._sequence import sequence_loss as sequence_loss
from .gradients import AbstractGradient as AbstractGradient
from .gradients import Autodiff as Autodiff
from .gradients import RTRL as RTRL
from .gradients import RTRLState as RTRLState
from ._iterative import RESULTS as RESULTS
from ._iterative import IterativeSolution as IterativeSolution
from ._iterative import iterative_inverse as iterative_inverse
from ._iterative import neumann_solve as neumann_solve
from .gradients import AbstractEquilibriumGradient as AbstractEquilibriumGradient
from .gradients import AbstractFixedPointSolver as AbstractFixedPointSolver
from .gradients import Anderson as Anderson
from .gradients import EquilibriumSolution as EquilibriumSolution
from .gradients import FixedPointIteration as FixedPointIteration
from .gradients import Implicit as Implicit
from .gradients import Unrolled as Unrolled
from .gradients import equilibrium as equilibrium
from .gradients import equilibrium_loss as equilibrium_loss
from .gradients import fixed_point_map as fixed_point_map
from .gradients import implicit_adjoint as implicit_adjoint
from .gradients import spectral_radius_estimate as spectral_radius_estimate
from .gradients import BPTT as BPTT
from .gradients import adjoint_trajectory as adjoint_trajectory

__version__ = importlib.metadata.version("rnnode")
