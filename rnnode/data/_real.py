"""Real data shipped with installed packages (no network): scikit-learn's
handwritten digits and statsmodels' yearly and monthly sunspot numbers."""

import functools
import importlib.resources
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
    nmse,
    regression_metrics,
    rngs,
    uniform,
)

Fraction = Annotated[float, Field(gt=0, lt=1)]

# digits

_DIGITS_SIZE = 1797  # images in sklearn.datasets.load_digits


def _fractions_below_one(cls, value, info: ValidationInfo):
    """`val_fraction` + `test_fraction` < 1 (a validator of both real-data
    tasks' options; `test_fraction` is validated first)."""
    del cls
    if value + info.data.get("test_fraction", 0.0) >= 1:
        raise ValueError(
            f"`val_fraction` + `test_fraction` must be < 1, got {value} + "
            f"{info.data['test_fraction']}"
        )
    return value


class DigitsOptions(TaskOptions):
    """Options of `digits`."""

    test_fraction: Fraction = 0.25
    """Fraction of the 1797 images held out for the test (stratified by class)."""
    val_fraction: Fraction = 0.1
    """Fraction of the 1797 images held out from the training ones for validation
    (stratified by class)."""
    num_train: Count | None = None
    """Use only this many training images (default: all)."""
    num_val: Count | None = None
    """Use only this many validation images (default: all)."""
    num_test: Count | None = None
    """Use only this many test images (default: all)."""
    read: Literal["rows", "pixels"] = "rows"
    """`rows`: 8 steps of 8 pixels; `pixels`: 64 steps of one pixel (sequential
    digits, the small cousin of sequential MNIST)."""

    _check_fractions = field_validator("val_fraction")(_fractions_below_one)

    @field_validator("num_train", "num_val", "num_test")
    @classmethod
    def _check_size(cls, count, info: ValidationInfo):
        if count is None or not {"test_fraction", "val_fraction"} <= set(info.data):
            return count
        test, val = _digits_counts(
            info.data["test_fraction"], info.data["val_fraction"]
        )
        available = {
            "num_test": test,
            "num_val": val,
            "num_train": _DIGITS_SIZE - test - val,
        }[info.field_name]
        if count > available:
            raise ValueError(
                f"{count} is more than the {available} images that `test_fraction` "
                f"= {info.data['test_fraction']} and `val_fraction` = "
                f"{info.data['val_fraction']} leave"
            )
        return count


def _digits_counts(test_fraction: float, val_fraction: float) -> tuple[int, int]:
    """The sizes of the test and validation sets (as scikit-learn rounds them)."""
    test = math.ceil(test_fraction * _DIGITS_SIZE)
    val = math.ceil(val_fraction * _DIGITS_SIZE)
    return test, val


def digits(o: DigitsOptions, *, seed: int) -> Task:
    """Classify scikit-learn's 8×8 handwritten digits read row by row.

    `sklearn.datasets.load_digits` (bundled with scikit-learn; the UCI optical
    recognition of handwritten digits test set, 1797 images): each image is a
    sequence of 8 steps (its rows) of 8 features (the pixels, scaled from 0..16 to
    [0, 1]). Labels `(8, N)` repeat the digit at every step; only the last step is
    scored (weights `(0, …, 0, 1)`). With `read: pixels` each image is instead 64
    steps of one pixel each, in row-major order. The test images are split off
    first, then the validation images from the rest, both stratified and
    shuffled with the seed (so the test set does not depend on `val_fraction`).

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
    test, val = _digits_counts(o.test_fraction, o.val_fraction)
    train_idx, val_idx = train_test_split(
        train_idx,
        test_size=val,
        stratify=labels[train_idx],
        random_state=int(rng.integers(2**32 - 1)),
    )
    train_idx, test_idx = train_idx[: o.num_train], test_idx[: o.num_test]
    val_idx = val_idx[: o.num_val]

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
        val=split(val_idx),
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

_SUNSPOT_SIZES = {"yearly": 309, "monthly": 3126}
"""Samples in statsmodels' data: years 1700–2008, months 1749-01 – 2009-06."""


