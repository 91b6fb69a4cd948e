"""The containers every task returns (`Split`, `Task`), the shared option types, and
the metric helpers that score a model's outputs on a split."""

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

LOSSES = ("mse", "cross_entropy")
KINDS = ("sequence", "equilibrium")


def _integer(value):
    # A count must be an integer: not a bool, a float or a string (numpy ints are fine)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"must be an integer, got {value!r}")
    return int(value)


def integer(*, ge: int):
    """The type of an integer option `>= ge`."""
    return Annotated[int, Field(ge=ge), BeforeValidator(_integer)]


Count = integer(ge=1)
NonNegativeCount = integer(ge=0)
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class TaskOptions(BaseModel):
    """Base of the per-task option models: unknown keys, NaN and infinities are
    rejected, and integer counts must be given as integers."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        use_attribute_docstrings=True,
        validate_default=True,
    )


_SHARED = {
    "dt": (PositiveFloat, "Sampling interval."),
    "num_steps": (Count, "Samples per sequence."),
    "num_train": (
        Count,
        "Training examples (sequences, or the inputs of an equilibrium task).",
    ),
    "num_val": (
        Count | None,
        "Validation examples: drawn like the training ones, disjoint from the test "
        "ones (what evaluations during training and sweeps score); `None` (the "
        "default): as many as `num_test`.",
    ),
    "num_test": (Count, "Test examples (scored once, at the end of a run)."),
}


def shared_options(**defaults: Any) -> type[TaskOptions]:
    """A `TaskOptions` base with the options most tasks share, with this task's
    defaults: the fields named in `defaults`, of `dt` (sampling interval, > 0),
    `num_steps` (samples per sequence), `num_train`, `num_val` and `num_test`
    (counts >= 1; `num_val=None` is as many as `num_test`, so that validation
    and test batches share their shapes and their compiled evaluation).

    ```python
    class SineOptions(shared_options(dt=0.1, num_steps=100, num_train=32, num_test=16)):
        frequency_range: tuple[float, float] = (1.0, 3.0)
    ```

    A task whose option differs (`adding`'s `num_steps` is at least 2) declares
    that one itself.

    **Raises:** `TypeError` for a name that is not a shared option.
    """
    unknown = sorted(set(defaults) - set(_SHARED))
    if unknown:
        raise TypeError(
            f"not a shared task option: {', '.join(unknown)}; the shared options "
            f"are {', '.join(_SHARED)}"
        )
    fields = {
        name: (kind, Field(defaults[name], description=doc))
        for name, (kind, doc) in _SHARED.items()
        if name in defaults
    }
    validators = {}
    if "num_val" in defaults:
        validators["_num_val"] = pydantic.model_validator(mode="after")(default_num_val)
    return pydantic.create_model(
        "SharedOptions", __base__=TaskOptions, __validators__=validators, **fields
    )


def default_num_val(options):
    """An options model's `num_val = None` made `num_test`."""
    if options.num_val is None:
        options.num_val = options.num_test
    return options


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split (train, validation or test) of a task: time-major arrays.

    **Fields:**

    - `xs`: inputs, `(T, N, input_size)` float64.
    - `ys`: targets, `(T, N, output_size)` float64, or `(T, N)` integer class labels
      (for `loss="cross_entropy"`).
    - `weights`: the time weights `a_t` of the loss `Σ_t a_t l_t`, shape `(T,)` or
      `(T, N)`, non-negative; steps with weight 0 are not scored. The tasks here
      normalise them to sum to 1 over time, like `rnnode.uniform_weights`.

    - `conditions`: per-sequence facts of trial-based tasks (the cognitive
      tasks: ground truth, coherences, period boundaries as step indices), each
      an array with one entry per sequence, `(N,)` or `(N, ...)`; empty for
      other tasks. The metrics of such a task read them.

    The arrays are made read-only.
    """

    xs: np.ndarray
    ys: np.ndarray
    weights: np.ndarray
    conditions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        xs, ys, w = self.xs, self.ys, self.weights
        for name, a in (("xs", xs), ("ys", ys), ("weights", w)):
            if not isinstance(a, np.ndarray):
                raise ValueError(f"`Split.{name}` must be a numpy array, got {type(a)}")
        if xs.ndim != 3 or xs.dtype != np.float64:
            raise ValueError(
                f"`Split.xs` must be float64 of shape (T, N, input_size), got "
                f"{xs.dtype} {xs.shape}"
            )
        T, N = xs.shape[:2]
        if np.issubdtype(ys.dtype, np.integer):
            if ys.shape != (T, N):
                raise ValueError(
                    f"integer `Split.ys` (class labels) must have shape {(T, N)}, "
                    f"got {ys.shape}"
                )
        elif ys.dtype != np.float64 or ys.ndim != 3 or ys.shape[:2] != (T, N):
            raise ValueError(
                f"`Split.ys` must be float64 of shape ({T}, {N}, output_size) or "
                f"integer of shape ({T}, {N}), got {ys.dtype} {ys.shape}"
            )
        if w.dtype != np.float64 or w.shape not in ((T,), (T, N)):
            raise ValueError(
                f"`Split.weights` must be float64 of shape ({T},) or ({T}, {N}), "
                f"got {w.dtype} {w.shape}"
            )
        if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
            raise ValueError("`Split.weights` must be finite and non-negative")
        for name, a in self.conditions.items():
            if not isinstance(a, np.ndarray) or a.ndim == 0 or a.shape[0] != N:
                raise ValueError(
                    f"`Split.conditions[{name!r}]` must be a numpy array with one "
                    f"entry per sequence ({N}), got {getattr(a, 'shape', type(a))}"
                )
        for a in (xs, ys, w, *self.conditions.values()):
            a.setflags(write=False)

    @property
    def num_steps(self) -> int:
        """`T`, the number of time steps."""
        return self.xs.shape[0]

    @property
    def num_sequences(self) -> int:
        """`N`, the number of sequences (the batch axis, axis 1)."""
        return self.xs.shape[1]

    def take(self, index) -> "Split":
        """The sequences `index` (an integer array, a slice or a boolean mask over
        axis 1) as a new `Split`."""
        w = self.weights if self.weights.ndim == 1 else self.weights[:, index]
        return Split(
            xs=np.array(self.xs[:, index]),
            ys=np.array(self.ys[:, index]),
            weights=np.array(w),
            conditions={k: np.array(v[index]) for k, v in self.conditions.items()},
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A learning problem: its data, how it is scored, and what is known about it.

    **Fields:**

    - `name`: the task's name (see `rnnode.data.list_tasks()`).
    - `train`, `test`: the training and test `Split`s. The test split is scored
      once, at the end of a run.
    - `val`: the validation `Split`, drawn like the training data (from the
      training period of a measured series, from a generator of its own for a
      generated task; for an online stream, a stream of its own) and disjoint
      from the test split: evaluations during training and a sweep's selection
      score it, never the test split. Every built-in task has one; `None` only
      for a task defined elsewhere that has none.
    - `input_size`, `output_size`: feature sizes of the model's input and output
      (for a classification task, `output_size` is the number of classes: the
      model outputs logits).
    - `loss`: `"mse"` or `"cross_entropy"` (the per-step loss, `rnnode.LOSSES`).
    - `kind`: `"sequence"`, or `"equilibrium"`: then `xs` is `(1, N, m)` (constant
      inputs), `ys` is `(1, N, k)` (targets for the readout of the equilibrium
      reached under each input) and `weights` is `(1,)`.
    - `dt`: the sampling interval of the data, the natural integrator step.
    - `metrics`: `metrics(outputs, split) -> dict[str, float]`, the named metrics
      (baselines included) of model outputs `(T, N, output_size)` on `split`.
    - `info`: JSON-serialisable facts (true parameters, normalisation, …).
    - `rest_input`: the constant input under which the task's dynamics rest (for
      the flip-flop, zeros: no pulse), `(input_size,)` floats; the input that
      analyses such as fixed points look at by default. `None` when the task
      has no such input.
    """

    name: str
    train: Split
    test: Split
    input_size: int
    output_size: int
    loss: str
    kind: str
    dt: float
    metrics: Callable[[np.ndarray, Split], dict[str, float]]
    info: dict[str, Any]
    rest_input: tuple[float, ...] | None = None
    val: Split | None = None

    @property
    def splits(self) -> dict[str, Split]:
        """The splits by name: `train`, `val` (when there is one), `test`."""
        named = {"train": self.train, "val": self.val, "test": self.test}
        return {k: v for k, v in named.items() if v is not None}

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"`Task.loss` must be one of {LOSSES}, got {self.loss!r}")
        if self.kind not in KINDS:
            raise ValueError(f"`Task.kind` must be one of {KINDS}, got {self.kind!r}")
        for split in self.splits.values():
            if split.xs.shape[-1] != self.input_size:
                raise ValueError("`Task.input_size` disagrees with the data")
            labels = split.ys.ndim == 2
            if labels != (self.loss == "cross_entropy"):
                raise ValueError("`Task.loss` disagrees with the targets' dtype")
            if not labels and split.ys.shape[-1] != self.output_size:
                raise ValueError("`Task.output_size` disagrees with the data")
            if self.kind == "equilibrium" and split.num_steps != 1:
                raise ValueError("an equilibrium task has exactly one time step")
        if self.rest_input is not None and len(self.rest_input) != self.input_size:
            raise ValueError("`Task.rest_input` must have `input_size` entries")


