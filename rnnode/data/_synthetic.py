"""Generated tasks with a known answer: the seed's linear example, frequency-to-sine,
and the steady states of a teacher CTRNN."""

import math

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

# linear_example


class LinearExampleOptions(
    shared_options(dt=0.1, num_steps=50, num_train=16, num_val=None, num_test=8)
):
    """Options of `linear_example`."""

    size: Count = 1
    """Number of independent units (features of `r` and `x`)."""
    w: float = 0.5
    """True `w`."""
    b: float = 0.25
    """True `b`."""
    hold_steps: Count = 10
    """The input is constant over segments of this many steps."""
    input_scale: NonNegativeFloat = 1.0
    """Segment values are uniform on `[-input_scale, input_scale]`."""
    initial_state: float = 0.0
    """`r(0)` (a `Model`'s default initial state is zeros)."""
    noise: NonNegativeFloat = 0.0
    """Standard deviation of Gaussian noise added to the targets."""


def linear_example(o: LinearExampleOptions, *, seed: int) -> Task:
    """The seed's linear example `dr/dt = -r + w + b + x` under a piecewise-constant
    input.

    `x` is held constant for `hold_steps` samples at a time (values uniform on
    `±input_scale`); the target `r(t)` is exact: over a step with constant
    `c = w + b + x`, `r(t + dt) = c + (r(t) - c) e^{-dt}`. `xs[i]` is the input on
    `[i dt, (i + 1) dt)` and `ys[i] = r((i + 1) dt)`, so
    `Model(LinearExample(w, b, size=size), RK4(dt))` (zero-order hold) fits it;
    only `w + b` is identifiable. Weights: uniform in time.

    **Metrics:** `mse`; `baseline_mse`, predicting the mean target.
    """
    # the validation generator is spawned last: train and test are as before
    train_rng, test_rng, val_rng = rngs(seed, 3)

    def split(n, rng):
        segments = -(-o.num_steps // o.hold_steps)
        values = rng.uniform(-o.input_scale, o.input_scale, (segments, n, o.size))
        xs = np.repeat(values, o.hold_steps, axis=0)[: o.num_steps]
        decay = math.exp(-o.dt)
        r = np.full((n, o.size), o.initial_state)
        ys = np.empty_like(xs)
        for i, x in enumerate(xs):
            c = o.w + o.b + x
            r = c + (r - c) * decay
            ys[i] = r
        ys = ys + o.noise * rng.standard_normal(ys.shape)
        return Split(xs=xs, ys=ys, weights=uniform(o.num_steps))

    return Task(
        name="linear_example",
        train=split(o.num_train, train_rng),
        test=split(o.num_test, test_rng),
        val=split(o.num_val, val_rng),
        input_size=o.size,
        output_size=o.size,
        loss="mse",
        kind="sequence",
        dt=o.dt,
        metrics=regression_metrics,
        info={
            "true_params": {"w": o.w, "b": o.b},
            "initial_state": o.initial_state,
            "timing": "xs[i] is held on [i dt, (i + 1) dt); ys[i] = r((i + 1) dt)",
            "interpolation": "constant",
        },
    )


# sine


class SineOptions(
    shared_options(dt=0.1, num_steps=100, num_train=32, num_val=None, num_test=16)
):
    """Options of `sine`."""

    frequency_range: tuple[float, float] = (1.0, 3.0)
    """Range of the angular frequencies `ω` (radians per unit time)."""
    amplitude: PositiveFloat = 1.0
    """Amplitude `A` of the target sine."""

    _check_frequency_range = field_validator("frequency_range")(check_range)


def sine(o: SineOptions, *, seed: int) -> Task:
    """Frequency-to-sine generation: a constant input sets the frequency of the
    sine wave to produce (after Sussillo & Barak, 2013).

    Each sequence draws `ω` uniformly from `frequency_range`; the input is the
    constant `ω / max(frequency_range)` and the target `A sin(ω (i + 1) dt)` at
    step `i` (the state after the first input is at time `dt`). Train, validation
    and test frequencies are independent draws. Weights: uniform in time.

    **Metrics:** `mse`; `baseline_mse`, predicting the mean (≈ `A²/2`).
    """
    # the validation generator is spawned last: train and test are as before
    train_rng, test_rng, val_rng = rngs(seed, 3)
    omega_max = o.frequency_range[1]
    times = o.dt * np.arange(1, o.num_steps + 1)

    def split(n, rng):
        omega = rng.uniform(*o.frequency_range, size=n)
        xs = np.broadcast_to(omega / omega_max, (o.num_steps, n))[..., None]
        ys = o.amplitude * np.sin(times[:, None] * omega)[..., None]
        return Split(xs=np.array(xs), ys=ys, weights=uniform(o.num_steps))

    return Task(
        name="sine",
        train=split(o.num_train, train_rng),
        test=split(o.num_test, test_rng),
        val=split(o.num_val, val_rng),
        input_size=1,
        output_size=1,
        loss="mse",
        kind="sequence",
        dt=o.dt,
        metrics=regression_metrics,
        info={
            "input_encoding": "x = omega / omega_max",
            "omega_max": omega_max,
            "timing": "ys[i] = amplitude * sin(omega * (i + 1) * dt)",
        },
    )


# steady_state


class SteadyStateOptions(shared_options(num_train=256, num_val=None, num_test=64)):
    """Options of `steady_state`."""

    input_size: Count = 2
    """Features of the constant input `x`."""
    hidden_size: Count = 8
    """Units of the teacher CTRNN."""
    output_size: Count = 1
    """Features of the target `V r* + c`."""
    contraction: float = 0.5
    """Spectral norm of the teacher's `W`, in (0, 0.99]: the equilibrium map is a
    contraction with this rate, so each input has exactly one equilibrium."""
    input_scale: PositiveFloat = 1.0
    """Inputs are uniform on `[-input_scale, input_scale]`."""
    noise: NonNegativeFloat = 0.0
    """Standard deviation of Gaussian noise added to the targets."""

    @field_validator("contraction")
    @classmethod
    def _check_contraction(cls, value):
        if not 0 < value <= 0.99:
            raise ValueError(f"must be in (0, 0.99], got {value}")
        return value


def steady_state(o: SteadyStateOptions, *, seed: int) -> Task:
    """Map constant inputs to the readout of a teacher CTRNN's equilibrium (for
    implicit gradients).

    The teacher is `dr/dt = -r + W tanh(r) + U x + b` (rnnode's `CTRNN` with
    `τ = 1`) with a random `W` scaled to spectral norm `contraction < 1`, and the
    readout `y = V r + c`. For each input `x` its unique equilibrium
    `r* = W tanh(r*) + U x + b` is found by fixed-point iteration to 1e-13; the
    target is `V r* + c`. `xs` is `(1, N, input_size)`, `ys` `(1, N, output_size)`,
    weights `(1,)`; `info["teacher"]` holds the teacher's parameters. `dt = 1`:
    an Euler step of the teacher with `dt = 1` is the fixed-point map itself.

    **Metrics:** `mse`; `baseline_mse`, predicting the mean target.
    """
    teacher_rng, train_rng, test_rng, val_rng = rngs(seed, 4)
    n, m, k = o.hidden_size, o.input_size, o.output_size
    W = teacher_rng.standard_normal((n, n))
    W *= o.contraction / np.linalg.norm(W, ord=2)
    U = teacher_rng.standard_normal((n, m)) / math.sqrt(m)
    b = teacher_rng.uniform(-0.5, 0.5, n)
    V = teacher_rng.standard_normal((k, n)) / math.sqrt(n)
    c = teacher_rng.uniform(-0.5, 0.5, k)

    def split(count, rng):
        xs = rng.uniform(-o.input_scale, o.input_scale, (count, m))
        r = _fixed_point(lambda r: np.tanh(r) @ W.T + xs @ U.T + b, xs @ U.T + b)
        ys = r @ V.T + c
        ys = ys + o.noise * rng.standard_normal(ys.shape)
        return Split(xs=xs[None], ys=ys[None], weights=np.ones(1))

    teacher = {"W": W, "U": U, "b": b, "V": V, "c": c}
    return Task(
        name="steady_state",
        train=split(o.num_train, train_rng),
        test=split(o.num_test, test_rng),
        val=split(o.num_val, val_rng),
        input_size=m,
        output_size=k,
        loss="mse",
        kind="equilibrium",
        dt=1.0,
        metrics=regression_metrics,
        info={
            "teacher": {key: v.tolist() for key, v in teacher.items()},
            "activation": "tanh",
            "tau": 1.0,
            "contraction": o.contraction,
        },
    )


def _fixed_point(f, r, *, tol=1e-13, max_steps=20_000):
    for _ in range(max_steps):
        r_next = f(r)
        if np.max(np.abs(r_next - r)) <= tol:
            return r_next
        r = r_next
    raise RuntimeError(
        f"the teacher's fixed-point iteration did not converge in {max_steps} steps"
    )
