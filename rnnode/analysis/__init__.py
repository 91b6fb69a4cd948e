"""Instruments for understanding recurrent networks as dynamical systems:
Jacobian products and spectra, gradient norm against lag, Lyapunov exponents,
fixed points and their linearisation, the alignment of approximate gradients
with the exact one, and `run_analysis` for saved runs."""

from ._adjoint import adjoint_trajectory as adjoint_trajectory
from ._alignment import (
    GradientAlignment as GradientAlignment,
    alignment_methods as alignment_methods,
    gradient_alignment as gradient_alignment,
    plot_alignment as plot_alignment,
)
from ._continuation import (
    Bifurcation as Bifurcation,
    Branch as Branch,
    Continuation as Continuation,
    continue_fixed_points as continue_fixed_points,
    plot_bifurcation as plot_bifurcation,
)
from ._equilibrium import (
    implicit_adjoint as implicit_adjoint,
    spectral_radius_estimate as spectral_radius_estimate,
)
from ._fixed_point_plots import (
    leading_eigenvalues as leading_eigenvalues,
    plot_fixed_points as plot_fixed_points,
)
from ._fixed_point_result import (
    FATES as FATES,
    STABILITIES as STABILITIES,
    Affine as Affine,
    FixedPoints as FixedPoints,
)
from ._fixed_points import (
    find_fixed_points as find_fixed_points,
    linearisation as linearisation,
    newton_polish as newton_polish,
)
from ._jacobians import (
    JacobianSpectrum as JacobianSpectrum,
    gradient_norm_vs_lag as gradient_norm_vs_lag,
    jacobian_norm_vs_lag as jacobian_norm_vs_lag,
    jacobian_product as jacobian_product,
    jacobian_product_norm as jacobian_product_norm,
    jacobian_products as jacobian_products,
    jacobian_spectrum as jacobian_spectrum,
    matrix_power_norms as matrix_power_norms,
    plot_jacobian_spectrum as plot_jacobian_spectrum,
    plot_norm_vs_lag as plot_norm_vs_lag,
    step_jacobians as step_jacobians,
)
from ._line_attractor import (
    LineAttractor as LineAttractor,
    line_attractor as line_attractor,
    plot_line_attractor as plot_line_attractor,
)
from ._lyapunov import (
    LyapunovSpectrum as LyapunovSpectrum,
    lyapunov_exponents as lyapunov_exponents,
    plot_lyapunov as plot_lyapunov,
)
from ._parallel import (
    Parallelisability as Parallelisability,
    parallelisability as parallelisability,
)
from ._run import (
    ANALYSES as ANALYSES,
    fixed_point_table as fixed_point_table,
    line_attractor_table as line_attractor_table,
    run_analysis as run_analysis,
)
from ._tracking import (
    Tracks as Tracks,
    plot_tracks as plot_tracks,
    track_fixed_points as track_fixed_points,
)
