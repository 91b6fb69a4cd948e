"""Long-range memory benchmarks: the adding problem and the copy task."""

import functools

import numpy as np

from ._base import (
    Count,
    NonNegativeCount,
    Split,
    Task,
    classification_metrics,
    integer,
    last_step,
    regression_metrics,
    rngs,
    shared_options,
)

AtLeastTwo = integer(ge=2)

# adding


class AddingOptions(shared_options(num_train=1000, num_val=None, num_test=200)):
    """Options of `adding`."""

    num_steps: AtLeastTwo = 50
    """Sequence length `T`: the distance the network must remember across."""


def adding(o: AddingOptions, *, seed: int) -> Task:
    """The adding problem (Hochreiter & Schmidhuber, 1997): add the two marked
    numbers of a long sequence.

    Two input channels: values uniform on [0, 1], and a marker that is 1 at two
    steps, one in each half of the sequence (the variant of Le, Jaitly & Hinton,
    2015), 0 elsewhere. The target, the sum of the two marked values, is scored at
    the last step only (`ys` is 0 at the other steps, where the weight is 0).

    **Metrics:** `mse`; `baseline_mse`, predicting the mean sum (≈ 1/6 ≈ 0.167,
    the variance of the sum of two uniforms): a model below it has learnt to
    remember.
    """
    # the validation generator is spawned last: train and test are as before
    train_rng, test_rng, val_rng = rngs(seed, 3)
    T = o.num_steps

    def split(n, rng):
        values = rng.uniform(0.0, 1.0, (T, n))
        first = rng.integers(0, T // 2, n)
        second = rng.integers(T // 2, T, n)
        markers = np.zeros((T, n))
        columns = np.arange(n)
        markers[first, columns] = 1.0
        markers[second, columns] = 1.0
        ys = np.zeros((T, n, 1))
        ys[-1, :, 0] = values[first, columns] + values[second, columns]
        xs = np.stack([values, markers], axis=-1)
        return Split(xs=xs, ys=ys, weights=last_step(T))

    return Task(
        name="adding",
        train=split(o.num_train, train_rng),
        test=split(o.num_test, test_rng),
        val=split(o.num_val, val_rng),
        input_size=2,
        output_size=1,
        loss="mse",
        kind="sequence",
        dt=1.0,
        metrics=regression_metrics,
        info={"channels": ["value", "marker"], "chance_mse": 1.0 / 6.0},
    )


# copy


class CopyOptions(shared_options(num_train=1000, num_val=None, num_test=200)):
    """Options of `copy`."""

    num_symbols: AtLeastTwo = 8
    """Size of the alphabet to copy (the output classes)."""
    length: Count = 5
    """Number of symbols to remember."""
    delay: NonNegativeCount = 10
    """Blank steps between the last symbol and the go marker."""


def copy(o: CopyOptions, *, seed: int) -> Task:
    """The copy task (Hochreiter & Schmidhuber, 1997; Arjovsky, Shah & Bengio,
    2016): read `length` symbols, wait, and recall them in order.

    Inputs are one-hot over `num_symbols + 2` channels (the symbols, then blank,
    then go): `length` random symbols, `delay` blanks, the go marker, then
    `length` blanks during which the symbols must be output in order, so
    `T = 2 length + delay + 1`. Targets are integer labels `(T, N)` for a
    cross-entropy over the `num_symbols` classes, scored at the recall steps
    only (weights `1/length` there; label 0 and weight 0 elsewhere).

    **Metrics:** `accuracy` on the recalled symbols, `sequence_accuracy` (all
    recalled correctly), `cross_entropy`; the chance levels
    `chance_accuracy = 1/num_symbols` and `chance_cross_entropy = log num_symbols`
    of a memoryless guess.
    """
    # the validation generator is spawned last: train and test are as before
    train_rng, test_rng, val_rng = rngs(seed, 3)
    K, k = o.num_symbols, o.length
    blank, go = K, K + 1
    T = 2 * k + o.delay + 1
    recall = slice(k + o.delay + 1, T)

    def split(n, rng):
        symbols = rng.integers(0, K, (k, n))
        tokens = np.full((T, n), blank)
        tokens[:k] = symbols
        tokens[k + o.delay] = go
        xs = np.eye(K + 2)[tokens]
        labels = np.zeros((T, n), dtype=np.int64)
        labels[recall] = symbols
        return Split(xs=xs, ys=labels, weights=weights)

    weights = np.zeros(T)
    weights[recall] = 1.0 / k
    return Task(
        name="copy",
        train=split(o.num_train, train_rng),
        test=split(o.num_test, test_rng),
        val=split(o.num_val, val_rng),
        input_size=K + 2,
        output_size=K,
        loss="cross_entropy",
        kind="sequence",
        dt=1.0,
        metrics=functools.partial(
            classification_metrics, num_classes=K, per_sequence=True
        ),
        info={
            "num_classes": K,
            "channels": "one-hot: symbols 0..K-1, blank K, go K+1",
            "recall_steps": [recall.start, recall.stop],
        },
    )
