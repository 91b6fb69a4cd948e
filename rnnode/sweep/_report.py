"""A sweep's results: the table of trials (Markdown and CSV), the best trial and
its resolved config, and plots of the study (Optuna's matplotlib backend)."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

from ._spec import SweepSpec
from ._study import counts, sweep_dir

# below this many complete trials, parameter importances say nothing
_MIN_TRIALS_FOR_IMPORTANCE = 4


def trial_rows(study, spec: SweepSpec) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the table of trials, in trial order."""
    trials = study.get_trials(deepcopy=False)
    rerun_as = {}
    for t in trials:
        history = t.system_attrs.get("retry_history", [])
        if history:
            rerun_as[history[-1]] = t.number
    header = [
        "trial",
        "state",
        spec.metric,
        *spec.params,
        "time_s",
        "note",
        "run_dir",
    ]
    rows = []
    for t in trials:
        state = t.state.name.lower()
        note = ""
        if t.user_attrs.get("fail_reason"):
            note = t.user_attrs["fail_reason"]
        elif "pruned_at" in t.user_attrs:
            note = f"pruned at step {t.user_attrs['pruned_at']}"
        if t.number in rerun_as:
            state = "interrupted"
            note = f"re-run as trial {rerun_as[t.number]}"
        elif t.system_attrs.get("failed_trial") is not None:
            note = (note + "; " if note else "") + (
                f"re-run of trial {t.system_attrs['failed_trial']}"
            )
        duration = f"{t.duration.total_seconds():.1f}" if t.duration is not None else ""
        value = _fmt(t.value) if t.value is not None else _last_report(t)
        rows.append(
            [
                str(t.number),
                state,
                value,
                *(_fmt(t.params.get(k, "")) for k in spec.params),
                duration,
                note,
                t.user_attrs.get("run_dir", ""),
            ]
        )
    return header, rows


def write_report(study, spec: SweepSpec, *, out: Path | None = None) -> dict:
    """Write the table (`trials.md`, `trials.csv`), the best trial
    (`best.json`, `best.yaml`: its resolved config) and the plots
    (`history.png`, `importances.png`, `slice.png`) to the sweep directory.

    **Returns:** `{"table": markdown text, "best": dict or None, "files": {...},
    "skipped": {plot: reason}}`.
    """
    out = Path(out or sweep_dir(spec))
    out.mkdir(parents=True, exist_ok=True)
    header, rows = trial_rows(study, spec)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(md) + "\n"
    files = {"table": str(out / "trials.md"), "csv": str(out / "trials.csv")}
    (out / "trials.md").write_text(table)
    with open(out / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)

    best = _best(study, spec)
    if best is not None:
        (out / "best.json").write_text(json.dumps(best, indent=2) + "\n")
        files["best"] = str(out / "best.json")
        config = Path(best["run_dir"]) / "config.yaml"
        if config.is_file():
            shutil.copyfile(config, out / "best.yaml")
            files["best_config"] = str(out / "best.yaml")
    plots, skipped = _plots(study, spec, out)
    files.update(plots)
    return {
        "table": table,
        "best": best,
        "counts": counts(study),
        "files": files,
        "skipped": skipped,
    }


def _best(study, spec: SweepSpec) -> dict | None:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    t = study.best_trial
    return {
        "trial": t.number,
        spec.metric: t.value,
        "params": t.params,
        "overrides": t.user_attrs.get("overrides", []),
        "run_dir": t.user_attrs.get("run_dir", ""),
    }


def _plots(study, spec: SweepSpec, out: Path) -> tuple[dict, dict]:
    import optuna
    from optuna.trial import TrialState

    files, skipped = {}, {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return files, {"all": "no complete trial yet"}
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    jobs = {"history": lambda: ovm.plot_optimization_history(study)}
    if len(spec.params) < 2:
        skipped["importances"] = "needs two or more parameters"
    elif len(complete) < _MIN_TRIALS_FOR_IMPORTANCE:
        skipped["importances"] = (
            f"needs {_MIN_TRIALS_FOR_IMPORTANCE} complete trials, has {len(complete)}"
        )
    else:
        jobs["importances"] = lambda: ovm.plot_param_importances(study)
    jobs["slice"] = lambda: ovm.plot_slice(study)
    for name, plot in jobs.items():
        with warnings.catch_warnings():
            # the matplotlib backend is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = plot()
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        for a in fig.axes:
            if a.get_ylabel() == "Objective Value":
                a.set_ylabel(spec.metric)
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        files[name] = str(path)
    return files, skipped


def _last_report(t) -> str:
    if not t.intermediate_values:
        return ""
    step = max(t.intermediate_values)
    return f"({_fmt(t.intermediate_values[step])} at {step})"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
