"""PNG plots of a run (matplotlib, Agg backend): loss curves, predictions against
targets on a few test sequences, and phase portraits for the oscillator."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ._metrics import read_losses
from .config import one_line


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_losses(path: Path, steps, losses, metrics: list[dict], *, title: str = ""):
    """Per-step training loss (and its running mean) with the evaluated test loss."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    steps = np.asarray(steps)
    losses = np.asarray(losses, dtype=float)
    positive = bool(len(losses)) and np.all(losses[np.isfinite(losses)] > 0)
    if len(steps):
        ax.plot(steps, losses, lw=0.6, alpha=0.35, color="C0", label="train (per step)")
        w = max(1, len(losses) // 50)
        if w > 1:
            smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1 :], smooth, color="C0", label=f"train (mean of {w})")
    # the validation loss (runs made before there was one: the test loss)
    ev = [(r["step"], r.get("val_loss", r.get("test_loss"))) for r in metrics]
    ev = [(s, v) for s, v in ev if isinstance(v, (int, float))]
    if ev:
        s, v = zip(*ev, strict=True)
        ax.plot(s, v, "o-", color="C3", label="validation")
        positive = positive and all(x > 0 for x in v)
    if positive:
        ax.set_yscale("log")
    _label(ax, "step", "loss", title or "loss")
    _save(fig, path)


_MAX_CLASS_STEPS = 60


