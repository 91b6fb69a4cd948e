"""`run_analysis`: one named analysis of a model on one input sequence, written
as `<what>.json` and `<what>.png`."""

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._losses import mse
from .._model import Model, check_inputs
from ._alignment import alignment_methods, gradient_alignment, plot_alignment
from ._common import to_json
from ._fixed_point_plots import leading_eigenvalues, plot_fixed_points
from ._fixed_point_result import STABILITIES, FixedPoints
from ._fixed_points import find_fixed_points
from ._jacobians import (
    gradient_norm_vs_lag,
    jacobian_norm_vs_lag,
    jacobian_spectrum,
    plot_jacobian_spectrum,
    plot_norm_vs_lag,
)
from ._line_attractor import line_attractor, plot_line_attractor
from ._lyapunov import lyapunov_exponents, plot_lyapunov

ANALYSES: tuple[str, ...] = (
    "jacobian_spectrum",
    "gradient_norm",
    "lyapunov",
    "fixed_points",
    "line_attractor",
    "alignment",
)
"""The names `run_analysis(..., what=...)` accepts."""

_MAX_SINGULAR_VALUES = 8
_MAX_LYAPUNOV = 32
_MAX_FRAME = 64


def run_analysis(
    model: Model,
    xs: Float[ArrayLike, "time *batch input"],
    *,
    what: str,
    out_dir: str | Path,
    ys: PyTree[ArrayLike] | None = None,
    loss: Callable[[Array, Array], Float[Array, ""]] = mse,
    key: PRNGKeyArray | None = None,
    weights: Float[ArrayLike, "time *batch"] | None = None,
    x: Float[ArrayLike, " input"] | None = None,
    tol: float | Sequence[float] | None = None,
    num_starts: int | None = None,
    noise: float | None = None,
    starts_from: str | None = None,
    method: str | None = None,
    contexts: ArrayLike | None = None,
    stimulus: Sequence[int] | None = None,
) -> dict:
    """Run the analysis `what` on the first sequence of `xs` (`"fixed_points"`
    and `"alignment"`: on all of them); write
    `out_dir/<what>.json` (the numbers) and `out_dir/<what>.png` (the picture).

    - `"jacobian_spectrum"`: singular values of `∂h_t/∂h_0` against `t`, and the
      eigenvalues of the full product (`jacobian_spectrum`).
    - `"gradient_norm"`: `‖∂l_T/∂h_k‖` against `T - k` (`gradient_norm_vs_lag`)
      when targets `ys` are given, else the target-free `‖∂h_T/∂h_k‖₂`
      (`jacobian_norm_vs_lag`), which bounds it up to the factor `‖∂l_T/∂h_T‖`
      (exact for states up to 64 numbers, a lower bound from 64 vectors beyond).
    - `"lyapunov"`: the top `min(n, 32)` Lyapunov exponents of the driven
      dynamics, the first 10% of steps as transient (`lyapunov_exponents`).
    - `"fixed_points"`: fixed points under the constant input `x`, from
      `num_starts` starts drawn from the states visited by every sequence of `xs`
      plus noise (`find_fixed_points`), with each point's speed, eigenvalues,
      largest eigenvalue and readout; the figure is a 3-D PCA of those states
      (`plot_fixed_points(..., dims=3)`). With `contexts` (one label per
      sequence) the search runs under each context's own input (its sequences'
      first input, e.g. fixation and the context cue, no stimulus) from the
      states of its sequences, and each point carries its context; with
      `stimulus` (input indices) the record has each point's selection-vector
      projections on those inputs.
    - `"line_attractor"`: per context (default: one, all sequences), the slow points
      (`tol` default: 1% and 5% of the median speed at the visited states),
      the fraction of their variance on a line,
      their slow and next eigenvalues, and the selection vector's projections
      on the `stimulus` inputs (default: all), relevant (the `k`-th stimulus
      input in the `k`-th context, labels sorted) against the others
      (`line_attractor`);
      the figure in the style of Mante et al. (2013), Fig. 6.
    - `"alignment"`: the cosine and norm ratio of every gradient method that
      applies to the model against the exact gradient, per parameter array,
      over all the sequences of `xs` (`gradient_alignment` with
      `alignment_methods()`; needs `ys`).

    **Arguments:**

    - `model`: an `rnnode.Model`.
    - `xs`: inputs, time-major `(T, input)` or `(T, batch, input)` (the first
      sequence is used).
    - `what`: one of `ANALYSES`.
    - `out_dir`: the directory to write to (created if missing).
    - `ys`: optional targets matching `xs` (used by `"gradient_norm"`).
    - `loss`: the per-step loss for `ys`, e.g. `rnnode.mse`, `rnnode.cross_entropy`.
    - `key`: randomness for the fixed-point starts (default `PRNGKey(0)`).
    - `weights`: the time weights of the loss for `"alignment"` (default `1/T`).
    - `x`, `tol`, `num_starts` (`"fixed_points"` only): the constant input
      (default zeros), the largest speed `‖F‖` kept as a fixed point, or a list
      of them (default that of `find_fixed_points`; raise it to keep slow
      points too), and the number of starts (default 64).
    - `noise`, `starts_from`, `method` (`"fixed_points"`, `"line_attractor"`):
      the noise added to the starts, `"states"` (default: the visited states
      plus noise) or `"noise"` (`noise · N(0, I)`), and the search method.
    - `contexts`, `stimulus`: see `"fixed_points"` and `"line_attractor"`.

    **Returns:** the dictionary written to the JSON file.
    """
    if what not in ANALYSES:
        choices = ", ".join(f"`{a}`" for a in ANALYSES)
        raise ValueError(f"unknown analysis `what={what!r}`; choose one of {choices}")
    options = {"x": x, "tol": tol, "num_starts": num_starts, "noise": noise}
    options |= {"starts_from": starts_from, "method": method}
    options |= {"contexts": contexts, "stimulus": stimulus}
    allowed = _OPTIONS.get(what, ())
    for name, value in options.items():
        if value is not None and name not in allowed:
            owners = " or ".join(
                f"`what={w!r}`" for w in _OPTIONS if name in _OPTIONS[w]
            )
            raise ValueError(
                f"`{name}` is an option of {owners}, not of `what={what!r}`; leave it out"
            )
    if starts_from not in (None, "states", "noise"):
        raise ValueError(
            f"`starts_from` must be `states` or `noise`, got {starts_from!r}"
        )
    xs = check_inputs(model, xs)
    if what == "alignment":
        return _write(
            what, _alignment(model, xs, ys, loss, weights), model, xs, out_dir
        )
    key = jr.PRNGKey(0) if key is None else key
    if what in ("fixed_points", "line_attractor"):
        runner = _fixed_points if what == "fixed_points" else _line_attractor
        options = {k: v for k, v in options.items() if k in _OPTIONS[what]}
        return _write(
            what,
            runner(model, xs, key, **options),
            model,
            xs if xs.ndim == 2 else xs[:, 0],
            out_dir,
        )
    if xs.ndim == 3:
        xs = xs[:, 0]
        if ys is not None:
            ys = jax.tree.map(lambda a: jnp.asarray(a)[:, 0], ys)
    return _write(what, _RUNNERS[what](model, xs, ys, loss, key), model, xs, out_dir)


