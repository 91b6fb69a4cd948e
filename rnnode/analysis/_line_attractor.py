"""Line attractors and selection vectors (Mante, Sussillo, Shenoy & Newsome,
2013): the slow points of a network under each context's input, how close
they lie to a line, the slow mode of their linearisation, and the projection
of its left eigenvector (the selection vector) on each stimulus input."""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray
from matplotlib import colormaps

from .._model import Model
from ._common import new_figure
from ._fixed_point_result import FixedPoints
from ._fixed_points import find_fixed_points, residual


@dataclasses.dataclass(frozen=True)
class LineAttractor:
    """The result of `line_attractor`, one entry per context in each list.

    - `fixed_points`: the slow points of all contexts (`labels`: the context).
    - `contexts`: the labels; `stimulus`: the indices of the stimulus inputs.
    - `direction`: `(n,)` per context, the line (first principal direction of
      the slow points); `variance_on_line`: the fraction of their variance
      along it; `length`: their extent along it.
    - `slow_eigenvalues`: `(K,)` per context, each point's eigenvalue of largest
      real part; `next_eigenvalues`: the largest real part among the others
      (a complex partner left out).
    - `selection_vectors`: `(K, n)` per context, the left eigenvector `l` of the
      slow mode, scaled so that `l · r = 1` with its right eigenvector `r`
      pointing along `direction`; `right_alignment`: `|r · direction|`.
    - `projections`: `(K, len(stimulus))` per context, `l · ∂F/∂u_j` for each
      stimulus input `j`: how strongly a pulse on input `j` moves the state
      along the line (Mante et al.'s selection).
    """

    fixed_points: FixedPoints
    contexts: list
    stimulus: tuple[int, ...]
    direction: list[np.ndarray]
    variance_on_line: list[float]
    length: list[float]
    slow_eigenvalues: list[np.ndarray]
    next_eigenvalues: list[np.ndarray]
    selection_vectors: list[np.ndarray]
    right_alignment: list[np.ndarray]
    projections: list[np.ndarray]

    def to_dict(self) -> dict:
        """The numbers per context (medians over the slow points), for JSON."""
        out = []
        for k, c in enumerate(self.contexts):
            proj = self.projections[k]
            out.append(
                {
                    "context": c,
                    "num_slow_points": int(len(self.slow_eigenvalues[k])),
                    "variance_on_line": self.variance_on_line[k],
                    "length": self.length[k],
                    "slow_eigenvalue_median": _median(self.slow_eigenvalues[k]),
                    "next_eigenvalue_median": _median(self.next_eigenvalues[k]),
                    "right_alignment_median": _median(self.right_alignment[k]),
                    "projections_median": [
                        _median(proj[:, j]) for j in range(proj.shape[1])
                    ],
                }
            )
        return {"stimulus_inputs": list(self.stimulus), "contexts": out}


