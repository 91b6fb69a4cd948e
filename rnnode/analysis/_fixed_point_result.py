"""`FixedPoints`, the result of `find_fixed_points`: the points with their
linearisations, every start's end, and the operations on them (select, join,
project, save and load, summarise); `Affine` maps such as a PCA."""

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import ArrayLike

STABILITIES = ("stable", "saddle", "unstable", "marginal")
"""The classes of `FixedPoints.stability`."""

FATES = ("kept", "duplicate", "outlier", "slow")
"""What became of each start's end (`FixedPoints.fates`): kept as a point, a
duplicate of a kept one, an outlier, or slower than the loosest tolerance."""


@dataclasses.dataclass(frozen=True)
class Affine:
    """An affine map `y = (h - mean) @ components.T`, e.g. a PCA of trajectories
    (`Affine.pca`), applied by calling it on states `(..., n)` → `(..., k)`.

    - `components`: `(k, n)` rows; `mean`: `(n,)`.
    - `explained`: `(k,)` the fraction of the variance along each row (PCA), or
      `None` for a map built by hand.
    """

    components: np.ndarray
    mean: np.ndarray
    explained: np.ndarray | None = None

    def __call__(self, states: ArrayLike) -> np.ndarray:
        states = np.asarray(states)
        return (states - self.mean) @ self.components.T

    @classmethod
    def pca(cls, trajectories: ArrayLike, k: int = 3) -> "Affine":
        """The first `k` principal components of `trajectories` `(..., n)` (all
        leading axes are pooled)."""
        data = np.asarray(trajectories)
        data = data.reshape(-1, data.shape[-1])
        if data.shape[0] < 2:
            raise ValueError("a PCA needs at least two states")
        mean = data.mean(axis=0)
        _, s, vt = np.linalg.svd(data - mean, full_matrices=False)
        total = max(float(np.sum(s**2)), 1e-300)
        k = min(k, vt.shape[0])
        return cls(vt[:k], mean, s[:k] ** 2 / total)


