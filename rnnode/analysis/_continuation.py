"""Continuation of fixed points along a path of constant inputs: each branch
followed by pseudo-arclength steps (so that it turns at folds), where its
eigenvalues cross the stability boundary (bifurcations), and the bifurcation
diagram."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from .._model import Model
from ._common import new_figure
from ._fixed_point_result import FixedPoints, classify
from ._fixed_points import find_fixed_points, residual

_LOCATE_STEPS = 50  # bisections that locate a bifurcation on the arc


@dataclasses.dataclass(frozen=True)
class Branch:
    """One branch of fixed points: `N` points along the input path.

    - `s`: `(N,)` where on the path (its arclength in input space, from 0);
      `inputs`: `(N, m)` the input there; `points`: `(N, n)`; `speeds`: `(N,)`.
    - `eigenvalues`: `(N, n)` (sorted as in `FixedPoints`); `stability`: per
      point one of `STABILITIES`.
    - `stopped`: why the branch ends: `"path_end"` or `"path_start"` (it
      reached an end of the path), or, short of it, `"step_too_small"` (the
      corrector failed even at the smallest step) or `"max_points"`.
    """

    s: np.ndarray
    inputs: np.ndarray
    points: np.ndarray
    speeds: np.ndarray
    eigenvalues: np.ndarray
    stability: tuple[str, ...]
    stopped: str = "path_end"


@dataclasses.dataclass(frozen=True)
class Bifurcation:
    """Where a branch's eigenvalues cross the stability boundary.

    - `branch`: its index in `Continuation.branches`; `s`, `input`, `point`:
      where (located to the arclength precision of the bisection, ~1e-12).
    - `kind`: `"fold"` (saddle-node: a real eigenvalue crosses 0, resp. 1, and the
      branch turns back along the path), `"branch_point"` (a real eigenvalue
      crosses without a turn: transcritical or pitchfork), `"hopf"` (a complex
      pair crosses), `"flip"` (discrete: −1), `"neimark_sacker"` (discrete, a
      complex pair).
    - `eigenvalue`: the crossing eigenvalue.
    """

    branch: int
    s: float
    input: np.ndarray
    point: np.ndarray
    kind: str
    eigenvalue: complex


@dataclasses.dataclass(frozen=True)
class Continuation:
    """The result of `continue_fixed_points`: `path` `(P, m)` the inputs'
    polyline, `branches`, `bifurcations`, `kind` (`"continuous"` or
    `"discrete"`)."""

    path: np.ndarray
    branches: list[Branch]
    bifurcations: list[Bifurcation]
    kind: str


def continue_fixed_points(
    model: Model,
    inputs: Float[ArrayLike, "path input"],
    *,
    fixed_points: FixedPoints | None = None,
    key: PRNGKeyArray | None = None,
    num_starts: int = 64,
    tol: float = 1e-10,
    step: float | None = None,
    max_step: float | None = None,
    max_points: int = 5000,
) -> Continuation:
    """Follow each fixed point as the constant input moves along the polyline
    `inputs` `(P, m)` (e.g. 200 values of one input channel).

    Pseudo-arclength continuation (Keller, 1977): a point `z = (r, s)` (state
    and position along the path, `s` the path's arclength in input space)
    moves by `h` along the tangent of the branch, then Newton steps on
    `F(r, u(s)) = 0` plus `t · (z - z_pred) = 0` bring it back; `h` grows by
    1.3 after an easy correction (≤ 3 Newton steps) up to `max_step` and is
    halved after a failed one. A branch thus passes folds, where it turns back
    along the path. Between two points where the number of unstable
    eigenvalues differs, bisection along the arc locates the bifurcation.

    **Arguments:**

    - `model`: an `rnnode.Model`; `inputs`: the path `(P, m)`, `P >= 2`.
    - `fixed_points`: where the branches start, at `inputs[0]` (their `inputs`
      must be `inputs[0]`); default: `find_fixed_points(model, inputs[0],
      key=key, num_starts=num_starts)`.
    - `tol`: the speed `‖F‖` each corrected point reaches.
    - `step`, `max_step`: the first and the largest arclength step (default
      1/100 and 1/20 of the path's length).
    - `max_points`: at most this many points per branch.

    **Returns:** a `Continuation`. Branches that meet (e.g. a stable branch that
    turns at a fold into the saddle branch it shares a start with) are kept
    once: a start that lies on an earlier branch starts none.

    **Reference:** Kuznetsov (2004), *Elements of Applied Bifurcation Theory*,
    ch. 10; Keller (1977), "Numerical solution of bifurcation and nonlinear
    eigenvalue problems".
    """
    if not isinstance(model, Model):
        raise ValueError(f"expected an `rnnode.Model`, got {type(model).__name__}")
    dtype = jnp.result_type(model.init_state())
    path = np.asarray(inputs, dtype=dtype)
    m = model.input_size
    if path.ndim != 2 or path.shape[1] != m or path.shape[0] < 2:
        raise ValueError(f"`inputs` must have shape (P >= 2, {m}), got {path.shape}")
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    if not np.all(seg > 0):
        raise ValueError("`inputs`: consecutive inputs along the path must differ")
    knots = np.concatenate([[0.0], np.cumsum(seg)])
    length = float(knots[-1])
    step = length / 100 if step is None else step
    max_step = length / 20 if max_step is None else max_step
    if fixed_points is None:
        if key is None:
            raise ValueError(
                "pass `key=` (to find the first points) or `fixed_points=`"
            )
        fixed_points = find_fixed_points(
            model, path[0], key=key, num_starts=num_starts, tol=tol
        )
    elif len(fixed_points) and not np.allclose(fixed_points.inputs, path[0]):
        raise ValueError("`fixed_points` must be found at the first input, `inputs[0]`")
    _, kind = residual(model)
    problem = _Problem(model, path, knots, dtype, tol, kind)
    branches, bifurcations = [], []
    for r0 in fixed_points.points:
        if any(_on_branch(b, r0, tol) for b in branches):
            continue
        branch, found = problem.follow(r0, step, max_step, max_points)
        bifurcations += [dataclasses.replace(b, branch=len(branches)) for b in found]
        branches.append(branch)
    return Continuation(path, branches, bifurcations, kind)


def plot_bifurcation(
    continuation: Continuation,
    *,
    coordinate=None,
    axis: int | None = None,
    ylabel: str | None = None,
    title: str = "bifurcation diagram",
):
    """The bifurcation diagram: one scalar of each branch's points (default
    their first principal component; or `coordinate(points (N, n)) → (N,)`,
    e.g. a readout) against the input (component `axis`, default the one
    that varies most along the path); stable parts solid, others dashed;
    bifurcations marked and named.

    **Returns:** a matplotlib `Figure`.
    """
    c = continuation
    if axis is None:
        axis = int(np.argmax(np.ptp(c.path, axis=0)))
    if coordinate is None:
        every = np.concatenate([b.points for b in c.branches]) if c.branches else None
        mean = every.mean(axis=0) if every is not None else 0.0
        if every is not None and every.shape[0] >= 2:
            pc1 = np.linalg.svd(every - mean, full_matrices=False)[2][0]
        else:
            pc1 = np.eye(c.path.shape[1] if every is None else every.shape[1])[0]

        def coordinate(points):
            return (points - mean) @ pc1

        ylabel = ylabel or "state along PC1"
    fig, (ax,) = new_figure(width=6.0, height=4.2)
    for i, b in enumerate(c.branches):
        y = np.asarray(coordinate(b.points)).reshape(-1)
        u = b.inputs[:, axis]
        stable = np.array([s == "stable" for s in b.stability])
        for flag, style in ((True, "-"), (False, "--")):
            mask = stable == flag
            show = mask | np.concatenate([[False], mask[:-1]])  # joined segments
            label = ("stable" if flag else "unstable / saddle") if i == 0 else None
            color = "k" if flag else "tab:red"
            ax.plot(u, np.where(show, y, np.nan), style, color=color, label=label)
    marks = {"fold": "o", "branch_point": "s", "hopf": "^", "flip": "v"}
    seen = set()
    for bif in c.bifurcations:
        y = float(np.asarray(coordinate(bif.point[None])).reshape(-1)[0])
        ax.scatter(
            bif.input[axis],
            y,
            marker=marks.get(bif.kind, "D"),
            s=50,
            zorder=4,
            color="tab:blue",
            label=bif.kind if bif.kind not in seen else None,
        )
        seen.add(bif.kind)
    ax.set_xlabel(f"input {axis}")
    ax.set_ylabel(ylabel or "coordinate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def _on_branch(branch: Branch, r, tol) -> bool:
    d = np.linalg.norm(branch.points - r, axis=1)
    return bool(np.any((d <= max(1e3 * tol, 1e-6)) & (branch.s <= 1e-9)))


@eqx.filter_jit
def _evaluate(model, r, u, du):
    F, _ = residual(model)
    f = F(r, u)
    Jr = jax.jacfwd(F, argnums=0)(r, u)
    Fs = jax.jvp(lambda u: F(r, u), (u,), (du,))[1]
    return f, Jr, Fs


class _Problem:
    def __init__(self, model, path, knots, dtype, tol, kind):
        self.model, self.path, self.knots = model, path, knots
        self.dtype, self.tol, self.kind = dtype, tol, kind
        self.n = model.state_size

    def u(self, s):
        k = int(
            np.clip(
                np.searchsorted(self.knots, s, side="right") - 1, 0, len(self.knots) - 2
            )
        )
        seg = self.knots[k + 1] - self.knots[k]
        du = (self.path[k + 1] - self.path[k]) / seg
        return self.path[k] + (s - self.knots[k]) * du, du

    def eval(self, z):
        u, du = self.u(z[-1])
        f, Jr, Fs = _evaluate(
            self.model,
            jnp.asarray(z[:-1], self.dtype),
            jnp.asarray(u, self.dtype),
            jnp.asarray(du, self.dtype),
        )
        return np.asarray(f), np.hstack([np.asarray(Jr), np.asarray(Fs)[:, None]])

    def tangent(self, z, t_prev):
        _, A = self.eval(z)
        M = np.vstack([A, t_prev[None]])
        rhs = np.zeros(self.n + 1)
        rhs[-1] = 1.0
        t = np.linalg.solve(M, rhs)
        return t / np.linalg.norm(t)

    def correct(self, z_pred, t, max_iter=8):
        """Newton on `F = 0`, `t · (z - z_pred) = 0`; `(z, iterations)` or
        `(None, _)` when it fails."""
        z = z_pred.copy()
        for it in range(1, max_iter + 1):
            f, A = self.eval(z)
            M = np.vstack([A, t[None]])
            g = np.concatenate([f, [t @ (z - z_pred)]])
            try:
                z = z - np.linalg.solve(M, g)
            except np.linalg.LinAlgError:
                return None, it
            if not np.all(np.isfinite(z)):
                return None, it
            f, _ = self.eval(z)
            if np.linalg.norm(f) <= self.tol:
                return z, it
        return None, max_iter

    def correct_at(self, z, s, max_iter=20):
        """Newton on `F(r, u(s)) = 0` at fixed `s` (to land on the path's end)."""
        r = z[:-1].copy()
        for _ in range(max_iter):
            f, A = self.eval(np.append(r, s))
            if np.linalg.norm(f) <= self.tol:
                break
            r = r - np.linalg.solve(A[:, :-1], f)
        return np.append(r, s)

    def spectrum(self, z):
        f, A = self.eval(z)
        J = A[:, :-1]
        if self.kind == "discrete":
            J = J + np.eye(self.n)
        eig = np.linalg.eigvals(J).astype(complex)
        key = -(eig.real if self.kind == "continuous" else np.abs(eig))
        return eig[np.argsort(key)], float(np.linalg.norm(f))

    def unstable(self, eig):
        d = eig.real if self.kind == "continuous" else np.abs(eig) - 1
        return int(np.sum(d > 0))

    def follow(self, r0, h, max_step, max_points):
        end = self.knots[-1]
        z = self.correct_at(np.append(np.asarray(r0, float), 0.0), 0.0)
        t = self.tangent(z, np.eye(self.n + 1)[-1])
        zs, ts, found = [z], [t], []
        h_min = 1e-10 * end
        stopped = "max_points"
        while len(zs) < max_points:
            z_new, its = self.correct(z + h * t, t)
            if z_new is None:
                h /= 2
                if h < h_min:
                    stopped = "step_too_small"
                    break
                continue
            t_new = self.tangent(z_new, t)
            if z_new[-1] > end or z_new[-1] < 0:
                stopped = "path_end" if z_new[-1] > end else "path_start"
                z_new = self.correct_at(z_new, end if z_new[-1] > end else 0.0)
                zs.append(z_new)
                ts.append(t_new)
                break
            zs.append(z_new)
            ts.append(t_new)
            z, t = z_new, t_new
            h = min(h * 1.3, max_step) if its <= 3 else h
        spectra = [self.spectrum(z) for z in zs]
        counts = [self.unstable(e) for e, _ in spectra]
        for i in range(1, len(zs)):
            if counts[i] != counts[i - 1]:
                found.append(self.locate(zs[i - 1], ts[i - 1], ts[i], zs[i]))
        zs = np.asarray(zs)
        inputs = np.asarray([self.u(s)[0] for s in zs[:, -1]])
        eig = np.asarray([e for e, _ in spectra])
        branch = Branch(
            s=zs[:, -1],
            inputs=inputs,
            points=zs[:, :-1],
            speeds=np.asarray([sp for _, sp in spectra]),
            eigenvalues=eig,
            stability=tuple(classify(e, self.kind) for e in eig),
            stopped=stopped,
        )
        return branch, found

    def locate(self, za, ta, tb, zb):
        """Bisection along the arc from `za` to `zb` on where the number of
        unstable eigenvalues changes."""
        na = self.unstable(self.spectrum(za)[0])
        lo, hi = 0.0, float(ta @ (zb - za))
        z_hi = zb
        for _ in range(_LOCATE_STEPS):
            mid = 0.5 * (lo + hi)
            z_mid, _ = self.correct(za + mid * ta, ta, max_iter=20)
            if z_mid is None:
                break
            if self.unstable(self.spectrum(z_mid)[0]) == na:
                lo = mid
            else:
                hi, z_hi = mid, z_mid
        z = z_hi
        eig, _ = self.spectrum(z)
        d = eig.real if self.kind == "continuous" else np.abs(eig) - 1
        lam = eig[int(np.argmin(np.abs(d)))]
        turned = np.sign(ta[-1]) != np.sign(tb[-1])
        if abs(lam.imag) > 1e-6 * max(1.0, abs(lam)):
            kind = "hopf" if self.kind == "continuous" else "neimark_sacker"
        elif self.kind == "discrete" and lam.real < 0:
            kind = "flip"
        else:
            kind = "fold" if turned else "branch_point"
        u, _ = self.u(z[-1])
        return Bifurcation(-1, float(z[-1]), u, z[:-1], kind, complex(lam))