def _write(what, result_and_figure, model, xs, out_dir):
    result, fig = result_and_figure
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = to_json(
        {
            "what": what,
            "num_steps": int(xs.shape[0]),
            "state_size": model.state_size,
            "dt": float(model.dt),
            **result,
        }
    )
    (out_dir / f"{what}.json").write_text(json.dumps(result, indent=1) + "\n")
    fig.savefig(out_dir / f"{what}.png", dpi=120)
    return result


def _jacobian_spectrum(model, xs, ys, loss, key):
    del ys, loss, key
    spec = jacobian_spectrum(model, xs, anchor="start")
    sv = np.asarray(spec.singular_values)
    return {
        "description": "singular values of dh_t/dh_0 against t (top ones per lag), "
        "and the full spectrum at t = T",
        "lags": spec.lags,
        "singular_values": sv[:, :_MAX_SINGULAR_VALUES],
        "final_singular_values": sv[-1],
        "final_eigenvalues": spec.eigenvalues[-1],
    }, plot_jacobian_spectrum(spec)


def _gradient_norm(model, xs, ys, loss, key):
    del key
    exact = True
    if ys is None:
        # A full frame (exact) for small states; a thin one (a lower bound) beyond.
        p = None if model.state_size <= _MAX_FRAME else _MAX_FRAME
        exact = p is None
        lags, norms = jacobian_norm_vs_lag(model, xs, anchor="end", num_vectors=p)
        quantity = "||dh_T/dh_(T-lag)||_2"
    else:
        lags, norms = gradient_norm_vs_lag(model, xs, ys, loss=loss)
        quantity = "||dl_T/dh_(T-lag)||_2"
    fig = plot_norm_vs_lag(
        {quantity: (lags, norms)}, title="gradient norm against lag", ylabel="norm"
    )
    return {"quantity": quantity, "exact": exact, "lags": lags, "norms": norms}, fig