@dataclasses.dataclass(frozen=True)
class FixedPoints:
    """The result of `find_fixed_points` (NumPy arrays, on the host).

    Per point (`K` of them, sorted slowest first within each input/label):

    - `points`: `(K, n)`; `inputs`: `(K, m)` the constant input of each;
      `labels`: `(K,)` the label of the start each came from (e.g. a context).
    - `speeds`: `(K,)` `‖F(r)‖` (how far from exactly fixed); `iterations`:
      `(K,)` the optimiser's steps; `start_index`: `(K,)` the start it came from.
    - `jacobians`: `(K, n, n)` `∂F/∂r` (continuous: the vector field `dr/dt =
      F`) or `∂f/∂h` (discrete cells: the map); `input_jacobians`: `(K, n, m)`
      `∂F/∂u` (resp. `∂f/∂x`).
    - `eigenvalues`: `(K, n)` complex, by descending real part (continuous) or
      modulus (discrete); `right_eigenvectors`: `(K, n, n)` unit columns
      `R[:, i]`; `left_eigenvectors`: `(K, n, n)` rows `L[i]` with `L R = I`, so
      `L[i] J = λ_i L[i]` and `L[i] · R[:, i] = 1` (Mante et al.'s selection
      vector of mode `i`).
    - `stability`: per point one of `STABILITIES`: all eigenvalues inside the
      boundary (`Re λ < 0`, resp. `|λ| < 1`); some outside and some inside;
      all outside; none outside but some within `1e-9` of the boundary.
    - `kind`: `"continuous"` or `"discrete"`; `tols`: the speeds kept,
      ascending (points up to the largest are kept; `at_tol` selects).

    Per start (`S` of them): `starts`, `candidates` (where each ended),
    `candidate_speeds`, `candidate_iterations`, `candidate_inputs`,
    `candidate_labels`, `fates` (one of `FATES` each).
    """

    points: np.ndarray
    inputs: np.ndarray
    labels: np.ndarray
    speeds: np.ndarray
    iterations: np.ndarray
    start_index: np.ndarray
    jacobians: np.ndarray
    input_jacobians: np.ndarray
    eigenvalues: np.ndarray
    right_eigenvectors: np.ndarray
    left_eigenvectors: np.ndarray
    stability: tuple[str, ...]
    kind: str
    tols: tuple[float, ...]
    starts: np.ndarray
    candidates: np.ndarray
    candidate_speeds: np.ndarray
    candidate_iterations: np.ndarray
    candidate_inputs: np.ndarray
    candidate_labels: np.ndarray
    fates: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def tol(self) -> float:
        """The loosest tolerance: every kept point is at most this fast."""
        return float(max(self.tols))

    @property
    def x(self) -> np.ndarray:
        """The input shared by all starts (an error when they differ)."""
        first = self.candidate_inputs[0]
        if not np.all(self.candidate_inputs == first):
            raise ValueError(
                "the starts had different inputs: read `inputs` (per point) or "
                "`candidate_inputs` (per start) instead of `x`"
            )
        return first

    @property
    def num_converged(self) -> int:
        """How many starts ended at most `tol` fast (before deduplication)."""
        return int(np.sum(self.candidate_speeds <= self.tol))

    def select(self, which) -> "FixedPoints":
        """The points picked by `which` (indices, or a boolean mask of length
        `K`), in that order; the per-start arrays are kept whole."""
        idx = np.arange(len(self))[np.asarray(which)].reshape(-1)
        per_point = {f: getattr(self, f)[idx] for f in _PER_POINT}
        stability = tuple(self.stability[i] for i in idx)
        return dataclasses.replace(self, **per_point, stability=stability)

    def at_tol(self, tol: float) -> "FixedPoints":
        """The points at most `tol` fast (one of `tols`, or any other value)."""
        return self.select(self.speeds <= tol)

    def with_label(self, label) -> "FixedPoints":
        """The points whose start had label `label`."""
        return self.select(self.labels == label)

    @staticmethod
    def join(results: Sequence["FixedPoints"]) -> "FixedPoints":
        """One result from several of the same network (e.g. one per input or
        context): points and starts concatenated, `start_index` shifted, `tols`
        merged."""
        results = list(results)
        if not results:
            raise ValueError("`join` needs at least one `FixedPoints`")
        kinds = {r.kind for r in results}
        sizes = {r.candidates.shape[1] for r in results}
        if len(kinds) > 1 or len(sizes) > 1:
            raise ValueError("`join`: the results come from different networks")
        offsets = np.cumsum([0] + [len(r.fates) for r in results[:-1]])
        fields = {}
        for f in (*_PER_POINT, *_PER_START):
            parts = [getattr(r, f) for r in results]
            if f == "start_index":
                parts = [p + o for p, o in zip(parts, offsets, strict=True)]
            fields[f] = np.concatenate(parts, axis=0)
        return FixedPoints(
            **fields,
            stability=sum((r.stability for r in results), ()),
            fates=sum((r.fates for r in results), ()),
            kind=results[0].kind,
            tols=tuple(sorted({t for r in results for t in r.tols})),
        )

    def project(self, transform: Affine | None = None, *, trajectories=None, k=3):
        """The points in a low-dimensional space `(K, k)`: through `transform`
        (any `Affine`), or a PCA of `trajectories` (default: of the points)."""
        if transform is None:
            data = self.points if trajectories is None else trajectories
            transform = Affine.pca(data, k)
        return transform(self.points)

    def summary(self) -> str:
        """A few lines: counts by stability, then per label and input."""
        counts = {s: self.stability.count(s) for s in STABILITIES}
        found = ", ".join(f"{v} {s}" for s, v in counts.items() if v)
        lines = [
            f"{len(self)} {self.kind} fixed points"
            + (f" ({found})" if found else "")
            + f" from {len(self.fates)} starts; speeds <= {self.tol:.3g}"
            + f" (tolerances {', '.join(f'{t:.0e}' for t in self.tols)})"
        ]
        fates = ", ".join(f"{self.fates.count(f)} {f}" for f in FATES)
        lines.append(f"starts: {fates}")
        if len(self):
            lines.append(
                f"speeds {self.speeds.min():.2e} .. {self.speeds.max():.2e}; "
                f"iterations {int(self.iterations.min())} .. "
                f"{int(self.iterations.max())}"
            )
        for label in _unique(self.labels):
            sub = self.with_label(label)
            c = ", ".join(
                f"{sub.stability.count(s)} {s}"
                for s in STABILITIES
                if sub.stability.count(s)
            )
            lines.append(f"  label {label!s}: {len(sub)} points ({c or 'none'})")
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Write to `path` (a `.npz` file; the extension is added if missing)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": self.kind,
            "tols": list(self.tols),
            "stability": list(self.stability),
            "fates": list(self.fates),
            "labels": _labels_to_json(self.labels),
            "candidate_labels": _labels_to_json(self.candidate_labels),
        }
        arrays = {
            f: getattr(self, f)
            for f in (*_PER_POINT, *_PER_START)
            if f not in ("labels", "candidate_labels")
        }
        np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
        return path

    @staticmethod
    def load(path: str | Path) -> "FixedPoints":
        """Read what `save` wrote."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: data[k] for k in data.files if k != "meta"}
        return FixedPoints(
            **arrays,
            labels=_labels_from_json(meta["labels"]),
            candidate_labels=_labels_from_json(meta["candidate_labels"]),
            stability=tuple(meta["stability"]),
            fates=tuple(meta["fates"]),
            kind=meta["kind"],
            tols=tuple(float(t) for t in meta["tols"]),
        )


_PER_POINT = (
    "points",
    "inputs",
    "labels",
    "speeds",
    "iterations",
    "start_index",
    "jacobians",
    "input_jacobians",
    "eigenvalues",
    "right_eigenvectors",
    "left_eigenvectors",
)
_PER_START = (
    "starts",
    "candidates",
    "candidate_speeds",
    "candidate_iterations",
    "candidate_inputs",
    "candidate_labels",
)


def classify(eig: np.ndarray, kind: str, eps: float = 1e-9) -> str:
    """The stability class (one of `STABILITIES`) of eigenvalues `eig`."""
    d = eig.real if kind == "continuous" else np.abs(eig) - 1.0
    inside, outside = np.sum(d < -eps), np.sum(d > eps)
    if outside:
        return "saddle" if inside else "unstable"
    return "stable" if inside == eig.size else "marginal"


def _unique(labels: np.ndarray) -> list:
    seen = []
    for v in labels.tolist():
        if v not in seen:
            seen.append(v)
    return seen


def _labels_to_json(labels: np.ndarray):
    return {"dtype": labels.dtype.kind, "values": labels.tolist()}


def _labels_from_json(record) -> np.ndarray:
    values = record["values"]
    if record["dtype"] in "US":
        return np.asarray(values, dtype=str).reshape(len(values))
    return np.asarray(values).reshape(len(values))
