"""How time is stepped: integrators turn a vector field into a step map
`y_{i+1} = Φ(t_i, y_i, x_i, x_{i+1})` over one fixed interval `dt`.

Inputs are samples `x_i` at the observation times `t_i = t_0 + i dt`. Between two
samples the input is held (`interpolation="constant"`, a zero-order hold) or
interpolated linearly (`interpolation="linear"`).

Noise. A field with private noise (`AbstractNoisyField`, e.g.
`CTRNN(noise_std=σ)`) is the SDE `dr = F dt + g dW` with a diagonal `g`; a step
given a `key` integrates it (Euler–Maruyama for `Euler`, the stochastic Heun
method for `Heun`, a diffrax SDE solve over a Brownian path drawn from `key`
for `Diffrax`); `key=None` integrates the noise-free ODE.
"""

import abc
import math

import diffrax
import equinox as eqx
import jax.random as jr
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._dynamics import AbstractNoisyField, AbstractVectorField

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
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " state"]:
        """Advance `y` from `t` to `t + dt` with inputs `x` at `t`, `x_next` at
        `t + dt`; `key` draws the noise of a noisy field (`None`: noise-free)."""


class Euler(AbstractIntegrator):
    """Explicit Euler, `y_{i+1} = y_i + dt F(t_i, y_i, x_i)`; first order. For a
    noisy field, Euler–Maruyama: `+ g √dt ξ`, `ξ ~ N(0, I)` drawn from the key
    (for `CTRNN(noise_std=σ)`, `√(2 dt/τ) σ ξ`)."""

    dt: float = eqx.field(static=True)
    interpolation: str = eqx.field(static=True, default="constant")

    def __check_init__(self):
        _check_integrator(self)

    def step(self, field, t, y, x, x_next, key=None):
        del x_next
        y_new = y + self.dt * field(t, y, x)
        noise = step_noise(field, self.dt, t, y, x, key)
        return y_new if noise is None else y_new + noise


class Heun(AbstractIntegrator):
    """Heun's method (explicit trapezoid); second order. For a noisy field, the
    stochastic Heun method with the same increment `g √dt ξ` in the predictor
    and the corrector (exact in distribution to first order for the additive
    noise of `CTRNN`)."""

    dt: float = eqx.field(static=True)
    interpolation: str = eqx.field(static=True, default="constant")

    def __check_init__(self):
        _check_integrator(self)

    def step(self, field, t, y, x, x_next, key=None):
        h = self.dt
        x1 = input_at(self.interpolation, 1.0, x, x_next)
        noise = step_noise(field, h, t, y, x, key)
        k1 = field(t, y, x)
        y1 = y + h * k1 if noise is None else y + h * k1 + noise
        k2 = field(t + h, y1, x1)
        y_new = y + 0.5 * h * (k1 + k2)
        return y_new if noise is None else y_new + noise


class RK4(AbstractIntegrator):
    """The classical fourth-order Runge-Kutta method."""

    dt: float = eqx.field(static=True)
    interpolation: str = eqx.field(static=True, default="constant")

    def __check_init__(self):
        _check_integrator(self)

    def step(self, field, t, y, x, x_next, key=None):
        if step_noise(field, self.dt, t, y, x, key) is not None:
            raise ValueError(
                "`RK4` is not a method for noisy dynamics; use `Euler` or `Heun`, "
                "or `Diffrax` with an SDE solver (e.g. `diffrax.ShARK()`)"
            )
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

    A noisy field (`CTRNN(noise_std=σ)`) given a key is solved as the SDE
    `dr = F dt + g dW` (`MultiTerm(ODETerm, ControlTerm)`) over a
    `diffrax.VirtualBrownianTree` on `[t, t + dt]` drawn from the key; the
    solver must then be an SDE solver (`diffrax.Euler()`, `Heun()`,
    `EulerHeun()`, `ShARK()`, `SRA1()`, `SEA()`, …).
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

    def step(self, field, t, y, x, x_next, key=None):
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
        term = diffrax.ODETerm(vf)
        if key is not None and _diffusion(field, t, y, x) is not None:
            if not isinstance(self.solver, _SDE_SOLVERS):
                raise ValueError(
                    f"`Diffrax(solver={type(self.solver).__name__}())` cannot solve "
                    "the noisy dynamics' SDE; pass an SDE solver, e.g. "
                    "`diffrax.Euler()`, `diffrax.Heun()` or `diffrax.ShARK()`"
                )

            def diffusion(s, y, args):
                field, t0, x, x_next = args
                c = (s - t0) / dt
                g = _diffusion(field, s, y, input_at(interpolation, c, x, x_next))
                return lx.DiagonalLinearOperator(g)

            inner = self.dt if dt0 is None else dt0
            # a little past t + dt: a solver's last stage may land a rounding
            # error beyond it (the increments are the same Brownian motion's)
            path = diffrax.VirtualBrownianTree(
                t,
                t + self.dt * (1 + 1e-6),
                tol=inner / 16,
                shape=y.shape,
                key=key,
                levy_area=_levy_area(self.solver),
            )
            term = diffrax.MultiTerm(term, diffrax.ControlTerm(diffusion, path))
        sol = diffrax.diffeqsolve(
            term,
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


def step_noise(field, dt: float, t, y, x, key) -> Array | None:
    """The noise increment `g √dt ξ` of one step of a noisy field (`ξ ~ N(0, I)`
    drawn from `key`), or `None` for a noise-free field or `key=None`."""
    if key is None:
        return None
    g = _diffusion(field, t, y, x)
    if g is None:
        return None
    xi = jr.normal(key, y.shape, dtype=y.dtype)
    return (g * math.sqrt(dt)).astype(y.dtype) * xi


def _diffusion(field, t, y, x):
    if not isinstance(field, AbstractNoisyField):
        return None
    return field.diffusion(t, y, x)


def _levy_area(solver):
    """The Brownian path's Lévy area that `solver` needs (ShARK, SRA1 and SEA
    need the space-time one)."""
    if isinstance(solver, diffrax.AbstractSRK):
        need = solver.minimal_levy_area
        for area in (diffrax.SpaceTimeLevyArea, diffrax.SpaceTimeTimeLevyArea):
            if issubclass(area, need):
                return area
    return diffrax.BrownianIncrement


_SDE_SOLVERS = (
    diffrax.Euler,
    diffrax.Heun,
    diffrax.EulerHeun,
    diffrax.ReversibleHeun,
    diffrax.Midpoint,
    diffrax.ItoMilstein,
    diffrax.StratonovichMilstein,
    diffrax.SEA,
    diffrax.SRA1,
    diffrax.ShARK,
    diffrax.GeneralShARK,
    diffrax.SPaRK,
    diffrax.SlowRK,
)


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
