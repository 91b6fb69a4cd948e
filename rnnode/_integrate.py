"""How time is stepped: integrators turn a vector field into a step map
`y_{i+1} = Φ(t_i, y_i, x_i, x_{i+1})` over one fixed interval `dt`.

Inputs are samples `x_i` at the observation times `t_i = t_0 + i dt`. Between two
samples the input is held (`interpolation="constant"`, a zero-order hold) or
interpolated linearly (`interpolation="linear"`).
"""

import abc
import math

import diffrax
import equinox as eqx
from jaxtyping import Array, ArrayLike, Float

from ._dynamics import AbstractVectorField

_INTERPOLATIONS = ("constant", "linear")


class AbstractIntegrator(eqx.Module):
    """Base of the integrators: one method, `step`, advancing by `dt`."""

    dt: eqx.AbstractVar[float]
    interpolation: eqx.AbstractVar[str]

    @abc.abstractmethod
    def step(
        self,
        field: AbstractVectorField,
        t: Float[ArrayLike, ""],
        y: Float[Array, " state"],
        x: Float[Array, " input"],
        x_next: Float[Array, " input"],
    ) -> Float[Array, " state"]:
        """Advance `y` from `t` to `t + dt` with inputs `x` at `t`, `x_next` at `t + dt`."""


class Euler(AbstractIntegrator):
    """Explicit Euler, `y_{i+1} = y_i + dt F(t_i, y_i, x_i)`; first order."""

    dt: float = eqx.field(static=True)
    interpolation: str = eqx.field(static=True, default="constant")

    def __check_init__(self):
        _check_integrator(self)

    def step(self, field, t, y, x, x_next):
        del x_next
        return y + self.dt * field(t, y, x)


class Heun(AbstractIntegrator):
    """Heun's method (explicit trapezoid); second order."""

    dt: float = eqx.field(static=True)
    interpolation: str = eqx.field(static=True, default="constant")

    def __check_init__(self):
        _check_integrator(self)

    def step(self, field, t, y, x, x_next):
        h = self.dt
        x1 = input_at(self.interpolation, 1.0, x, x_next)
        k1 = field(t, y, x)
        k2 = field(t + h, y + h * k1, x1)
        return y + 0.5 * h * (k1 + k2)


class RK4(AbstractIntegrator):
    """The classical fourth-order Runge-Kutta method."""

    dt: float = eqx.field(static=True)
    interpolation: str = eqx.field(static=True, default="constant")

    def __check_init__(self):
        _check_integrator(self)

    def step(self, field, t, y, x, x_next):
        h = self.dt
        xm = input_at(self.interpolation, 0.5, x, x_next)
        x1 = input_at(self.interpolation, 1.0, x, x_next)
        k1 = field(t, y, x)
        k2 = field(t + 0.5 * h, y + 0.5 * h * k1, xm)
        k3 = field(t + 0.5 * h, y + 0.5 * h * k2, xm)
        k4 = field(t + h, y + h * k3, x1)
        return y + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


class Diffrax(AbstractIntegrator):
    """Integrate between observation times with any diffrax solver.

    **Arguments:**

    - `dt`: the interval between observations (input samples and saved states).
    - `solver`: a diffrax solver, e.g. `diffrax.Tsit5()` (default).
    - `stepsize_controller`: e.g. `diffrax.PIDController(rtol=1e-6, atol=1e-8)`;
      the default `ConstantStepSize()` takes one solver step of `dt0` at a time.
    - `dt0`: the initial (or constant) inner step. `None` (default) means `dt`
      with a constant step size, and lets an adaptive controller pick its own.
    - `adjoint`: how diffrax differentiates a solve (default
      `RecursiveCheckpointAdjoint()`); this is what `Autodiff` and `BPTT` use to
      pull back through one interval.
    - `max_steps`: inner solver steps allowed per interval; exceeding it raises.
    - `interpolation`: `"constant"` or `"linear"` input between samples.
    """

    dt: float = eqx.field(static=True)
    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    stepsize_controller: diffrax.AbstractStepSizeController = diffrax.ConstantStepSize()
    dt0: float | None = eqx.field(static=True, default=None)
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()
    max_steps: int = eqx.field(static=True, default=4096)
    interpolation: str = eqx.field(static=True, default="constant")

    def __check_init__(self):
        _check_integrator(self)

    def step(self, field, t, y, x, x_next):
        interpolation = self.interpolation
        dt = self.dt

        # Everything the vector field depends on goes in through `args` (not a
        # closure), so that every diffrax adjoint, `BacksolveAdjoint` included, can
        # differentiate with respect to the parameters and inputs.
        def vf(s, y, args):
            field, t0, x, x_next = args
            c = (s - t0) / dt
            return field(s, y, input_at(interpolation, c, x, x_next))

        dt0 = self.dt0
        if dt0 is None and isinstance(
            self.stepsize_controller, diffrax.ConstantStepSize
        ):
            dt0 = self.dt
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vf),
            self.solver,
            t0=t,
            t1=t + self.dt,
            dt0=dt0,
            y0=y,
            args=(field, t, x, x_next),
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            saveat=diffrax.SaveAt(t1=True),
        )
        return sol.ys[-1]


def input_at(interpolation, c, x, x_next):
    """The input at the fraction `c` of a step from `x` to `x_next`: `x` when
    held `constant`, the straight line between them when `linear`."""
    if interpolation == "constant":
        return x
    return x + c * (x_next - x)


def _check_integrator(integrator: AbstractIntegrator) -> None:
    name = type(integrator).__name__
    dt = integrator.dt
    if not isinstance(dt, (int, float)) or isinstance(dt, bool):
        raise ValueError(f"`{name}(dt=...)` must be a Python float, got {dt!r}")
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"`{name}(dt=...)` must be > 0, got {dt}")
    if integrator.interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"`{name}(interpolation={integrator.interpolation!r})` is unknown; "
            f"choose `constant` or `linear`"
        )
