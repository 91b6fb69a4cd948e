"""Time series for online next-step prediction: the Hénon map, the Mackey–Glass
and Lorenz systems (generated from their equations) and the Santa Fe laser
series (measured; shipped with reservoirpy). Scored by the normalised mean
squared error (`nmse`)."""

import functools
from typing import Literal

import numpy as np
from pydantic import model_validator

from ._base import (
    Count,
    NonNegativeCount,
    NonNegativeFloat,
    PositiveFloat,
    Split,
    Task,
    TaskOptions,
    nmse,
    regression_metrics,
    rngs,
    shared_options,
    uniform,
)

Normalise = Literal["standard", "minmax", "none"]


class _WindowOptions(TaskOptions):
    """The options every series task shares: how windows are cut and scored."""

    horizon: Count = 1
    """Predict `h` samples ahead: input `y_t`, target `y_{t+h}`."""
    warmup: NonNegativeCount = 0
    """The first steps of every window are not scored (the state settles)."""
    normalise: Normalise = "standard"
    """`standard`: zero mean, unit variance; `minmax`: onto [-1, 1]; `none`: the
    values as they are. The statistics are the training split's (`info`)."""

    @model_validator(mode="after")
    def _check_warmup(self):
        if self.warmup >= self.num_steps:
            raise ValueError(
                f"`warmup` must be less than `num_steps` = {self.num_steps}, got "
                f"{self.warmup}"
            )
        return self


class _GeneratedOptions(
    shared_options(num_steps=200, num_train=256, num_val=None, num_test=32),
    _WindowOptions,
):
    """Options of the generated series: every window (`num_steps` steps, one
    stream between two resets in online training) is a trajectory of its own."""


class _FlowOptions(_GeneratedOptions):
    """Options of a flow integrated with a fixed step and sampled every `step`."""

    dt: PositiveFloat = 0.01
    """Integration step."""
    step: PositiveFloat = 0.05
    """Sampling interval (a multiple of `dt`): the time between two samples."""
    transient: NonNegativeFloat = 20.0
    """Time integrated and discarded before the first sample, from a random
    initial condition (reaching the attractor)."""

    @model_validator(mode="after")
    def _check_step(self):
        _ratio(self.step, self.dt, "step", "dt")
        _ratio(self.transient, self.dt, "transient", "dt", allow_zero=True)
        return self


class HenonOptions(_GeneratedOptions):
    """Options of `henon`."""

    a: float = 1.4
    """`a` of `x_{n+1} = 1 - a x_n² + y_n`."""
    b: float = 0.3
    """`b` of `y_{n+1} = b x_n`."""
    transient: NonNegativeCount = 100
    """Iterations discarded before the first sample."""


class MackeyGlassOptions(_FlowOptions):
    """Options of `mackey_glass`."""

    beta: PositiveFloat = 0.2
    """`β` of `dx/dt = β x(t-τ) / (1 + x(t-τ)^n) - γ x(t)`."""
    gamma: PositiveFloat = 0.1
    """`γ`."""
    n: PositiveFloat = 10.0
    """The exponent `n`."""
    tau: PositiveFloat = 17.0
    """The delay `τ` (a multiple of `dt`; 17 is mildly chaotic)."""
    dt: PositiveFloat = 0.1
    """Integration step."""
    step: PositiveFloat = 1.0
    """Sampling interval (a multiple of `dt`)."""
    transient: NonNegativeFloat = 500.0
    """Time discarded before the first sample."""

    @model_validator(mode="after")
    def _check_tau(self):
        _ratio(self.tau, self.dt, "tau", "dt")
        return self


class LorenzOptions(_FlowOptions):
    """Options of `lorenz`."""

    sigma: float = 10.0
    """`σ` of `dx/dt = σ (y - x)`."""
    rho: float = 28.0
    """`ρ` of `dy/dt = x (ρ - z) - y`."""
    beta: float = 8.0 / 3.0
    """`β` of `dz/dt = x y - β z`."""
    observe: Literal["x", "y", "z"] = "x"
    """The coordinate observed (input and target)."""