# Metrics. Each takes the model's outputs on a split and scores the steps that the
# split's weights select, each weighted by its a_t, like the loss; for the weights
# the tasks here use (uniform over the scored steps) that is a plain mean over them.


def regression_metrics(outputs, split: Split) -> dict[str, float]:
    """`mse` of the outputs, and `baseline_mse`: the MSE of predicting the mean
    target (per feature, over the scored steps of this split)."""
    out = _check_outputs(outputs, split)
    w = _step_weights(split)
    mean = np.einsum("tn,tnk->k", w, split.ys) / w.sum()
    return {
        "mse": _weighted_mean(np.mean((out - split.ys) ** 2, axis=-1), w),
        "baseline_mse": _weighted_mean(np.mean((mean - split.ys) ** 2, axis=-1), w),
    }


def classification_metrics(
    outputs, split: Split, *, num_classes: int, per_sequence: bool = False
) -> dict[str, float]:
    """`accuracy` (argmax of the logits against the labels) and `cross_entropy`
    on the scored steps, with the chance levels `chance_accuracy = 1/C` and
    `chance_cross_entropy = log C` (a uniform guess). With `per_sequence`, also
    `sequence_accuracy`: the fraction of sequences with every scored step right."""
    out = _check_outputs(outputs, split, size=num_classes)
    w = _step_weights(split)
    labels = split.ys
    correct = np.argmax(out, axis=-1) == labels
    shifted = out - out.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    nll = -np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    metrics = {
        "accuracy": _weighted_mean(correct, w),
        "cross_entropy": _weighted_mean(nll, w),
        "chance_accuracy": 1.0 / num_classes,
        "chance_cross_entropy": math.log(num_classes),
    }
    if per_sequence:
        scored = w > 0
        metrics["sequence_accuracy"] = float(np.mean(np.all(correct | ~scored, axis=0)))
    return metrics