def line_attractor(
    model: Model,
    inputs: ArrayLike,
    *,
    stimulus: Sequence[int],
    key: PRNGKeyArray,
    states: Sequence[ArrayLike] | None = None,
    contexts: Sequence | None = None,
    num_starts: int = 256,
    noise: float | None = None,
    tol: Sequence[float] | None = None,
    steps: int = 3000,
    learning_rate: float = 1e-2,
    unique_tol: float = 1e-2,
) -> LineAttractor:
    """Slow points per context and their line, slow mode and selection vector.

    For each context `k`, `find_fixed_points` under the constant input
    `inputs[k]` (e.g. fixation on, stimuli zero, context `k` cued), from
    `num_starts` starts drawn from `states[k]` (the states the network visits
    in that context) plus `noise`, by Adam alone (`newton_steps=0`), keeping
    the points slower than `max(tol)`: the slow points, not only the exact
    fixed points (Mante et al., 2013, methods; Sussillo & Barak, 2013).

    **Arguments:**

    - `model`: an `rnnode.Model`; `inputs`: `(C, m)`, one input per context.
    - `stimulus`: the indices of the stimulus inputs whose selection is
      measured (e.g. `(1, 2)`: motion and colour).
    - `key`: a JAX PRNG key; `states`: per context visited states `(..., n)`
      (default: starts from `N(0, I)`); `contexts`: their labels (default
      `1 .. C`).
    - `tol`: the speeds kept, as in `find_fixed_points`; default relative to
      the network's own pace: 1% and 5% of the median speed `‖F‖` at the
      visited states of that context (with `states`; else `(1e-4, 1e-3)`).
    - `num_starts`, `noise`, `steps`, `learning_rate`, `unique_tol`: as in
      `find_fixed_points`.

    **Returns:** a `LineAttractor`.

    **Reference:** Mante, Sussillo, Shenoy & Newsome (2013), "Context-dependent
    computation by recurrent dynamics in prefrontal cortex", Nature 503, 78-84.
    """
    inputs = np.asarray(inputs, dtype=float)
    if inputs.ndim != 2 or inputs.shape[1] != model.input_size:
        raise ValueError(
            f"`inputs` must have shape (contexts, {model.input_size}), "
            f"got {inputs.shape}"
        )
    C = inputs.shape[0]
    contexts = list(range(1, C + 1)) if contexts is None else list(contexts)
    if len(contexts) != C or (states is not None and len(states) != C):
        raise ValueError("`contexts` and `states` need one entry per row of `inputs`")
    stimulus = tuple(int(j) for j in stimulus)
    if not all(0 <= j < model.input_size for j in stimulus):
        raise ValueError(f"`stimulus` indices must be in [0, {model.input_size})")
    found = []
    for k, key_k in enumerate(jr.split(key, C)):
        tol_k = tol
        if tol_k is None:
            pace = (
                1e-1 if states is None else _median_speed(model, states[k], inputs[k])
            )
            tol_k = (0.01 * pace, 0.05 * pace)
        found.append(
            find_fixed_points(
                model,
                inputs[k],
                key=key_k,
                num_starts=num_starts,
                states=None if states is None else states[k],
                noise=noise,
                labels=np.full(num_starts, contexts[k]),
                tol=tol_k,
                steps=steps,
                newton_steps=0,
                learning_rate=learning_rate,
                unique_tol=unique_tol,
            )
        )
    fields = {f: [] for f in LineAttractor.__dataclass_fields__}
    for fps in found:
        for name, value in _describe(fps, stimulus).items():
            fields[name].append(value)
    return LineAttractor(
        fixed_points=FixedPoints.join(found),
        contexts=contexts,
        stimulus=stimulus,
        **{k: v for k, v in fields.items() if v},
    )


def plot_line_attractor(
    result: LineAttractor,
    trajectories: Sequence[ArrayLike] | None = None,
    colours: Sequence[ArrayLike] | None = None,
    *,
    stimulus_names: Sequence[str] = ("motion", "colour"),
):
    """A figure in the style of Mante et al. (2013), Fig. 6: per context, the
    slow points (dots) and trajectories projected on the line (x) and the
    relevant input's direction orthogonal to it (y), with the selection vector
    drawn from the line's centre; then the selection vector's projections on
    each stimulus input per context (relevant against irrelevant); then the
    eigenvalues of every slow point.

    `trajectories`: per context `(T, B, n)` states; `colours`: per context `(B,)`
    values (e.g. the relevant coherence) that colour them.

    **Returns:** a matplotlib `Figure`.
    """
    C = len(result.contexts)
    fig, axes = new_figure(C + 2, width=4.0, height=3.8)
    fps = result.fixed_points
    for k, c in enumerate(result.contexts):
        ax = axes[k]
        sub = fps.with_label(c)
        d = result.direction[k]
        centre = sub.points.mean(axis=0) if len(sub) else np.zeros_like(d)
        rel = result.stimulus[k % len(result.stimulus)]
        u = np.median(sub.input_jacobians[:, :, rel], axis=0) if len(sub) else d
        u = u - (u @ d) * d
        u = u / max(np.linalg.norm(u), 1e-300)
        basis = np.stack([d, u])
        if trajectories is not None:
            traj = np.asarray(trajectories[k])
            col = None if colours is None else np.asarray(colours[k], dtype=float)
            lim = np.max(np.abs(col)) if col is not None and col.size else 1.0
            for b in range(traj.shape[1]):
                p = (traj[:, b] - centre) @ basis.T
                colour = "0.6"
                if col is not None:
                    colour = _cmap(0.5 + 0.5 * col[b] / max(lim, 1e-300))
                ax.plot(p[:, 0], p[:, 1], color=colour, lw=0.6, alpha=0.7)
        p = (sub.points - centre) @ basis.T
        ax.scatter(p[:, 0], p[:, 1], s=14, c="tab:red", zorder=3, label="slow points")
        if len(sub):
            s = np.median(result.selection_vectors[k], axis=0)
            s = s / max(np.linalg.norm(s), 1e-300) * 0.3 * max(np.ptp(p[:, 0]), 1e-3)
            ax.annotate(
                "",
                xy=(s @ d, s @ u),
                xytext=(0, 0),
                arrowprops=dict(arrowstyle="->", color="tab:blue", lw=1.5),
            )
        ax.set_xlabel("line attractor (choice axis)")
        ax.set_ylabel(f"{stimulus_names[k % len(stimulus_names)]} input (orth.)")
        ax.set_title(f"context {c}: {stimulus_names[k % len(stimulus_names)]}")
        ax.legend(fontsize=7, loc="upper left")
    ax = axes[C]
    width = 0.8 / max(len(result.stimulus), 1)
    for j, name in enumerate(result.stimulus):
        vals = [np.median(np.abs(p[:, j])) if len(p) else 0 for p in result.projections]
        label = stimulus_names[j] if j < len(stimulus_names) else f"input {name}"
        ax.bar(np.arange(C) + j * width, vals, width, label=label)
    ax.set_xticks(np.arange(C) + 0.4 - width / 2)
    ax.set_xticklabels([f"context {c}" for c in result.contexts])
    ax.set_ylabel("|selection vector · input|")
    ax.set_title("selection vector projections")
    ax.legend(fontsize=8)
    ax = axes[C + 1]
    for c in result.contexts:
        eig = fps.with_label(c).eigenvalues.reshape(-1)
        ax.scatter(eig.real, eig.imag, s=4, alpha=0.5, label=f"context {c}")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    ax.set_title("eigenvalues at the slow points")
    ax.legend(fontsize=8)
    return fig