def _lyapunov(model, xs, ys, loss, key):
    del ys, loss
    T = xs.shape[0]
    k = min(model.state_size, _MAX_LYAPUNOV)
    spec = lyapunov_exponents(model, xs, k=k, transient=T // 10, key=key)
    return {
        "exponents": spec.exponents,
        "per_step": spec.per_step,
        "transient": T // 10,
        "counted_steps": spec.num_steps,
    }, plot_lyapunov(spec)


def _fixed_points(
    model,
    xs,
    key,
    *,
    x,
    tol,
    num_starts,
    noise,
    starts_from,
    method,
    contexts,
    stimulus,
):
    num_starts = 64 if num_starts is None else num_starts
    hs, _ = model.rollout(xs)  # (T, state) or (T, batch, state)
    x = jnp.zeros((model.input_size,)) if x is None else jnp.asarray(x)
    common = dict(
        tol=tol, method=method or "optimise", noise=noise, num_starts=num_starts
    )
    if contexts is None:
        states = None if starts_from == "noise" else hs
        fps = find_fixed_points(
            model, x.astype(xs.dtype), key=key, states=states, **common
        )
    else:
        per = _per_context(xs, hs, contexts)
        fps = FixedPoints.join(
            [
                find_fixed_points(
                    model,
                    x_k,
                    key=k,
                    states=None if starts_from == "noise" else h_k,
                    labels=np.full(num_starts, label),
                    **common,
                )
                for (label, x_k, h_k), k in zip(
                    per, jr.split(key, len(per)), strict=True
                )
            ]
        )
    counts = {s: fps.stability.count(s) for s in STABILITIES}
    readouts = jax.vmap(model.output)(jnp.asarray(fps.points, dtype=xs.dtype))
    if contexts is None:
        label = ", ".join(f"{v:g}" for v in np.asarray(fps.x))
        title = f"fixed points at input ({label})"
    else:
        title = "fixed points per context"
    fig = plot_fixed_points(fps, hs, title=title, dims=3)
    record = {
        "input": fps.x if contexts is None else None,
        "inputs": fps.inputs,
        "labels": fps.labels.tolist(),
        "kind": fps.kind,
        "leading_eigenvalue_is": "max Re(eig) of dF/dr"
        if fps.kind == "continuous"
        else "max |eig| of df/dh",
        "tol": fps.tol,
        "tols": list(fps.tols),
        "num_starts": len(fps.fates),
        "num_converged": fps.num_converged,
        "num_fixed_points": len(fps.stability),
        "counts": counts,
        "points": fps.points,
        "speeds": fps.speeds,
        "iterations": fps.iterations,
        "stability": list(fps.stability),
        "leading_eigenvalues": leading_eigenvalues(fps),
        "readouts": readouts,
        # a plain list when all are real (JSON readers need no complex type)
        "eigenvalues": fps.eigenvalues
        if np.any(fps.eigenvalues.imag)
        else fps.eigenvalues.real,
    }
    if stimulus is not None:
        record["selection_inputs"] = list(stimulus)
        record["selection_projections"] = [
            np.real(fps.left_eigenvectors[i][0])
            @ fps.input_jacobians[i][:, stimulus]
            / _overlap(fps, i)
            for i in range(len(fps))
        ]
    return record, fig


def _overlap(fps, i):
    r = np.real(fps.right_eigenvectors[i][:, 0])
    left = np.real(fps.left_eigenvectors[i][0])
    v = left @ r
    return v if abs(v) > 1e-300 else 1.0


def _per_context(xs, hs, contexts):
    """`(label, input, states)` per context (sorted labels): its sequences'
    first input and the states they visit."""
    contexts = np.asarray(contexts)
    if xs.ndim != 3 or contexts.shape != (xs.shape[1],):
        raise ValueError(
            "`contexts` needs one label per sequence of `xs` (time, batch, input)"
        )
    out = []
    for label in sorted(set(contexts.tolist())):
        sel = np.flatnonzero(contexts == label)
        out.append((label, xs[0, sel[0]], hs[:, sel]))
    return out


def _line_attractor(
    model, xs, key, *, tol, num_starts, noise, method, contexts, stimulus
):
    del method
    if xs.ndim == 2:
        xs = xs[:, None]
    if contexts is None:  # one context: all the sequences
        contexts = np.ones(xs.shape[1], dtype=int)
    if stimulus is None:
        stimulus = list(range(model.input_size))
    hs, _ = model.rollout(xs)
    per = _per_context(xs, hs, contexts)
    result = line_attractor(
        model,
        np.stack([np.asarray(x) for _, x, _ in per]),
        stimulus=stimulus,
        key=key,
        states=[h for _, _, h in per],
        contexts=[label for label, _, _ in per],
        num_starts=num_starts or 256,
        noise=noise,
        tol=None if tol is None else ([tol] if np.ndim(tol) == 0 else tol),
    )
    fig = plot_line_attractor(result, [h for _, _, h in per])
    record = result.to_dict()
    for k, c in enumerate(record["contexts"]):
        rel = result.stimulus[k % len(result.stimulus)]
        proj = np.abs(result.projections[k])
        j = result.stimulus.index(rel)
        c["relevant_input"] = rel
        c["relevant_projection_median"] = (
            float(np.median(proj[:, j])) if proj.size else None
        )
        others = np.delete(proj, j, axis=1)
        c["irrelevant_projection_median"] = (
            float(np.median(others)) if others.size else None
        )
    record["num_slow_points"] = len(result.fixed_points)
    return record, fig


def _alignment(model, xs, ys, loss, weights):
    if ys is None:
        raise ValueError('`what="alignment"` needs targets: pass `ys=`')
    result = gradient_alignment(
        model, xs, ys, alignment_methods(), loss=loss, weights=weights, on_error="skip"
    )
    return result.to_dict(), plot_alignment(result)


_OPTIONS = {
    "fixed_points": (
        "x",
        "tol",
        "num_starts",
        "noise",
        "starts_from",
        "method",
        "contexts",
        "stimulus",
    ),
    "line_attractor": ("tol", "num_starts", "noise", "method", "contexts", "stimulus"),
}

_RUNNERS = {
    "jacobian_spectrum": _jacobian_spectrum,
    "gradient_norm": _gradient_norm,
    "lyapunov": _lyapunov,
}


def fixed_point_table(result: dict, *, max_rows: int = 40) -> str:
    """A short text table of a `run_analysis(..., what="fixed_points")` record:
    the counts by stability, then one row per point (stable first, then by
    speed): its stability, speed `‖F‖`, leading eigenvalue (`max Re λ` of the
    vector field's Jacobian for continuous models, `max |λ|` of the map's for
    discrete cells) and readout; at most `max_rows` rows."""
    counts = result["counts"]
    lead = "max Re λ" if result["kind"] == "continuous" else "max |λ|"
    found = ", ".join(f"{counts[s]} {s}" for s in STABILITIES if counts.get(s))
    lines = [
        f"{result['num_fixed_points']} fixed points"
        + (f" ({found})" if found else "")
        + f" from {result['num_starts']} starts, {result['num_converged']} "
        f"converged to speed ‖F‖ <= {result['tol']:.3g}"
    ]
    if not found:
        lines.append("(more starts, or a larger tolerance, may find some)")
        return "\n".join(lines)
    labels = result.get("labels") or [None] * result["num_fixed_points"]
    show_label = len(set(labels)) > 1
    selection = result.get("selection_projections")
    head = f"{'#':>3}  " + (f"{'label':>5}  " if show_label else "")
    head += f"{'stability':<9}  {'speed ‖F‖':>9}  {lead:>9}  "
    if selection is not None:
        head += "".join(f"{'sel·u' + str(j):>9}  " for j in result["selection_inputs"])
    lines.append(head + "readout")
    order = sorted(
        range(result["num_fixed_points"]),
        key=lambda i: (
            str(labels[i]),
            STABILITIES.index(result["stability"][i]),
            result["speeds"][i],
        ),
    )
    for row, i in enumerate(order[:max_rows], 1):
        out = np.asarray(result["readouts"][i], dtype=float).ravel()
        shown = ", ".join(f"{v:+.2f}" for v in out[:6]) + (
            ", …" if out.size > 6 else ""
        )
        line = f"{row:>3}  " + (f"{labels[i]!s:>5}  " if show_label else "")
        line += (
            f"{result['stability'][i]:<9}  {result['speeds'][i]:>9.2e}  "
            f"{result['leading_eigenvalues'][i]:>+9.3f}  "
        )
        if selection is not None:
            line += "".join(f"{v:>+9.3g}  " for v in selection[i])
        lines.append(line + f"({shown})")
    if len(order) > max_rows:
        lines.append(f"  … {len(order) - max_rows} more in the JSON file")
    return "\n".join(lines)


def line_attractor_table(result: dict) -> str:
    """A short text table of a `run_analysis(..., what="line_attractor")`
    record: per context the number of slow points, the fraction of their
    variance on a line, the median slow and next eigenvalues, and the median
    selection-vector projections on the relevant and the irrelevant input."""
    lines = [
        f"{'context':>7}  {'points':>6}  {'var. on line':>12}  {'slow λ':>9}  "
        f"{'next λ':>9}  {'|sel·relevant|':>14}  {'|sel·irrelevant|':>16}"
    ]
    for c in result["contexts"]:
        lines.append(
            f"{c['context']!s:>7}  {c['num_slow_points']:>6}  "
            f"{_num(c['variance_on_line'], '.3f'):>12}  "
            f"{_num(c['slow_eigenvalue_median'], '+.2e'):>9}  "
            f"{_num(c['next_eigenvalue_median'], '+.2e'):>9}  "
            f"{_num(c['relevant_projection_median'], '.3g'):>14}  "
            f"{_num(c['irrelevant_projection_median'], '.3g'):>16}"
        )
    return "\n".join(lines)


def _num(v, fmt):
    return "-" if v is None else format(v, fmt)
