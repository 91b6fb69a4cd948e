"""Real data shipped with installed packages (no network): scikit-learn's
handwritten digits and statsmodels' yearly sunspot numbers."""

import functools
import math
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from ._base import (
    Count,
    NonNegativeCount,
    Split,
    Task,
    TaskOptions,
    classification_metrics,
    last_step,
    regression_metrics,
    rngs,
    uniform,
)

Fraction = Annotated[float, Field(gt=0, lt=1)]

# digits

_DIGITS_SIZE = 1797  # images in sklearn.datasets.load_digits


class DigitsOptions(TaskOptions):
    """Options of `digits`."""

    test_fraction: Fraction = 0.25
    """Fraction of the 1797 images held out (stratified by class)."""
    num_train: Count | None = None
    """Use only this many training images (default: all)."""
    num_test: Count | None = None
    """Use only this many test images (default: all)."""
    read: Literal["rows", "pixels"] = "rows"
    """`rows`: 8 steps of 8 pixels; `pixels`: 64 steps of one pixel (sequential
    digits, the small cousin of sequential MNIST)."""

    @field_validator("num_train", "num_test")
    @classmethod
    def _check_size(cls, count, info: ValidationInfo):
        if count is None or "test_fraction" not in info.data:
            return count
        test = math.ceil(info.data["test_fraction"] * _DIGITS_SIZE)
        available = test if info.field_name == "num_test" else _DIGITS_SIZE - test
        if count > available:
            raise ValueError(
                f"{count} is more than the {available} images that "
                f"`test_fraction` = {info.data['test_fraction']} leaves"
            )
        return count