def _cmap(v):
    return colormaps["coolwarm"](float(np.clip(v, 0.0, 1.0)))


def _median_speed(model, states, x) -> float:
    F, _ = residual(model)
    dtype = jnp.result_type(model.init_state())
    h = jnp.asarray(states, dtype=dtype).reshape(-1, model.state_size)
    speeds = jnp.linalg.norm(jax.vmap(lambda r: F(r, jnp.asarray(x, dtype)))(h), axis=1)
    return float(jnp.median(speeds))


def _median(a) -> float:
    a = np.asarray(a)
    return float(np.median(a)) if a.size else float("nan")


def _describe(fps: FixedPoints, stimulus) -> dict:
    n = fps.candidates.shape[1]
    K = len(fps)
    direction, var, length = np.eye(n)[0], float("nan"), 0.0
    if K >= 2:
        centred = fps.points - fps.points.mean(axis=0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        direction = vt[0]
        var = float(s[0] ** 2 / max(np.sum(s**2), 1e-300))
        length = float(np.ptp(centred @ direction))
    slow, nxt, sel, align, proj = [], [], [], [], []
    for i in range(K):
        eig = fps.eigenvalues[i]
        slow.append(eig[0].real)
        partner = np.isclose(eig[1:], np.conj(eig[0])) if eig[0].imag else False
        rest = eig[1:][~partner] if np.any(partner) else eig[1:]
        nxt.append(rest[0].real if rest.size else np.nan)
        r = np.real(fps.right_eigenvectors[i][:, 0])
        left = np.real(fps.left_eigenvectors[i][0])
        sign = 1.0 if r @ direction >= 0 else -1.0
        r, left = sign * r, sign * left
        left = left / (left @ r) if abs(left @ r) > 1e-300 else left
        sel.append(left)
        align.append(abs(r @ direction) / max(np.linalg.norm(r), 1e-300))
        proj.append(left @ fps.input_jacobians[i][:, list(stimulus)])
    return dict(
        direction=direction,
        variance_on_line=var,
        length=length,
        slow_eigenvalues=np.asarray(slow),
        next_eigenvalues=np.asarray(nxt),
        selection_vectors=np.asarray(sel).reshape(K, n),
        right_alignment=np.asarray(align),
        projections=np.asarray(proj).reshape(K, len(stimulus)),
    )
