"""The Add task of Pitis (2016), as used by Marschall, Cho & Savin (2020) to compare
online learning rules: a stream of random bits whose labels depend on two past
inputs."""

import functools
import math

import numpy as np
from pydantic import ValidationInfo, field_validator, model_validator

from ._base import (
    Count,
    NonNegativeCount,
    Split,
    Task,
    TaskOptions,
    classification_metrics,
    default_num_val,
    rngs,
    uniform,
)


class AddOptions(TaskOptions):
    """Options of `add`."""

    t1: NonNegativeCount = 5
    """Lag of the first dependency: `x_{t-t1}` raises `P(y_t = 1)` by 0.5."""
    t2: NonNegativeCount = 9
    """Lag of the second dependency: `x_{t-t2}` lowers `P(y_t = 1)` by 0.25."""
    num_steps: Count = 20_000
    """Length `T` of each stream (one unbroken sequence)."""
    num_train: Count = 1
    """Training streams (online training reads `train.batch_size` of them in
    parallel)."""
    num_val: Count | None = None
    """Validation streams (streams of their own, drawn like the training ones;
    default: as many as `num_test`)."""
    num_test: Count = 1
    """Test streams."""

    _num_val = model_validator(mode="after")(default_num_val)

    @field_validator("num_steps")
    @classmethod
    def _check_length(cls, value, info: ValidationInfo):
        lag = max(info.data.get("t1", 0), info.data.get("t2", 0))
        if value <= lag:
            raise ValueError(
                f"must exceed max(`t1`, `t2`) = {lag} so that some steps are "
                f"scored, got {value}"
            )
        return value


def add(o: AddOptions, *, seed: int) -> Task:
    """The Add task (Pitis, 2016; Marschall, Cho & Savin, 2020): predict a random
    label that depends on the inputs `t1` and `t2` steps back.

    The inputs `x_t` are independent Bernoulli(0.5) bits, one-hot over two channels
    `[x_t, 1 - x_t]`; the labels are `y_t ~ Bernoulli(0.5 + 0.5 x_{t-t1} - 0.25
    x_{t-t2})`, integer classes for a two-class cross-entropy. Each split is a few
    long streams (`num_steps` each, default one of 20 000 steps) meant to be learnt
    online; the first `max(t1, t2)` steps of a stream, whose labels would need
    inputs from before it began, are drawn like the rest but not scored (weight 0;
    the others `1/(T - max(t1, t2))`).

    A predictor's expected cross-entropy has three floors, computed here from the
    definition: `floor_nothing` (the marginal `P(y = 1) = 0.625`: ≈ 0.662 nats for
    the defaults), `floor_first` (knowing `x_{t-t1}` only: ≈ 0.519) and
    `floor_both` (knowing both: ≈ 0.454, the Bayes optimum). A network below
    `floor_nothing` has learnt the first dependency; near `floor_both`, both.

    **Metrics:** `accuracy`, `cross_entropy`; the chance levels `chance_accuracy =
    0.5` and `chance_cross_entropy = log 2`; the three floors `floor_nothing`,
    `floor_first`, `floor_both`.
    """
    # the validation generator is spawned last: train and test are as before
    train_rng, test_rng, val_rng = rngs(seed, 3)
    T, lag = o.num_steps, max(o.t1, o.t2)

    def split(n, rng):
        x = rng.integers(0, 2, (T, n))
        p = add_probability(x, t1=o.t1, t2=o.t2)
        labels = (rng.uniform(size=(T, n)) < p).astype(np.int64)
        xs = np.stack([x, 1 - x], axis=-1).astype(np.float64)
        return Split(xs=xs, ys=labels, weights=uniform(T, skip=lag))

    floors = add_floors(t1=o.t1, t2=o.t2)
    return Task(
        name="add",
        train=split(o.num_train, train_rng),
        test=split(o.num_test, test_rng),
        val=split(o.num_val, val_rng),
        input_size=2,
        output_size=2,
        loss="cross_entropy",
        kind="sequence",
        dt=1.0,
        metrics=functools.partial(_metrics, floors=floors),
        info={
            "num_classes": 2,
            "channels": "one-hot: [x_t, 1 - x_t]",
            "label": "y_t ~ Bernoulli(0.5 + 0.5 x_{t-t1} - 0.25 x_{t-t2})",
            "t1": o.t1,
            "t2": o.t2,
            "scored_from_step": lag,
            "floors": floors,
        },
    )


def add_probability(x: np.ndarray, *, t1: int, t2: int) -> np.ndarray:
    """`P(y_t = 1) = 0.5 + 0.5 x_{t-t1} - 0.25 x_{t-t2}` for bits `x` of shape
    `(T, ...)`; inputs before the stream began count as 0."""
    return 0.5 + 0.5 * _delayed(x, t1) - 0.25 * _delayed(x, t2)


def add_floors(*, t1: int, t2: int) -> dict[str, float]:
    """The expected cross-entropy (nats) of the best predictor that knows nothing,
    only `x_{t-t1}`, or both `x_{t-t1}` and `x_{t-t2}`: exact averages over the
    four equally likely input pairs."""
    pairs = [(a, b) for a in (0, 1) for b in (0, 1)]
    if t1 == t2:  # one input drives both terms
        pairs = [(a, a) for a in (0, 1)]
    p = {(a, b): 0.5 + 0.5 * a - 0.25 * b for a, b in pairs}

    def mean_entropy(groups):
        # the best prediction within a group is its mean probability
        return sum(len(g) * _entropy(np.mean([p[k] for k in g])) for g in groups) / len(
            pairs
        )

    return {
        "floor_nothing": float(mean_entropy([pairs])),
        "floor_first": float(
            mean_entropy([[k for k in pairs if k[0] == a] for a in (0, 1)])
        ),
        "floor_both": float(mean_entropy([[k] for k in pairs])),
    }


def _metrics(outputs, split: Split, *, floors: dict[str, float]) -> dict[str, float]:
    return {**classification_metrics(outputs, split, num_classes=2), **floors}


def _delayed(x: np.ndarray, lag: int) -> np.ndarray:
    out = np.zeros_like(x)
    out[lag:] = x[: len(x) - lag]
    return out


def _entropy(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0)