def plot_predictions(
    path: Path,
    outputs: np.ndarray,
    targets: np.ndarray,
    *,
    classification: bool,
    dt: float = 1.0,
    weights: np.ndarray | None = None,
    equilibrium: bool = False,
    num: int = 3,
    title: str = "",
):
    """Model outputs against targets on the first `num` test sequences."""
    plt = _plt()
    outputs = np.asarray(outputs)
    targets = np.asarray(targets)
    if equilibrium:
        o, y = outputs[0], targets[0]
        k = o.shape[-1]
        fig, axes = plt.subplots(1, k, figsize=(4.0 * k, 4.0), squeeze=False)
        for j in range(k):
            ax = axes[0, j]
            ax.scatter(y[:, j], o[:, j], s=8, alpha=0.6)
            lo = float(min(y[:, j].min(), o[:, j].min()))
            hi = float(max(y[:, j].max(), o[:, j].max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xlabel(f"target {j}")
            ax.set_ylabel(f"equilibrium output {j}")
        fig.suptitle(title or "equilibrium outputs vs targets (test)")
        _save(fig, path)
        return
    T, N = outputs.shape[:2]
    num = min(num, N)
    fig, axes = plt.subplots(num, 1, figsize=(7.0, 2.4 * num), squeeze=False)
    t = np.arange(1, T + 1) * dt
    for i in range(num):
        ax = axes[i, 0]
        if classification:
            logits = outputs[:, i]
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            labels = np.asarray(targets[:, i]).astype(int)
            scored = np.ones(T, bool)
            if weights is not None:
                w = np.asarray(weights)
                scored = (w[:, i] if w.ndim == 2 else w) > 0
            # a long stream (the Add task): the first scored steps, not thousands
            # of ticks
            steps = np.flatnonzero(scored)[:_MAX_CLASS_STEPS]
            if len(steps) == 1:  # one scored step: bars of its class probabilities
                final, label = p[steps[0]], labels[steps[0]]
                ax.bar(np.arange(len(final)), final, color="C0")
                ax.bar([label], [final[label]], color="C2", label=f"true class {label}")
                ax.set_ylim(0, 1)
                ax.set_ylabel(f"p(class), step {steps[0] + 1}")
                ax.legend(loc="upper right")
            else:  # class probabilities over the scored steps, true labels marked
                ax.imshow(
                    p[steps].T,
                    aspect="auto",
                    origin="lower",
                    cmap="Blues",
                    vmin=0,
                    vmax=1,
                    extent=(-0.5, len(steps) - 0.5, -0.5, p.shape[-1] - 0.5),
                )
                ax.plot(
                    np.arange(len(steps)),
                    labels[steps],
                    "x",
                    color="C3",
                    ms=8,
                    label="true class",
                )
                ax.set_xticks(np.arange(len(steps)), [str(k + 1) for k in steps])
                ax.set_ylabel("class")
                ax.legend(loc="upper right")
        else:
            mask = None
            if weights is not None:
                w = np.asarray(weights)
                w = w[:, i] if w.ndim == 2 else w
                mask = w > 0
            sparse = mask is not None and not mask.all()
            for j in range(outputs.shape[-1]):
                label = f"target {j}" if i == 0 else None
                if sparse:  # only the scored steps have targets
                    ax.plot(
                        t[mask],
                        targets[mask, i, j],
                        "o",
                        color=f"C{j}",
                        ms=5,
                        label=label,
                    )
                else:
                    ax.plot(
                        t,
                        targets[:, i, j],
                        color=f"C{j}",
                        lw=1.2,
                        alpha=0.5,
                        label=label,
                    )
                ax.plot(
                    t,
                    outputs[:, i, j],
                    "--",
                    color=f"C{j}",
                    lw=1.2,
                    label=f"model {j}" if i == 0 else None,
                )
            ax.set_ylabel(f"sequence {i}")
            if i == 0:
                ax.legend(loc="upper right", fontsize="small", ncol=2)
    axes[-1, 0].set_xlabel("class or step" if classification else "time")
    fig.suptitle(title or "test predictions vs targets")
    _save(fig, path)


def plot_phase(path: Path, model_xv, target_xv=None, *, num: int = 3, title: str = ""):
    """Phase portraits (position x against velocity v): model against target."""
    plt = _plt()
    model_xv = np.asarray(model_xv)
    num = min(num, model_xv.shape[1])
    fig, ax = plt.subplots(figsize=(5.0, 5.0))
    for i in range(num):
        if target_xv is not None:
            tv = np.asarray(target_xv)
            ax.plot(
                tv[:, i, 0],
                tv[:, i, 1],
                color=f"C{i}",
                lw=2.0,
                alpha=0.35,
                label="target" if i == 0 else None,
            )
        ax.plot(
            model_xv[:, i, 0],
            model_xv[:, i, 1],
            "--",
            color=f"C{i}",
            lw=1.2,
            label="model" if i == 0 else None,
        )
    _label(ax, "position x", "velocity v", title or "phase portrait (test)")
    _save(fig, path)


PSYCHOMETRIC_TASKS = ("decision", "context", "ready_set_go")


def plot_psychometric(path: Path, task, outputs) -> bool:
    """The behaviour of a cognitive task's test trials (outputs `(T, N, k)`):
    for `decision`, `P(choice 1)` against the signed coherence; for `context`,
    one curve per context against the relevant and against the irrelevant
    coherence (Mante et al. 2013, Fig. 1); for `ready_set_go`, the produced
    interval against the target. Returns whether `task` has such a plot."""
    from ..data import produced_intervals, psychometric, responses

    if task.name not in PSYCHOMETRIC_TASKS:
        return False
    plt = _plt()
    split = task.test
    c = split.conditions
    if task.name == "ready_set_go":
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        target = c["target_ms"]
        ax.plot(target, produced_intervals(outputs, split), ".", alpha=0.3, color="k")
        ends = [target.min(), target.max()]
        ax.plot(ends, ends, "--", color="C3", label="target")
        _label(ax, "target interval (ms)", "produced interval (ms)", "ready-set-go")
        _save(fig, path)
        return True
    first = responses(outputs, split)["choice"] == 1
    if task.name == "decision":
        fig, ax = plt.subplots(figsize=(4.2, 3.4))
        x, p, _ = psychometric(c["signed_coherence"], first)
        ax.plot(x, p, "o-", color="k", label="network")
        ax.set_ylim(-0.02, 1.02)
        _label(ax, "signed coherence (%)", "P(choice 1)", "decision: psychometric")
        _save(fig, path)
        return True
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.4), sharey=True)
    for ax, which in zip(axes, ("relevant", "irrelevant"), strict=True):
        for k in (1, 2):
            sel = c["context"] == k
            x, p, _ = psychometric(c[f"{which}_coherence"][sel], first[sel])
            ax.plot(x, p, "o-", color=f"C{k - 1}", label=f"context {k}")
        ax.set_ylim(-0.02, 1.02)
        _label(ax, f"{which} coherence (%)", "P(choice 1)", which)
    fig.suptitle("context: choices against each stream")
    _save(fig, path)
    return True


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def write_plots(cfg, task, run_dir, records, hs, outs) -> dict:
    """The plots of a finished run in `run_dir/plots/`: the loss curves, test
    predictions against targets, and for an oscillator task its phase portrait;
    `{name: path}` of those written (a failing plot only warns)."""
    plots = Path(run_dir) / "plots"
    plots.mkdir(exist_ok=True)
    files = {}
    try:
        steps, losses = read_losses(run_dir)
        plot_losses(
            plots / "loss.png", steps, losses, records, title=f"{task.name}: loss"
        )
        files["loss"] = str(plots / "loss.png")
        plot_predictions(
            plots / "predictions.png",
            outs,
            task.test.ys,
            classification=task.loss == "cross_entropy",
            dt=float(task.dt),
            weights=task.test.weights,
            equilibrium=task.kind == "equilibrium",
            title=f"{task.name}: test predictions vs targets",
        )
        files["predictions"] = str(plots / "predictions.png")
        if task.name.startswith("oscillator"):
            if (
                outs.shape[-1] >= 2
                and task.test.ys.ndim == 3
                and task.test.ys.shape[-1] >= 2
            ):
                model_xv, target_xv = outs[..., :2], task.test.ys[..., :2]
            elif cfg.model.dynamics == "oscillator":
                model_xv, target_xv = hs[..., :2], None
            else:
                model_xv, target_xv = None, None
            if model_xv is not None:
                plot_phase(
                    plots / "phase.png",
                    model_xv,
                    target_xv,
                    title=f"{task.name}: phase portrait (test)",
                )
                files["phase"] = str(plots / "phase.png")
        # a cognitive task's behaviour, from the noise-free test outputs
        if plot_psychometric(plots / "psychometric.png", task, outs):
            files["psychometric"] = str(plots / "psychometric.png")
    except Exception as e:  # noqa: BLE001 - a plot must not lose a finished run
        warnings.warn(f"plotting failed: {one_line(e)}", stacklevel=2)
    return files