def digits(o: DigitsOptions, *, seed: int) -> Task:
    """Classify scikit-learn's 8×8 handwritten digits read row by row.

    `sklearn.datasets.load_digits` (bundled with scikit-learn; the UCI optical
    recognition of handwritten digits test set, 1797 images): each image is a
    sequence of 8 steps (its rows) of 8 features (the pixels, scaled from 0..16 to
    [0, 1]). Labels `(8, N)` repeat the digit at every step; only the last step is
    scored (weights `(0, …, 0, 1)`). With `read: pixels` each image is instead 64
    steps of one pixel each, in row-major order. The train/test split is
    stratified, shuffled with the seed.

    **Metrics:** `accuracy`, `cross_entropy`; `chance_accuracy = 0.1`,
    `chance_cross_entropy = log 10`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images, labels = data.images / 16.0, data.target.astype(np.int64)
    (rng,) = rngs(seed, 1)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=o.test_fraction,
        stratify=labels,
        random_state=int(rng.integers(2**32 - 1)),
    )
    train_idx, test_idx = train_idx[: o.num_train], test_idx[: o.num_test]

    T, width = (8, 8) if o.read == "rows" else (64, 1)

    def split(index):
        seq = images[index].reshape(len(index), T, width)
        xs = np.transpose(seq, (1, 0, 2))  # (time, N, features)
        ys = np.broadcast_to(labels[index], (T, len(index)))
        return Split(xs=np.array(xs), ys=np.array(ys), weights=last_step(T))

    return Task(
        name="digits",
        train=split(train_idx),
        test=split(test_idx),
        input_size=width,
        output_size=10,
        loss="cross_entropy",
        kind="sequence",
        dt=1.0,
        metrics=functools.partial(classification_metrics, num_classes=10),
        info={
            "num_classes": 10,
            "source": "sklearn.datasets.load_digits",
            "encoding": (
                "step = image row, features = its 8 pixels / 16"
                if o.read == "rows"
                else "step = one pixel / 16, row by row"
            ),
        },
    )


# sunspots

_SUNSPOT_YEARS = 309  # 1700..2008 in statsmodels.datasets.sunspots


class SunspotsOptions(TaskOptions):
    """Options of `sunspots`."""

    test_fraction: Fraction = 0.2
    """Fraction of the years, the latest ones, held out."""
    num_steps: Count = 20
    """Window length `L` (years per sequence)."""
    horizon: Count = 1
    """Forecast `h` years ahead: input `y_t`, target `y_{t+h}`."""
    warmup: NonNegativeCount = 5
    """The first steps of every window are not scored (the state settles)."""
    stride: Count = 1
    """Years between the starts of consecutive windows."""

    # Fields are validated in order, so each check sees the ones above it.
    @field_validator("num_steps", "horizon")
    @classmethod
    def _check_length(cls, value, info: ValidationInfo):
        if "test_fraction" not in info.data:
            return value
        test = round(info.data["test_fraction"] * _SUNSPOT_YEARS)
        shortest = min(test, _SUNSPOT_YEARS - test)
        if info.field_name == "num_steps":
            need, what = value + 1, "`num_steps` + 1"
        elif "num_steps" in info.data:
            need = info.data["num_steps"] + value
            what = "`num_steps` + `horizon`"
        else:
            return value
        if need > shortest:
            raise ValueError(
                f"{what} = {need} is more than the {shortest} years of the shorter "
                f"split (`test_fraction` = {info.data['test_fraction']})"
            )
        return value

    @field_validator("warmup")
    @classmethod
    def _check_warmup(cls, value, info: ValidationInfo):
        if "num_steps" in info.data and value >= info.data["num_steps"]:
            raise ValueError(
                f"must be less than `num_steps` = {info.data['num_steps']}, got {value}"
            )
        return value


def sunspots(o: SunspotsOptions, *, seed: int) -> Task:
    """Forecast the yearly sunspot number `horizon` years ahead.

    statsmodels' `sunspots` data set (bundled; yearly mean sunspot numbers
    `SUNACTIVITY`, 1700–2008). The earlier years are the training period and the
    latest `test_fraction` the test period (no overlap, not even of inputs). Values
    are normalised with the training period's mean and standard deviation
    (`info["mean"]`, `info["std"]`). Each sequence is a window of `num_steps`
    years: input `y_t`, target `y_{t+h}` (`h = horizon`; 1 is one-step-ahead,
    larger is multi-step forecasting from the observed past), scored after the
    first `warmup` steps. Deterministic: the seed is not used.

    **Metrics:** `mse` (normalised) and `mse_original`, `rmse_original` (sunspot
    numbers); the persistence baseline `persistence_mse` (and
    `persistence_mse_original`), forecasting `y_{t+h}` by `y_t`; `baseline_mse`,
    predicting the mean.
    """
    del seed
    from statsmodels.datasets import sunspots as sunspots_data

    frame = sunspots_data.load_pandas().data
    years = frame["YEAR"].to_numpy(dtype=np.float64)
    values = frame["SUNACTIVITY"].to_numpy(dtype=np.float64)
    n = len(values)
    if n != _SUNSPOT_YEARS:
        raise RuntimeError(f"expected {_SUNSPOT_YEARS} years of sunspots, found {n}")
    n_train = n - round(o.test_fraction * n)
    mean, std = float(values[:n_train].mean()), float(values[:n_train].std())
    z = (values - mean) / std
    L, h = o.num_steps, o.horizon

    def split(series):
        starts = np.arange(0, len(series) - L - h + 1, o.stride)
        index = starts[None, :] + np.arange(L)[:, None]  # (L, N)
        return Split(
            xs=series[index][..., None],
            ys=series[index + h][..., None],
            weights=uniform(L, skip=o.warmup),
        )

    return Task(
        name="sunspots",
        train=split(z[:n_train]),
        test=split(z[n_train:]),
        input_size=1,
        output_size=1,
        loss="mse",
        kind="sequence",
        dt=1.0,
        metrics=functools.partial(_sunspot_metrics, std=std),
        info={
            "mean": mean,
            "std": std,
            "train_years": [int(years[0]), int(years[n_train - 1])],
            "test_years": [int(years[n_train]), int(years[-1])],
            "horizon": h,
            "warmup": o.warmup,
            "source": "statsmodels.datasets.sunspots (SUNACTIVITY)",
        },
    )


def _sunspot_metrics(outputs, split: Split, *, std: float) -> dict[str, float]:
    metrics = regression_metrics(outputs, split)
    persistence = regression_metrics(split.xs, split)["mse"]
    scale = std**2
    return {
        **metrics,
        "mse_original": metrics["mse"] * scale,
        "rmse_original": math.sqrt(metrics["mse"] * scale),
        "persistence_mse": persistence,
        "persistence_mse_original": persistence * scale,
    }
