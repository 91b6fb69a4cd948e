"""The damped driven oscillator `m x'' + γ x' + k x = F(t)`: noisy trajectories for
fitting its parameters (`oscillator_fit`) or learning its dynamics with a CTRNN
(`oscillator_ctrnn`)."""

import functools
import math
from typing import Literal

import numpy as np
from pydantic import field_validator

from ._base import (
    Count,
    NonNegativeFloat,
    PositiveFloat,
    Split,
    Task,
    check_range,
    regression_metrics,
    rngs,
    shared_options,
    uniform,
)


class OscillatorFitOptions(
    shared_options(dt=0.1, num_steps=100, num_train=8, num_val=None, num_test=4)
):
    """Options of `oscillator_fit` (and, with other defaults, `oscillator_ctrnn`)."""

    noise: NonNegativeFloat = 0.05
    """Standard deviation of the Gaussian observation noise added to the targets."""
    observe: Literal["state", "position"] = "state"
    """Targets: `"state"` is `(x, v)` (output_size 2), `"position"` is `x` alone."""
    mass: PositiveFloat = 1.0
    """True `m`."""
    damping: NonNegativeFloat = 0.3
    """True `γ`."""
    stiffness: PositiveFloat = 4.0
    """True `k` (natural frequency `√(k/m)`, 2 by default)."""
    initial_state: tuple[float, float] = (0.0, 0.0)
    """`(x, v)` at `t = 0`, the same for every sequence (a `Model`'s default
    initial state is zeros)."""
    drive: Literal["sines", "cosine"] = "sines"
    """`"sines"`: `F(t) = A Σ_j sin(Ω_j t + φ_j)` with `num_sines` random
    frequencies in `frequency_range` and random phases, drawn per sequence;
    `"cosine"`: `F(t) = A cos(Ω t)` with `Ω = drive_frequency`, the same for all."""
    drive_amplitude: NonNegativeFloat = 1.0
    """`A`."""
    num_sines: Count = 2
    """Number of sines in the `"sines"` drive."""
    frequency_range: tuple[float, float] = (0.5, 3.0)
    """Range of the angular frequencies `Ω_j` of the `"sines"` drive."""
    drive_frequency: PositiveFloat = 1.5
    """`Ω` of the `"cosine"` drive."""

    _check_frequency_range = field_validator("frequency_range")(check_range)


class OscillatorCTRNNOptions(OscillatorFitOptions):
    """Options of `oscillator_ctrnn`: those of `oscillator_fit`, with more
    sequences and the position alone as the target by default."""

    num_train: Count = 32
    """Training sequences."""
    num_val: Count | None = None
    """Validation sequences (default: as many as `num_test`)."""
    num_test: Count = 8
    """Test sequences."""
    observe: Literal["state", "position"] = "position"
    """Targets: `"position"` is `x` alone, `"state"` is `(x, v)`."""


def oscillator_fit(options: OscillatorFitOptions, *, seed: int) -> Task:
    """Fit a damped driven oscillator's mass, damping and stiffness to noisy
    trajectories.

    The truth `m x'' + γ x' + k x = F(t)` (true `m, γ, k` in `info["true_params"]`)
    is integrated with scipy's DOP853 (relative tolerance 1e-10) from
    `initial_state` under a drive `F(t)` (the input), then sampled every `dt` and
    observed with Gaussian noise. Timing follows `rnnode.Model`: `xs[i] = F(i dt)`
    and `ys[i]` is the observed state at `(i + 1) dt`, so
    `Model(DampedOscillator(m, γ, k), RK4(dt, interpolation="linear"),
    initial_state=...)` with no readout fits the `(x, v)` targets (up to the
    linear interpolation of the drive between samples). Weights: uniform in time.

    **Metrics:** `mse`; `noise_mse = noise²`, what the true system scores in
    expectation; `baseline_mse`, predicting the mean target. The parameter error
    can be read off against `info["true_params"]`.
    """
    return _oscillator_task("oscillator_fit", options, seed=seed)