def nmse(outputs, split: Split) -> float:
    """The normalised mean squared error of `outputs` on `split`'s scored steps:

    `NMSE = Σ_{t,n} a_t ‖o_{t,n} - y_{t,n}‖² / Σ_{t,n} a_t ‖y_{t,n} - ȳ‖²`,

    `ȳ` the (weighted) mean target of the split, per feature: the MSE divided by
    the variance of the targets, so predicting the mean scores 1 and a perfect
    prediction 0, whatever the series' scale (the metric of the Santa Fe
    competition, Weigend & Gershenfeld 1994, and of next-step prediction
    studies).

    **Arguments:**

    - `outputs`: the model's outputs `(T, N, output_size)` on the split.
    - `split`: a regression `Split`.

    **Returns:** the NMSE, a float (`inf` if every target is the same).
    """
    m = regression_metrics(outputs, split)
    return m["mse"] / m["baseline_mse"] if m["baseline_mse"] > 0 else math.inf


def _step_weights(split: Split) -> np.ndarray:
    """The weights broadcast to `(T, N)`."""
    w = split.weights
    return np.broadcast_to(w[:, None] if w.ndim == 1 else w, split.ys.shape[:2])


def _weighted_mean(values, w) -> float:
    # fsum: exact sums, so that e.g. an accuracy of all-correct steps is exactly 1
    w = np.broadcast_to(w, np.shape(values))
    return math.fsum((w * values).ravel()) / math.fsum(w.ravel())


def _check_outputs(outputs, split: Split, *, size: int | None = None) -> np.ndarray:
    out = np.asarray(outputs, dtype=np.float64)
    if size is None:
        size = split.ys.shape[-1]
    expected = (*split.ys.shape[:2], size)
    if out.shape != expected:
        raise ValueError(
            f"`outputs` must have shape (T, N, output_size) = {expected} for this "
            f"split, got {out.shape}"
        )
    return out


def rngs(seed: int, count: int) -> list[np.random.Generator]:
    """`count` independent generators from one seed (one per purpose, so that e.g.
    the test set does not change when the number of training sequences does)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


def last_step(num_steps: int) -> np.ndarray:
    w = np.zeros(num_steps)
    w[-1] = 1.0
    return w


def uniform(num_steps: int, *, skip: int = 0) -> np.ndarray:
    """`1/(T - skip)` on the steps after the first `skip`, 0 on those."""
    w = np.zeros(num_steps)
    w[skip:] = 1.0 / (num_steps - skip)
    return w


def check_range(value: tuple[float, float], *, positive: bool = True):
    """Validator body for a `(low, high)` option."""
    lo, hi = value
    if positive and lo <= 0:
        raise ValueError(f"the low end must be > 0, got {lo}")
    if hi < lo:
        raise ValueError(f"must be (low, high) with low <= high, got {value}")
    return value