class LaserOptions(_WindowOptions):
    """Options of `laser`."""

    num_steps: Count = 200
    """Window length (samples per sequence)."""
    val_fraction: float = 0.1
    """Fraction of the series after the training period held out for
    validation."""
    test_fraction: float = 0.2
    """Fraction of the series, the latest samples, held out for the test."""
    stride: Count = 10
    """Samples between the starts of consecutive training windows (the
    validation and test windows do not overlap)."""

    @model_validator(mode="after")
    def _check_fractions(self):
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be in (0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("`val_fraction` + `test_fraction` must be < 1")
        shortest = min(_laser_sizes(self))
        if self.num_steps + self.horizon > shortest:
            raise ValueError(
                f"`num_steps` + `horizon` = {self.num_steps + self.horizon} is more "
                f"than the {shortest} samples of the shortest split"
            )
        return self


# The tasks


def henon(o: HenonOptions, *, seed: int) -> Task:
    """Predict the Hénon map (Hénon, 1976) one step (or `horizon` steps) ahead.

    `x_{n+1} = 1 - a x_n² + y_n`, `y_{n+1} = b x_n` (`a = 1.4`, `b = 0.3`:
    the chaotic attractor); `x` is observed, so the series obeys
    `x_{n+2} = 1 - a x_{n+1}² + b x_n`. Every window is a trajectory of its own,
    from `(x_0, y_0)` uniform on `[-0.1, 0.1]²` after `transient` iterations;
    the training, validation and test windows come from independent draws.

    **Metrics:** `nmse` (see `rnnode.data.nmse`), `mse`, `baseline_mse`
    (predicting the mean), `persistence_nmse` (predicting `y_{t+h}` by `y_t`).
    """

    def trajectories(count, rng):
        x = rng.uniform(-0.1, 0.1, count)
        y = rng.uniform(-0.1, 0.1, count)
        out = np.empty((o.transient + o.num_steps + o.horizon, count))
        for i in range(len(out)):
            out[i] = x
            x, y = 1.0 - o.a * x**2 + y, o.b * x
        return out[o.transient :]

    return _generated_task(
        "henon",
        o,
        trajectories,
        seed=seed,
        dt=1.0,
        info={"equation": "x_{n+1} = 1 - a x_n^2 + y_n, y_{n+1} = b x_n; x observed"},
    )


def mackey_glass(o: MackeyGlassOptions, *, seed: int) -> Task:
    """Predict the Mackey–Glass delay system (Mackey & Glass, 1977) one sample
    (or `horizon` samples) ahead.

    `dx/dt = β x(t-τ) / (1 + x(t-τ)^n) - γ x(t)` (`β = 0.2`, `γ = 0.1`,
    `n = 10`, `τ = 17`), integrated with Heun's method (the trapezoidal rule on
    the grid of step `dt`, which holds the delayed values exactly) from a
    constant history `x = x_0`, `x_0` uniform on [0.5, 1.5] per trajectory,
    sampled every `step` after `transient`. Every window is a trajectory of its
    own; training, validation and test windows come from independent draws.

    **Metrics:** as `henon`'s.
    """
    lag = round(o.tau / o.dt)

    def field(x, x_delayed):
        return o.beta * x_delayed / (1.0 + x_delayed**o.n) - o.gamma * x

    def trajectories(count, rng):
        every = round(o.step / o.dt)
        skip = round(o.transient / o.dt)
        total = skip + (o.num_steps + o.horizon - 1) * every + 1
        x = np.empty((lag + total, count))
        x[: lag + 1] = rng.uniform(0.5, 1.5, count)  # x(t) for t in [-τ, 0]
        for k in range(lag, lag + total - 1):
            slope = field(x[k], x[k - lag])
            guess = x[k] + o.dt * slope
            x[k + 1] = x[k] + 0.5 * o.dt * (slope + field(guess, x[k + 1 - lag]))
        return x[lag + skip :: every]

    return _generated_task(
        "mackey_glass",
        o,
        trajectories,
        seed=seed,
        dt=o.step,
        info={
            "equation": "dx/dt = beta x(t-tau) / (1 + x(t-tau)^n) - gamma x",
            "integrator": "Heun",
        },
    )


def lorenz(o: LorenzOptions, *, seed: int) -> Task:
    """Predict one coordinate of the Lorenz system (Lorenz, 1963) one sample (or
    `horizon` samples) ahead.

    `dx/dt = σ (y - x)`, `dy/dt = x (ρ - z) - y`, `dz/dt = x y - β z`
    (`σ = 10`, `ρ = 28`, `β = 8/3`), integrated with the classical Runge–Kutta
    method of step `dt` from `(x, y, z) = (0, 0, 25) + N(0, 5²)` per trajectory,
    sampled every `step` after `transient`; the coordinate `observe` is the
    input and the target. Every window is a trajectory of its own; training,
    validation and test windows come from independent draws (the same seed
    gives the same trajectories whichever coordinate is observed).

    **Metrics:** as `henon`'s.
    """
    column = "xyz".index(o.observe)

    def field(s):
        x, y, z = s
        return np.stack([o.sigma * (y - x), x * (o.rho - z) - y, x * y - o.beta * z])

    def trajectories(count, rng):
        every = round(o.step / o.dt)
        skip = round(o.transient / o.dt)
        s = np.array([0.0, 0.0, 25.0])[:, None] + 5.0 * rng.standard_normal((3, count))
        out = []
        for k in range(skip + (o.num_steps + o.horizon - 1) * every + 1):
            if k >= skip and (k - skip) % every == 0:
                out.append(s[column])
            k1 = field(s)
            k2 = field(s + 0.5 * o.dt * k1)
            k3 = field(s + 0.5 * o.dt * k2)
            k4 = field(s + o.dt * k3)
            s = s + o.dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        return np.stack(out)

    return _generated_task(
        "lorenz",
        o,
        trajectories,
        seed=seed,
        dt=o.step,
        info={
            "equation": "dx/dt = sigma (y - x), dy/dt = x (rho - z) - y, "
            "dz/dt = x y - beta z",
            "observed": o.observe,
            "integrator": "RK4",
        },
    )


_LASER_SIZE = 10_093


def laser(o: LaserOptions, *, seed: int) -> Task:
    """Predict the Santa Fe laser series (data set A of the Santa Fe time series
    competition; Weigend & Gershenfeld, 1994) one sample (or `horizon` samples)
    ahead.

    The intensity of a far-infrared NH3 laser in a chaotic regime, 10 093
    samples (integers 0–255), as shipped with reservoirpy
    (`reservoirpy.datasets.santafe_laser`, read from the installed package, no
    download). In time order: the training period, the validation period
    (`val_fraction`), the test period (the latest `test_fraction`), with no
    overlap, not even of inputs. Training windows start every `stride`
    samples; validation and test windows do not overlap. Deterministic: the
    seed is not used.

    **Metrics:** as `henon`'s.
    """
    del seed
    try:
        from reservoirpy.datasets import santafe_laser
    except ImportError:  # pragma: no cover - a dependency
        raise ImportError(
            "the `laser` task reads the Santa Fe laser series shipped with "
            "reservoirpy: `pip install reservoirpy`"
        ) from None
    series = np.asarray(santafe_laser(), dtype=np.float64).ravel()
    if len(series) != _LASER_SIZE:
        raise RuntimeError(f"expected {_LASER_SIZE} laser samples, found {len(series)}")
    n_train, n_val, _ = _laser_sizes(o)
    parts = np.split(series, [n_train, n_train + n_val])
    shift, scale = _statistics(parts[0], o.normalise)
    parts = [(p - shift) / scale for p in parts]
    L, h = o.num_steps, o.horizon

    def windows(part, stride):
        starts = np.arange(0, len(part) - L - h + 1, stride)
        index = starts[None, :] + np.arange(L)[:, None]
        return Split(
            xs=part[index][..., None],
            ys=part[index + h][..., None],
            weights=uniform(L, skip=o.warmup),
        )

    return Task(
        name="laser",
        train=windows(parts[0], o.stride),
        test=windows(parts[2], L),
        val=windows(parts[1], L),
        input_size=1,
        output_size=1,
        loss="mse",
        kind="sequence",
        dt=1.0,
        metrics=functools.partial(series_metrics, horizon=h),
        info={
            "source": "reservoirpy.datasets.santafe_laser (Santa Fe A)",
            "periods": {
                "train": [0, n_train],
                "val": [n_train, n_train + n_val],
                "test": [n_train + n_val, len(series)],
            },
            "normalise": o.normalise,
            "shift": shift,
            "scale": scale,
            "horizon": h,
        },
    )


def series_metrics(outputs, split: Split, *, horizon: int) -> dict[str, float]:
    """The metrics of a series task: `nmse`, `mse`, `baseline_mse` and the
    persistence forecast's `persistence_nmse` (outputs = inputs, `y_{t+h}` by
    `y_t`)."""
    del horizon  # the inputs are the series `horizon` samples back already
    return {
        **regression_metrics(outputs, split),
        "nmse": nmse(outputs, split),
        "persistence_nmse": nmse(np.asarray(split.xs), split),
    }


# Helpers


def _generated_task(name, o, trajectories, *, seed: int, dt: float, info) -> Task:
    """A series task from `trajectories(count, rng) -> (num_steps + horizon,
    count)` raw values: the windows of the three splits, normalised with the
    training split's statistics."""
    train_rng, val_rng, test_rng = rngs(seed, 3)
    raw = {
        "train": trajectories(o.num_train, train_rng),
        "val": trajectories(o.num_val, val_rng),
        "test": trajectories(o.num_test, test_rng),
    }
    shift, scale = _statistics(raw["train"], o.normalise)
    L, h = o.num_steps, o.horizon

    def split(values):
        z = (values - shift) / scale
        return Split(
            xs=np.array(z[:L, :, None]),
            ys=np.array(z[h : L + h, :, None]),
            weights=uniform(L, skip=o.warmup),
        )

    params = o.model_dump(
        exclude={"num_steps", "num_train", "num_val", "num_test", "warmup"}
    )
    return Task(
        name=name,
        train=split(raw["train"]),
        test=split(raw["test"]),
        val=split(raw["val"]),
        input_size=1,
        output_size=1,
        loss="mse",
        kind="sequence",
        dt=dt,
        metrics=functools.partial(series_metrics, horizon=h),
        info={**info, "params": params, "shift": shift, "scale": scale},
    )


def _statistics(values: np.ndarray, how: str) -> tuple[float, float]:
    """`(shift, scale)` with which `(v - shift) / scale` normalises."""
    if how == "standard":
        return float(values.mean()), float(values.std())
    if how == "minmax":
        lo, hi = float(values.min()), float(values.max())
        return (lo + hi) / 2, (hi - lo) / 2
    return 0.0, 1.0


def _laser_sizes(o: LaserOptions) -> tuple[int, int, int]:
    test = round(o.test_fraction * _LASER_SIZE)
    val = round(o.val_fraction * _LASER_SIZE)
    return _LASER_SIZE - test - val, val, test


def _ratio(value: float, unit: float, name: str, unit_name: str, allow_zero=False):
    """`value / unit` as an integer, or a `ValueError` naming both options."""
    k = value / unit
    if abs(k - round(k)) > 1e-9 * max(1.0, k) or (round(k) == 0 and not allow_zero):
        raise ValueError(
            f"`{name}` = {value} must be a {'' if allow_zero else 'positive '}"
            f"multiple of `{unit_name}` = {unit}"
        )
    return round(k)
