"""Gradient quality as an instrument: how well the gradient of an approximate
method (truncated BPTT, SnAp, UORO, RFLO, …) points along the exact one."""

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree
from matplotlib.figure import Figure

from .._losses import mse
from .._model import Model
from .._sequence import check_sequence, sequence_loss
from ..gradients import (
    GRADIENT_VARIANTS,
    AbstractGradient,
    Autodiff,
    make_gradient,
)
from ._common import new_figure, to_json

ALL = "all"
"""The name of the group of all parameters together."""


@dataclasses.dataclass(frozen=True, eq=False)
class GradientAlignment:
    """The result of `gradient_alignment`.

    **Fields:**

    - `methods`: the methods' names (rows of the arrays below).
    - `groups`: the parameter groups (columns): each parameter array by its path
      in the model (`"dynamics.W"`, `"readout.weight"`, …), then `"all"`, every
      parameter as one vector. Arrays whose gradient is zero for every sequence
      and every method (e.g. a fixed initial state) are left out.
    - `cosine`: `(methods, groups)`, the cosine similarity of each method's
      gradient to the reference's, computed per sequence and averaged over the
      sequences.
    - `norm_ratio`: `(methods, groups)`, `‖g_method‖ / ‖g_reference‖` per
      sequence, averaged over the sequences.
    - `batch_cosine`, `batch_norm_ratio`: the same for the batch-mean gradients
      (the gradient of the batch loss, what one training step uses).
    - `num_sequences`, `num_steps`: the data they were measured on.
    - `reference`: the name of the exact method (`Autodiff` by default).
    - `skipped`: methods that do not apply to the model, name → the reason.

    A cosine is `NaN` where the reference gradient of a group is zero (undefined);
    a method whose gradient of a group is zero has cosine 0 there. `to_dict()`
    gives plain JSON (NaN as `null`), `str()` a table.
    """

    methods: tuple[str, ...]
    groups: tuple[str, ...]
    cosine: np.ndarray
    norm_ratio: np.ndarray
    batch_cosine: np.ndarray
    batch_norm_ratio: np.ndarray
    num_sequences: int
    num_steps: int
    reference: str
    skipped: dict[str, str]

    def to_dict(self) -> dict:
        """The numbers as a JSON-ready dict: per method, per group, the four
        measures."""
        per_method = {
            name: {
                group: {
                    "cosine": self.cosine[i, j],
                    "norm_ratio": self.norm_ratio[i, j],
                    "batch_cosine": self.batch_cosine[i, j],
                    "batch_norm_ratio": self.batch_norm_ratio[i, j],
                }
                for j, group in enumerate(self.groups)
            }
            for i, name in enumerate(self.methods)
        }
        return to_json(
            {
                "reference": self.reference,
                "num_sequences": self.num_sequences,
                "num_steps": self.num_steps,
                "groups": list(self.groups),
                "methods": per_method,
                "skipped": self.skipped,
            }
        )

    @classmethod
    def from_dict(cls, d: dict) -> "GradientAlignment":
        """The inverse of `to_dict` (extra keys are ignored)."""
        methods, groups = tuple(d["methods"]), tuple(d["groups"])

        def measure(key):
            return np.array(
                [[_num(d["methods"][m][g][key]) for g in groups] for m in methods],
                dtype=np.float64,
            ).reshape(len(methods), len(groups))

        return cls(
            methods=methods,
            groups=groups,
            cosine=measure("cosine"),
            norm_ratio=measure("norm_ratio"),
            batch_cosine=measure("batch_cosine"),
            batch_norm_ratio=measure("batch_norm_ratio"),
            num_sequences=d["num_sequences"],
            num_steps=d["num_steps"],
            reference=d["reference"],
            skipped=dict(d["skipped"]),
        )

    def save(self, path: str | Path) -> None:
        """Write `to_dict()` as JSON to `path`."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    def table(self) -> str:
        """A markdown table: one row per method, the overall cosine and norm
        ratio (per sequence and of the batch mean), then the cosine per group."""
        j = self.groups.index(ALL)
        others = [g for g in self.groups if g != ALL]
        head = ["method", "cosine", "norm ratio", "batch cosine", "batch norm ratio"]
        head += [f"cos {g}" for g in others]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i, name in enumerate(self.methods):
            row = [
                name,
                *(
                    _fmt(a[i, j])
                    for a in (
                        self.cosine,
                        self.norm_ratio,
                        self.batch_cosine,
                        self.batch_norm_ratio,
                    )
                ),
                *(_fmt(self.cosine[i, self.groups.index(g)]) for g in others),
            ]
            lines.append("| " + " | ".join(row) + " |")
        for name, why in self.skipped.items():
            lines.append(f"| {name} | not applicable: {why} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return (
            f"gradient alignment against {self.reference} "
            f"({self.num_sequences} sequence(s) of {self.num_steps} steps)\n"
            + self.table()
        )


def gradient_alignment(
    model: Model,
    xs: Float[ArrayLike, "time *batch input"],
    ys: PyTree[ArrayLike],
    methods: Mapping[str, AbstractGradient] | Sequence[AbstractGradient],
    *,
    loss: Callable[[Array, Array], Float[Array, ""]] = mse,
    weights: Float[ArrayLike, "time *batch"] | None = None,
    reference: AbstractGradient = Autodiff(),
    on_error: Literal["raise", "skip"] = "raise",
) -> GradientAlignment:
    """How well each method's gradient of the sequence loss points along the
    exact one: cosine similarity and norm ratio, per parameter array and overall.

    For every sequence of the batch the gradient of `sequence_loss(model, x, y,
    loss=loss, weights=w, gradient=method)` with respect to the model's
    floating-point arrays is computed (a `vmap` over the batch), compared with
    the reference's, and the per-sequence cosines and norm ratios are averaged;
    the cosine and norm ratio of the batch-mean gradients are reported beside
    them. The gradients of the approximate online methods are those their
    online updates sum to with the parameters held fixed (see each method).
    Marschall, Cho & Savin (2020), "A unified framework of online learning
    algorithms for training recurrent neural networks" (JMLR), use these
    measures to compare online learning rules.

    **Arguments:**

    - `model`: an `rnnode.Model`.
    - `xs`: inputs, time-major `(T, input)` or `(T, batch, input)`.
    - `ys`: targets with the same leading axes.
    - `methods`: a dict name → gradient strategy (e.g. `{"truncated": BPTT(
      truncate=1)}`), or a list of strategies, named after their class and
      non-default options (`"BPTT(truncate=1)"`).
    - `loss`: the per-step loss, e.g. `rnnode.mse`, `rnnode.cross_entropy`.
    - `weights`: the time weights `a_t`, `(T,)` or `(T, batch)`; default `1/T`.
    - `reference`: the exact gradient to compare with (default `Autodiff()`).
    - `on_error`: `"raise"` (default) or `"skip"`: a method that raises
      `ValueError` for this model (one it does not support) is then listed in
      `skipped` with the message instead.

    **Returns:** a `GradientAlignment`; `print` it for a table, `.save(path)` for
    JSON, `plot_alignment(result)` for a figure.
    """
    if not isinstance(model, Model):
        raise ValueError(f"expected an `rnnode.Model`, got {type(model).__name__}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f'`on_error` must be "raise" or "skip", got {on_error!r}')
    named = _named(methods)
    xs, ys, weights = check_sequence(model, xs, ys, weights)
    if xs.ndim == 2:  # one sequence: a batch of one
        xs, weights = xs[:, None], weights if weights.ndim == 1 else weights[:, None]
        ys = jax.tree.map(lambda a: a[:, None], ys)
    w_axis = 1 if weights.ndim == 2 else None
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def per_sequence(gradient):
        def one(x, y, w):
            def f(p):
                m = eqx.combine(p, static)
                return sequence_loss(m, x, y, loss=loss, weights=w, gradient=gradient)

            return jax.grad(f)(params)

        run = eqx.filter_jit(jax.vmap(one, in_axes=(1, 1, w_axis)))
        return _flatten(run(xs, ys, weights))

    paths, exact = per_sequence(reference)
    results, skipped = {}, {}
    for name, gradient in named.items():
        try:
            method_paths, leaves = per_sequence(gradient)
        except ValueError as e:
            if on_error == "raise":
                raise
            skipped[name] = str(e).splitlines()[0]
            continue
        assert method_paths == paths  # jax.grad gives the same tree every time
        results[name] = leaves

    # the groups worth reporting: some sequence or some method has a gradient there
    keep = [
        k
        for k in range(len(paths))
        if np.any(exact[k]) or any(np.any(g[k]) for g in results.values())
    ]
    groups = tuple(paths[k] for k in keep) + (ALL,)
    B = xs.shape[1]
    shape = (len(results), len(groups))
    cosine, ratio = np.zeros(shape), np.zeros(shape)
    batch_cosine, batch_ratio = np.zeros(shape), np.zeros(shape)
    for i, leaves in enumerate(results.values()):
        for j, (a, b) in enumerate(_grouped(leaves, exact, keep, B)):
            c, r = _cosine_ratio(a, b)
            cosine[i, j], ratio[i, j] = _nanmean(c), _nanmean(r)
            c, r = _cosine_ratio(a.mean(0, keepdims=True), b.mean(0, keepdims=True))
            batch_cosine[i, j], batch_ratio[i, j] = c[0], r[0]
    return GradientAlignment(
        methods=tuple(results),
        groups=groups,
        cosine=cosine,
        norm_ratio=ratio,
        batch_cosine=batch_cosine,
        batch_norm_ratio=batch_ratio,
        num_sequences=B,
        num_steps=int(xs.shape[0]),
        reference=method_name(reference),
        skipped=skipped,
    )


def plot_alignment(result: GradientAlignment, path: str | Path | None = None) -> Figure:
    """Bar charts of `result`: the cosine (left) and the norm ratio (right, log
    scale) of each method, grouped by parameter group, the batch-mean values
    marked by dots. Written to `path` when given.

    **Returns:** the matplotlib `Figure`.
    """
    groups, methods = result.groups, result.methods
    fig, (ax1, ax2) = new_figure(2, width=max(5.0, 0.8 * len(groups) + 2.5))
    x = np.arange(len(groups))
    width = 0.8 / max(len(methods), 1)
    for i, name in enumerate(methods):
        offset = x - 0.4 + width * (i + 0.5)
        for ax, values, batch in (
            (ax1, result.cosine, result.batch_cosine),
            (ax2, result.norm_ratio, result.batch_norm_ratio),
        ):
            ax.bar(offset, values[i], width, label=name, color=f"C{i}")
            ax.plot(offset, batch[i], "k.", ms=4)
    ax1.axhline(1.0, color="k", lw=0.8, ls="--")
    ax1.axhline(0.0, color="k", lw=0.8)
    ax1.set_ylabel(f"cosine to {result.reference}")
    ax1.set_title("gradient alignment (bars: mean over sequences; dots: batch mean)")
    ax2.axhline(1.0, color="k", lw=0.8, ls="--")
    finite = result.norm_ratio[np.isfinite(result.norm_ratio)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 10:
        ax2.set_yscale("log")
    ax2.set_ylabel(f"norm / norm of {result.reference}")
    ax2.set_title("norm ratio")
    for ax in (ax1, ax2):
        ax.set_xticks(x, groups, rotation=30, ha="right")
    if methods:
        ax1.legend(fontsize="small")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def alignment_methods() -> dict[str, AbstractGradient]:
    """The methods `rnnode analyse RUN --what alignment` compares with the exact
    gradient: exact RTRL and BPTT (a check: cosine 1), truncated BPTT with 1 and
    10 steps, and the approximate online methods (SnAp-1, SnAp-2, UORO, KF-RTRL,
    RFLO with symmetric and with random feedback, e-prop; the stochastic ones
    with their default seed): `rnnode.GRADIENT_VARIANTS`, the one table of
    methods."""
    return {name: make_gradient(name) for name in GRADIENT_VARIANTS}


def method_name(method: AbstractGradient) -> str:
    """A short name: the class and its options that differ from the defaults,
    e.g. `BPTT(truncate=1)`; `RTRL` for the default `RTRL()`."""
    options = []
    for field in dataclasses.fields(method):
        value = getattr(method, field.name)
        if isinstance(value, jax.Array) and value.ndim == 0:
            value = value.item()  # a seed, kept as data
        if not isinstance(value, (bool, int, float, str)) and value is not None:
            continue
        if field.default is not dataclasses.MISSING and value == field.default:
            continue
        options.append(f"{field.name}={value!r}")
    name = type(method).__name__
    return f"{name}({', '.join(options)})" if options else name


def _named(methods) -> dict[str, AbstractGradient]:
    if isinstance(methods, Mapping):
        named = dict(methods)
    elif isinstance(methods, Sequence) and not isinstance(methods, str):
        named = {}
        for m in methods:
            name = method_name(m) if isinstance(m, AbstractGradient) else repr(m)
            if name in named:
                raise ValueError(
                    f"`methods` lists `{name}` twice; pass a dict name → method to "
                    "tell them apart"
                )
            named[name] = m
    else:
        raise ValueError(
            "`methods` must be a dict name → gradient strategy or a list of "
            f"strategies, got {type(methods).__name__}"
        )
    for name, m in named.items():
        if not isinstance(m, AbstractGradient):
            raise ValueError(
                f"`methods[{name!r}]` must be a gradient strategy such as "
                f"`rnnode.RTRL()`, got {type(m).__name__}"
            )
    return named


def _flatten(grads) -> tuple[list[str], list[np.ndarray]]:
    """The gradient leaves `(batch, ...)` as float64 NumPy arrays, with their
    paths in the model (`dynamics.W`)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(grads)
    paths = [jax.tree_util.keystr(p).lstrip(".") for p, _ in flat]
    return paths, [np.asarray(leaf, dtype=np.float64) for _, leaf in flat]


