"""Run files: `metrics.jsonl` (one JSON object per evaluation), `train_loss.csv`
(the loss of every step), `summary.json` (the final numbers).

On resume, the lines written after the checkpoint that the run restarts from are
dropped, so that a resumed run's files equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ._checkpoint import atomic_write_text

METRICS = "metrics.jsonl"
LOSSES = "train_loss.csv"
SUMMARY = "summary.json"


def _clean(v):
    """JSON-safe: NumPy scalars to Python, non-finite floats to strings."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.generic, np.ndarray)) and np.ndim(v) == 0:
        v = v.item()
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def to_json(obj, **kw) -> str:
    """`json.dumps` of a run's record, with NumPy/JAX scalars and arrays as plain
    numbers and lists (non-finite floats as strings, `"nan"`, `"inf"`)."""
    return json.dumps(_clean(obj), **kw)


def append_line(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_metrics(run_dir: Path, record: dict) -> None:
    append_line(Path(run_dir) / METRICS, to_json(record))


def write_losses(run_dir: Path, first_step: int, losses: np.ndarray) -> None:
    """Append `step,loss` rows; `first_step` is the number of the first row."""
    path = Path(run_dir) / LOSSES
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write("step,loss\n")
        for i, v in enumerate(np.asarray(losses, dtype=float)):
            f.write(f"{first_step + i},{float(v)!r}\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut off by a kill
    return out


def read_losses(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """`(steps, losses)` of a run's `train_loss.csv` (empty arrays if none)."""
    path = Path(run_dir) / LOSSES
    steps, losses = [], []
    if path.exists():
        for line in path.read_text().splitlines()[1:]:
            parts = line.split(",")
            if len(parts) != 2:
                continue
            try:
                s, v = int(parts[0]), float(parts[1])
            except ValueError:
                continue
            steps.append(s)
            losses.append(v)
    return np.asarray(steps, dtype=int), np.asarray(losses, dtype=float)


def truncate_after(run_dir: Path, step: int) -> None:
    """Drop metrics and loss rows after `step` (and any partial last line)."""
    run_dir = Path(run_dir)
    records = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= step]
    if (run_dir / METRICS).exists():
        atomic_write_text(
            run_dir / METRICS, "".join(to_json(r) + "\n" for r in records)
        )
    if (run_dir / LOSSES).exists():
        steps, losses = read_losses(run_dir)
        keep = steps <= step
        rows = "".join(
            f"{s},{float(v)!r}\n"
            for s, v in zip(steps[keep], losses[keep], strict=True)
        )
        atomic_write_text(run_dir / LOSSES, "step,loss\n" + rows)


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write_text(Path(run_dir) / SUMMARY, to_json(summary, indent=2) + "\n")


def read_summary(run_dir: Path) -> dict | None:
    """The run's `summary.json`; `None` if there is none or it cannot be read."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None
