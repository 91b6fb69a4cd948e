"""Gradient methods: strategy objects passed as `gradient=` to `sequence_loss`."""

from ._base import AbstractGradient as AbstractGradient
from ._base import Autodiff as Autodiff
from ._rtrl import RTRL as RTRL
from ._rtrl import RTRLState as RTRLState
from ._implicit import AbstractEquilibriumGradient as AbstractEquilibriumGradient
from ._implicit import AbstractFixedPointSolver as AbstractFixedPointSolver
from ._implicit import Anderson as Anderson
from ._implicit import EquilibriumSolution as EquilibriumSolution
from ._implicit import FixedPointIteration as FixedPointIteration
from ._implicit import Implicit as Implicit
from ._implicit import Unrolled as Unrolled
from ._implicit import equilibrium as equilibrium
from ._implicit import equilibrium_loss as equilibrium_loss
from ._implicit import fixed_point_map as fixed_point_map
from ._implicit import implicit_adjoint as implicit_adjoint
from ._implicit import spectral_radius_estimate as spectral_radius_estimate
from ._bptt import BPTT as BPTT
from ._bptt import adjoint_trajectory as adjoint_trajectory