class SunspotsOptions(TaskOptions):
    """Options of `sunspots`."""

    resolution: Literal["yearly", "monthly"] = "yearly"
    """`yearly`: the yearly means 1700–2008 (309 samples); `monthly`: the monthly
    means 1749-01 – 2009-06 (3126 samples), both shipped with statsmodels."""
    test_fraction: Fraction = 0.2
    """Fraction of the samples, the latest ones, held out for the test."""
    val_fraction: Fraction = 0.1
    """Fraction of the samples held out for validation: those just before the
    test period (the end of what would otherwise be the training period)."""
    num_steps: Count = 20
    """Window length `L` (samples per sequence)."""
    horizon: Count = 1
    """Forecast `h` samples ahead: input `y_t`, target `y_{t+h}`."""
    warmup: NonNegativeCount = 5
    """The first steps of every window are not scored (the state settles)."""
    stride: Count = 1
    """Samples between the starts of consecutive windows."""

    # Fields are validated in order, so each check sees the ones above it.
    _check_fractions = field_validator("val_fraction")(_fractions_below_one)

    @field_validator("num_steps", "horizon")
    @classmethod
    def _check_length(cls, value, info: ValidationInfo):
        if not {"resolution", "test_fraction", "val_fraction"} <= set(info.data):
            return value
        sizes = _sunspot_split_sizes(
            _SUNSPOT_SIZES[info.data["resolution"]],
            info.data["test_fraction"],
            info.data["val_fraction"],
        )
        shortest = min(sizes)
        if info.field_name == "num_steps":
            need, what = value + 1, "`num_steps` + 1"
        elif "num_steps" in info.data:
            need = info.data["num_steps"] + value
            what = "`num_steps` + `horizon`"
        else:
            return value
        if need > shortest:
            raise ValueError(
                f"{what} = {need} is more than the {shortest} samples of the "
                f"shortest split (`test_fraction` = {info.data['test_fraction']}, "
                f"`val_fraction` = {info.data['val_fraction']})"
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


def _sunspot_split_sizes(n: int, test_fraction: float, val_fraction: float):
    """`(train, val, test)` sample counts of a series of `n` samples."""
    test, val = round(test_fraction * n), round(val_fraction * n)
    return n - test - val, val, test


def sunspots(o: SunspotsOptions, *, seed: int) -> Task:
    """Forecast the sunspot number `horizon` samples (years or months) ahead.

    statsmodels' `sunspots` data set (bundled): the yearly mean sunspot numbers
    `SUNACTIVITY`, 1700–2008, or with `resolution: monthly` the monthly means
    1749-01 – 2009-06 shipped beside them (`sunspots_monthly.dat`; values after
    2008-12 were marked preliminary). In time order: the training period, then
    the validation period (`val_fraction`), then the test period (the latest
    `test_fraction`), with no overlap, not even of inputs. Values are normalised
    with the mean and standard deviation of the samples before the test period
    (`info["mean"]`, `info["std"]`). Each sequence is a window of `num_steps` samples: input
    `y_t`, target `y_{t+h}` (`h = horizon`; 1 is one-step-ahead, larger is
    multi-step forecasting from the observed past), scored after the first
    `warmup` steps. Deterministic: the seed is not used.

    **Metrics:** `mse` (normalised), `nmse` (the MSE over the targets' variance,
    see `rnnode.data.nmse`) and `mse_original`, `rmse_original` (sunspot
    numbers); the persistence baseline `persistence_mse` (and
    `persistence_mse_original`), forecasting `y_{t+h}` by `y_t`; `baseline_mse`,
    predicting the mean.
    """
    del seed
    times, values = _load_sunspots(o.resolution)
    n = len(values)
    if n != _SUNSPOT_SIZES[o.resolution]:
        raise RuntimeError(
            f"expected {_SUNSPOT_SIZES[o.resolution]} {o.resolution} sunspot "
            f"numbers, found {n}"
        )
    n_train, n_val, _ = _sunspot_split_sizes(n, o.test_fraction, o.val_fraction)
    cut = n_train + n_val
    # the statistics of all that precedes the test period, as before there was a
    # validation split: a saved run's test data are unchanged
    mean, std = float(values[:cut].mean()), float(values[:cut].std())
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

    def period(a, b):
        return [_sunspot_time(times[a]), _sunspot_time(times[b - 1])]

    return Task(
        name="sunspots",
        train=split(z[:n_train]),
        test=split(z[cut:]),
        val=split(z[n_train:cut]),
        input_size=1,
        output_size=1,
        loss="mse",
        kind="sequence",
        dt=1.0,
        metrics=functools.partial(_sunspot_metrics, std=std),
        info={
            "mean": mean,
            "std": std,
            "resolution": o.resolution,
            "train_period": period(0, n_train),
            "val_period": period(n_train, cut),
            "test_period": period(cut, n),
            "horizon": h,
            "warmup": o.warmup,
            "source": "statsmodels.datasets.sunspots ("
            + ("SUNACTIVITY" if o.resolution == "yearly" else "sunspots_monthly.dat")
            + ")",
        },
    )


def _sunspot_time(t: float):
    """A year (yearly data) or `"YYYY-MM"` (monthly data, `t = year + month/12`)."""
    if float(t).is_integer():
        return int(t)
    year, month = divmod(round(t * 12), 12)
    return f"{year}-{month + 1:02d}"


def _load_sunspots(resolution: str) -> tuple[np.ndarray, np.ndarray]:
    """`(times, values)`: years, or `year + month_index/12` for monthly data."""
    if resolution == "yearly":
        from statsmodels.datasets import sunspots as sunspots_data

        frame = sunspots_data.load_pandas().data
        return (
            frame["YEAR"].to_numpy(dtype=np.float64),
            frame["SUNACTIVITY"].to_numpy(dtype=np.float64),
        )
    source = importlib.resources.files("statsmodels.datasets.sunspots")
    text = source.joinpath("src", "sunspots_monthly.dat").read_text()
    times, values = [], []
    for line in text.splitlines():
        fields = line.split()
        # a data row: the year, then up to 12 monthly means
        if not fields or not (fields[0].isdigit() and len(fields[0]) == 4):
            continue
        year = int(fields[0])
        for month, v in enumerate(fields[1:13]):
            times.append(year + month / 12)
            values.append(float(v))
    return np.asarray(times), np.asarray(values)


def _sunspot_metrics(outputs, split: Split, *, std: float) -> dict[str, float]:
    metrics = regression_metrics(outputs, split)
    persistence = regression_metrics(split.xs, split)["mse"]
    scale = std**2
    return {
        **metrics,
        "nmse": nmse(outputs, split),
        "mse_original": metrics["mse"] * scale,
        "rmse_original": math.sqrt(metrics["mse"] * scale),
        "persistence_mse": persistence,
        "persistence_mse_original": persistence * scale,
    }