def _grouped(leaves, exact, keep, B):
    """`(method, reference)` pairs of `(batch, size)` matrices: each kept array,
    then all of them together."""
    flat = [(leaves[k].reshape(B, -1), exact[k].reshape(B, -1)) for k in keep]
    yield from flat
    if flat:
        yield (
            np.concatenate([a for a, _ in flat], 1),
            np.concatenate([b for _, b in flat], 1),
        )
    else:
        yield np.zeros((B, 1)), np.zeros((B, 1))


def _cosine_ratio(a, b):
    """Per row: the cosine of `a` to `b` (NaN where `b = 0`, 0 where only `a = 0`)
    and `‖a‖ / ‖b‖` (NaN where `b = 0`)."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(nb > 0, np.sum(a * b, 1) / np.maximum(na * nb, 1e-300), np.nan)
        cos = np.where((nb > 0) & (na == 0), 0.0, cos)
        ratio = np.where(nb > 0, na / np.where(nb > 0, nb, 1.0), np.nan)
    return np.clip(cos, -1.0, 1.0), ratio


def _nanmean(values) -> float:
    values = values[~np.isnan(values)]
    return float(np.mean(values)) if values.size else math.nan


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _fmt(value) -> str:
    return "–" if not np.isfinite(value) else f"{value:.4f}"
