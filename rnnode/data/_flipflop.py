"""The K-bit flip-flop (Sussillo & Barak, 2013): remember the sign of the last pulse
on each of K channels."""

import numpy as np
from pydantic import field_validator

from ._base import (
    Count,
    Split,
    Task,
    regression_metrics,
    rngs,
    shared_options,
    uniform,
)


class FlipFlopOptions(
    shared_options(dt=0.5, num_steps=100, num_train=512, num_val=None, num_test=128)
):
    """Options of `flipflop` (`dt`: the task has no time scale of its own; it is
    the integrator step a config takes by default, against the network's `τ`)."""

    bits: Count = 3
    """Number of channels `K` (input and output features); `2^K` memories."""
    p: float = 0.05
    """Probability of a pulse per step and channel, in (0, 1]."""

    @field_validator("p")
    @classmethod
    def _check_p(cls, value):
        if not 0 < value <= 1:
            raise ValueError(f"must be a probability in (0, 1], got {value}")
        return value


def flipflop(o: FlipFlopOptions, *, seed: int) -> Task:
    """The K-bit flip-flop (Sussillo & Barak, 2013): each output channel holds the
    sign of the last pulse on its input channel.

    At each step and on each of the `bits` channels independently, a pulse
    arrives with probability `p`, `+1` or `-1` with equal probability; the input
    is 0 elsewhere. The target at step `t` on channel `k` is the sign of the
    last pulse on `k` at or before `t`, and 0 before the first one.
    Every step is scored (weights uniform in time). `rest_input` is zeros: no
    pulse, the input under which the memories must be held.

    **Metrics:** `mse`; `baseline_mse`, predicting the mean target (≈ the
    fraction of non-zero targets); `sign_accuracy`, the fraction of
    (step, channel) pairs whose output has the target's sign, counted only where
    the target is ±1 (steps before a channel's first pulse, target 0, have no
    sign to match and are left out; NaN if there is none); `chance_sign_accuracy`
    = 0.5.
    """
    # the validation generator is spawned last: train and test are as before
    train_rng, test_rng, val_rng = rngs(seed, 3)
    T, K = o.num_steps, o.bits

    def split(n, rng):
        pulses = rng.random((T, n, K)) < o.p
        signs = np.where(rng.random((T, n, K)) < 0.5, -1.0, 1.0)
        xs = np.where(pulses, signs, 0.0)
        return Split(xs=xs, ys=hold_last_pulse(xs), weights=uniform(T))

    return Task(
        name="flipflop",
        train=split(o.num_train, train_rng),
        test=split(o.num_test, test_rng),
        val=split(o.num_val, val_rng),
        input_size=K,
        output_size=K,
        loss="mse",
        kind="sequence",
        dt=o.dt,
        metrics=flipflop_metrics,
        info={
            "bits": K,
            "p": o.p,
            "memories": 2**K,
            "target": "sign of the last pulse on each channel, 0 before the first",
        },
        rest_input=(0.0,) * K,
    )


def hold_last_pulse(xs: np.ndarray) -> np.ndarray:
    """The flip-flop's targets of inputs `xs (T, N, K)`: at each step, the last
    non-zero input on each channel (its sign, for ±1 pulses), 0 before the first."""
    T = xs.shape[0]
    steps = np.arange(T).reshape(T, *(1,) * (xs.ndim - 1))
    last = np.maximum.accumulate(np.where(xs != 0, steps, -1), axis=0)
    held = np.take_along_axis(xs, np.maximum(last, 0), axis=0)
    return np.where(last >= 0, np.sign(held), 0.0)


def flipflop_metrics(outputs, split: Split) -> dict[str, float]:
    """`regression_metrics` and the sign accuracy over the scored steps with a
    non-zero target (see `flipflop`)."""
    metrics = regression_metrics(outputs, split)
    out = np.asarray(outputs, dtype=np.float64)
    w = split.weights
    w = np.broadcast_to(w[:, None] if w.ndim == 1 else w, split.ys.shape[:2])
    w = np.broadcast_to(w[..., None], split.ys.shape) * (split.ys != 0)
    total = w.sum()
    agree = np.sign(out) == split.ys
    # NaN when no scored target is ±1 (no pulse at all): nothing to match
    metrics["sign_accuracy"] = float(np.sum(w * agree) / total) if total else np.nan
    metrics["chance_sign_accuracy"] = 0.5
    return metrics