def oscillator_ctrnn(options: OscillatorCTRNNOptions, *, seed: int) -> Task:
    """Learn the damped driven oscillator's dynamics with a CTRNN: drive in,
    position (or state) out.

    The same data as `oscillator_fit` (see there), with 32 training sequences and
    the position `x` as the target by default (`observe="state"` for `(x, v)`).
    A CTRNN with a linear readout must learn the map from the drive history to
    the trajectory. Weights: uniform in time.

    **Metrics:** `mse`; `baseline_mse`, predicting the mean target (≈ predicting
    zeros, the trajectories oscillate about 0); `noise_mse = noise²`, the floor.
    """
    return _oscillator_task("oscillator_ctrnn", options, seed=seed)


def _oscillator_task(name: str, o: OscillatorFitOptions, *, seed: int) -> Task:
    # the validation generator is spawned last: train and test are as before
    train_rng, test_rng, val_rng = rngs(seed, 3)
    train = _oscillator_split(o, o.num_train, train_rng)
    test = _oscillator_split(o, o.num_test, test_rng)
    val = _oscillator_split(o, o.num_val, val_rng)
    observed = ["x", "v"] if o.observe == "state" else ["x"]
    if o.drive == "sines":
        drive = "F(t) = A sum_j sin(Omega_j t + phi_j), Omega_j and phi_j random per sequence"
    else:
        drive = "F(t) = A cos(Omega t)"
    info = {
        "true_params": {"mass": o.mass, "damping": o.damping, "stiffness": o.stiffness},
        "initial_state": list(o.initial_state),
        "observed": observed,
        "noise": o.noise,
        "drive": drive,
        "timing": "xs[i] = F(i dt); ys[i] = observed state at (i + 1) dt",
        "interpolation": "linear",
    }
    return Task(
        name=name,
        train=train,
        test=test,
        val=val,
        input_size=1,
        output_size=len(observed),
        loss="mse",
        kind="sequence",
        dt=o.dt,
        metrics=functools.partial(_metrics, noise=o.noise),
        info=info,
    )


def _oscillator_split(o: OscillatorFitOptions, n: int, rng: np.random.Generator):
    if o.drive == "sines":
        freqs = rng.uniform(*o.frequency_range, size=(n, o.num_sines))
        phases = rng.uniform(0.0, 2 * math.pi, size=(n, o.num_sines))

        def force(t):
            return o.drive_amplitude * np.sum(np.sin(freqs * t + phases), axis=-1)

    else:

        def force(t):
            return np.full(n, o.drive_amplitude * math.cos(o.drive_frequency * t))

    times = o.dt * np.arange(o.num_steps + 1)
    states = _integrate(o, force, n, times)  # (T + 1, n, 2)
    xs = np.stack([force(t) for t in times[:-1]])[:, :, None]
    ys = states[1:] if o.observe == "state" else states[1:, :, :1]
    ys = ys + o.noise * rng.standard_normal(ys.shape)
    return Split(xs=xs, ys=ys, weights=uniform(o.num_steps))


def _integrate(o: OscillatorFitOptions, force, n: int, times: np.ndarray):
    """The true `(x, v)` of all `n` sequences at `times`, integrated as one system."""
    from scipy.integrate import solve_ivp  # scipy comes with scikit-learn/statsmodels

    def field(t, y):
        x, v = y[:n], y[n:]
        return np.concatenate(
            [v, (force(t) - o.damping * v - o.stiffness * x) / o.mass]
        )

    y0 = np.concatenate(
        [np.full(n, o.initial_state[0]), np.full(n, o.initial_state[1])]
    )
    sol = solve_ivp(
        field,
        (times[0], times[-1]),
        y0,
        method="DOP853",
        t_eval=times,
        rtol=1e-10,
        atol=1e-12,
    )
    if not sol.success:
        raise RuntimeError(f"integrating the true oscillator failed: {sol.message}")
    return np.stack([sol.y[:n].T, sol.y[n:].T], axis=-1)


def _metrics(outputs, split: Split, *, noise: float) -> dict[str, float]:
    return {**regression_metrics(outputs, split), "noise_mse": noise**2}
