"""The online-learning board: every online rule on the Add task and on the
time series, each with its own learning rate, over several seeds.

The protocol (`--budget full`, the default) is the one of recent comparisons
of online rules: an Elman network of 64 units learns online (one SGD update per
time step, the gradient averaged over 8 parallel streams), for 15 000 steps,
the state and traces reset every 200 steps (each stream reads windows of 200
steps of the series; the Add task is one unbroken stream per stream, as in
Marschall, Cho & Savin 2020); exact RTRL, SnAp-1, SnAp-2 on a sparse network,
UORO, KF-RTRL, RFLO, e-prop (and truncated BPTT, where `train.online` takes
it) on `add`, `henon`, `mackey_glass`, `lorenz` and `laser`.

Every part is an ordinary `rnnode sweep` of ordinary runs, so the board
resumes where it stopped when started again:

1. for each task and rule, the learning rate is chosen by a grid sweep over
   the same values for every rule (the same trial budget), scored on the
   validation split (`val.nmse`; `val.cross_entropy` for `add`) at the end of
   each run: the test split plays no part in the choice;
2. with that rate, a sweep over the seeds (the network's initialisation, the
   streams, the stochastic rules' keys);
3. for each seed's trained network: the cosine of the rule's gradient with the
   exact one (RTRL's, by autodiff) on test windows, for all parameters and for
   the recurrent weights `W` alone, and the bytes of the rule's online state.

The table (mean ± std over the seeds of the test metric scored once at the end
of each run, of the cosines, the online state's memory and the training steps
per second) goes to `RESULTS/online_board_<budget>.md` and `.json`, the
learning curves (the validation metric during training, mean over the seeds)
to `RESULTS/online_board_<budget>.png`.

    python experiments/online_board.py                   # the full protocol
    python experiments/online_board.py --budget small    # what fits a shared CPU
    python experiments/online_board.py --budget small --report   # tables only

`--rules` and `--tasks` run a part of it; `--out` holds the runs
(`runs/online_board_<budget>` by default), `--results` the tables
(`docs/results`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]

# rule -> (label, config sections it sets). The sparse network of SnAp-2 keeps
# `DENSITY` of the recurrent connections (SnAp-2 on a dense one is exact RTRL).
DENSITY = 0.1
RULES = {
    "rtrl": ("exact RTRL", {"gradient": {"name": "rtrl"}}),
    "snap1": ("SnAp-1", {"gradient": {"name": "snap", "order": 1}}),
    "snap2": (
        f"SnAp-2 (density {DENSITY})",
        {"gradient": {"name": "snap", "order": 2}, "model": {"density": DENSITY}},
    ),
    "uoro": ("UORO", {"gradient": {"name": "uoro"}}),
    "kf_rtrl": ("KF-RTRL", {"gradient": {"name": "kf_rtrl"}}),
    "rflo": ("RFLO", {"gradient": {"name": "rflo"}}),
    "eprop": ("e-prop", {"gradient": {"name": "eprop"}}),
    "tbptt": ("truncated BPTT (10)", {"gradient": {"name": "bptt", "truncate": 10}}),
}
TASKS = ("add", "henon", "mackey_glass", "lorenz", "laser")

BUDGETS = {
    "full": dict(
        hidden=64,
        streams=8,
        steps=15_000,
        reset=200,
        lrs=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
        seeds=3,
        eval_every=1000,
        num_val=16,
        num_test=32,
        cosine_windows=8,
        tasks=TASKS,
        rules=tuple(RULES),
    ),
    "small": dict(
        hidden=16,
        streams=4,
        steps=3000,
        reset=100,
        lrs=[3e-3, 3e-2, 3e-1],
        seeds=2,
        eval_every=1000,
        num_val=8,
        num_test=16,
        cosine_windows=4,
        tasks=("add", "laser", "mackey_glass"),
        rules=tuple(RULES),
    ),
    "tiny": dict(  # the test suite's end-to-end check
        hidden=4,
        streams=2,
        steps=20,
        reset=10,
        lrs=[1e-2, 3e-1],
        seeds=1,
        eval_every=10,
        num_val=2,
        num_test=2,
        cosine_windows=2,
        tasks=("henon",),
        rules=("rtrl",),
    ),
}


def metric_of(task: str) -> str:
    """The metric a task is scored by (lower is better for both)."""
    return "cross_entropy" if task == "add" else "nmse"


def task_section(task: str, b: dict) -> dict:
    """The config's `task:` section for the budget `b`."""
    if task == "add":
        # Marschall et al.: one unbroken stream per stream, as long as the run
        options = {
            "num_steps": b["steps"],
            "num_train": b["streams"],
            "num_val": 1,
            "num_test": 1,
        }
    elif task == "laser":
        options = {"num_steps": b["reset"]}
    else:
        windows = math.ceil(b["streams"] * b["steps"] / b["reset"])
        options = {
            "num_steps": b["reset"],
            "num_train": max(windows, b["streams"]),
            "num_val": b["num_val"],
            "num_test": b["num_test"],
        }
    return {"name": task, "options": options}


def base_config(task: str, rule: str, b: dict, out: Path) -> dict:
    """The config of one run of `rule` on `task` (learning rate and seed are
    set by the sweeps)."""
    _, sections = RULES[rule]
    model = {"dynamics": "elman", "hidden_size": b["hidden"], "readout": "linear"}
    model.update(sections.get("model", {}))
    return {
        "description": f"online board: {RULES[rule][0]} on {task}",
        "task": task_section(task, b),
        "model": model,
        "gradient": sections["gradient"],
        "optim": {"name": "sgd", "lr": 0.01},
        "train": {
            "steps": b["steps"],
            "batch_size": b["streams"],
            "online": True,
            "eval_every": b["eval_every"],
            "checkpoint_every": b["eval_every"],
            "steps_per_call": min(500, b["eval_every"]),
            "dtype": "float32",
        },
        "out_dir": str(out / "runs" / f"{task}__{rule}"),
    }


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def sweep_spec(name, config: Path, params: dict, task: str, out: Path, fixed=None):
    """A grid sweep over `params` (each a list of values), scored on the
    validation split."""
    return {
        "description": name,
        "config": str(config),
        "overrides": fixed or {},
        "params": {k: {"type": "categorical", "choices": v} for k, v in params.items()},
        "metric": f"val.{metric_of(task)}",
        "direction": "minimize",
        "n_trials": int(np.prod([len(v) for v in params.values()])),
        "sampler": {"name": "grid", "seed": 0},
        "pruner": {"name": "none"},
        "out_dir": str(out),
        "study_name": name,
    }


def run_pair(task: str, rule: str, b: dict, out: Path, *, run: bool) -> dict:
    """Tune, then train over the seeds, one rule on one task; returns what the
    board needs of it (`status` says what could not run)."""
    from rnnode.sweep import load_spec, open_study, run_sweep, write_report
    from rnnode.train import ConfigError

    name = f"{task}__{rule}"
    config = write_yaml(
        out / "configs" / f"{name}.yaml", base_config(task, rule, b, out)
    )
    lr_spec = write_yaml(
        out / "sweeps" / f"{name}-lr.yaml",
        sweep_spec(
            f"{name}-lr", config, {"optim.lr": b["lrs"]}, task, out / "lr" / name
        ),
    )
    try:
        spec = load_spec(lr_spec)
    except ConfigError as e:
        return {"status": f"not run: {e}"}
    if run:
        run_sweep(spec, progress=False)
    study = open_study(spec)
    report = write_report(study, spec)
    if report["best"] is None:
        return {"status": "not run: no learning rate finished (all diverged?)"}
    lr = float(report["best"]["params"]["optim.lr"])
    seeds_spec = write_yaml(
        out / "sweeps" / f"{name}-seeds.yaml",
        sweep_spec(
            f"{name}-seeds",
            config,
            {"train.seed": list(range(b["seeds"]))},
            task,
            out / "seeds" / name,
            fixed={"optim.lr": lr},
        ),
    )
    spec = load_spec(seeds_spec)
    if run:
        run_sweep(spec, progress=False)
    study = open_study(spec)
    runs = [
        Path(t.user_attrs["run_dir"])
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE"
    ]
    return {"status": "ok", "lr": lr, "lr_trials": report["table"], "runs": runs}


def measure(run_dir: Path, rule: str, b: dict) -> dict:
    """The test metric, gradient cosines, online state bytes and speed of one
    finished run (cached in `RUN/board.json`)."""
    cached = run_dir / "board.json"
    if cached.exists():
        return json.loads(cached.read_text())
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import rnnode as rn
    from rnnode.train import load_run

    summary = json.loads((run_dir / "summary.json").read_text())
    model, cfg, task = load_run(run_dir)
    metric = metric_of(task.name)
    method = _method(cfg.gradient)
    split = task.test
    if task.name == "add":  # one long stream: its first stretch, cut in windows
        T, k = b["reset"], b["cosine_windows"]
        n = min(k, split.num_steps // T)
        cut = lambda a: np.swapaxes(a[: n * T, 0].reshape(n, T, *a.shape[2:]), 0, 1)  # noqa: E731
        xs, ys = cut(split.xs), cut(split.ys)
        ws = np.full(T, 1.0 / T)
    else:
        k = min(b["cosine_windows"], split.num_sequences)
        xs, ys, ws = split.xs[:, :k], split.ys[:, :k], split.weights
    dtype = jnp.float32
    xs = jnp.asarray(xs, dtype)
    ys = jnp.asarray(ys) if task.loss == "cross_entropy" else jnp.asarray(ys, dtype)
    loss = rn.cross_entropy if task.loss == "cross_entropy" else rn.mse
    result = rn.analysis.gradient_alignment(
        model, xs, ys, {rule: method}, loss=loss, weights=jnp.asarray(ws, dtype)
    )
    groups = list(result.groups)
    w_group = next((g for g in groups if g.endswith(".W")), None)
    state = method.init(model, key=jr.PRNGKey(0)) if _online(method) else None
    state_bytes = (
        sum(a.nbytes for a in jax.tree.leaves(state) if hasattr(a, "nbytes"))
        if state is not None
        else None
    )
    record = {
        "run_dir": str(run_dir),
        "seed": cfg.train.seed,
        "lr": cfg.optim.lr,
        "test": summary["test"][metric],
        "val": summary.get("val", {}).get(metric),
        "cosine": float(result.cosine[0, groups.index("all")]),
        "cosine_W": None
        if w_group is None
        else float(result.cosine[0, groups.index(w_group)]),
        "state_bytes": state_bytes,
        "steps_per_s": summary.get("steps_per_s"),
        "curve": _curve(run_dir, metric),
    }
    cached.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _online(method) -> bool:
    import rnnode as rn

    return isinstance(method, rn.AbstractOnlineGradient)


def _method(section):
    """The gradient method of a config's `gradient:` section (`name` and the
    method's options), from rnnode's one table of names."""
    import rnnode as rn

    return rn.make_gradient(section.name, **section.options)


def _curve(run_dir: Path, metric: str) -> list[list[float]]:
    """`[step, validation metric]` of each evaluation during training."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        scores = r.get("val", r.get("test", {}))
        if metric in scores:
            out.append([r["step"], scores[metric]])
    return out


# The table and the figure


def _mean_std(values, digits: int = 3) -> str:
    """`mean ± std` over the seeds, `digits` significant digits (`–` if none)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    m, s = float(np.mean(values)), float(np.std(values))
    if digits == 0:  # a rate: whole numbers
        text = f"{m:.0f}"
        return text + (f" ± {s:.0f}" if len(values) > 1 else "")
    text = f"{m:.{digits}g}"
    return text + (f" ± {s:.1g}" if len(values) > 1 else "")


def table(board: dict, b: dict) -> str:
    lines = []
    for task, rows in board.items():
        metric = metric_of(task)
        lines += [
            f"\n**{task}** (test {metric.replace('_', ' ')}, scored once at the end)\n",
            f"| rule | lr | test {metric} | cosine to exact | cosine, `W` | "
            "online state | steps/s | seeds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for rule, r in rows.items():
            label = RULES[rule][0]
            if r["status"] != "ok":
                lines.append(f"| {label} | {r['status']} |  |  |  |  |  |  |")
                continue
            ms = r["measures"]
            state = ms[0]["state_bytes"] if ms else None
            lines.append(
                f"| {label} | {r['lr']:g} | {_mean_std(m['test'] for m in ms)} | "
                f"{_mean_std((m['cosine'] for m in ms), 3)} | "
                f"{_mean_std((m['cosine_W'] for m in ms), 3)} | "
                + ("–" if state is None else f"{state / 1024:.1f} KiB")
                + f" | {_mean_std((m['steps_per_s'] for m in ms), 0)} | {len(ms)} |"
            )
    return "\n".join(lines) + "\n"


def figure(board: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(board)
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False
    )
    for ax, task in zip(axes[0], tasks, strict=True):
        for rule, r in board[task].items():
            curves = [m["curve"] for m in r.get("measures", []) if m["curve"]]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [c[0] for c in curves[0][:n]]
            mean = np.mean([[c[1] for c in cv[:n]] for cv in curves], axis=0)
            ax.plot(steps, mean, marker=".", label=RULES[rule][0])
        if task == "add":  # the floors of the Add task, from its metrics
            from rnnode.data import make_task

            small = make_task("add", {"num_steps": 20})
            zeros = np.zeros((*small.test.ys.shape, 2))
            floors = small.metrics(zeros, small.test)
            for name, style in (("floor_nothing", ":"), ("floor_first", "--")):
                ax.axhline(floors[name], color="k", ls=style, lw=0.8, label=name)
        ax.set_title(task)
        ax.set_xlabel("online step")
        ax.set_ylabel(f"validation {metric_of(task)}")
        if metric_of(task) == "nmse":
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--budget", choices=list(BUDGETS), default="full")
    p.add_argument("--rules", help="comma-separated subset of " + ",".join(RULES))
    p.add_argument("--tasks", help="comma-separated subset of " + ",".join(TASKS))
    p.add_argument(
        "--out", help="where the runs go (default runs/online_board_<budget>)"
    )
    p.add_argument("--results", default=str(ROOT / "docs" / "results"))
    p.add_argument("--report", action="store_true", help="tables from what exists")
    args = p.parse_args(argv)
    b = dict(BUDGETS[args.budget])
    for what, known in (("rules", RULES), ("tasks", TASKS)):
        chosen = getattr(args, what)
        if chosen:
            names = chosen.split(",")
            bad = [n for n in names if n not in known]
            if bad:
                p.error(
                    f"--{what}: unknown {', '.join(bad)}; choose from {', '.join(known)}"
                )
            b[what] = tuple(names)
    out = Path(args.out or f"runs/online_board_{args.budget}")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    board = {}
    for task in b["tasks"]:
        board[task] = {}
        for rule in b["rules"]:
            r = run_pair(task, rule, b, out, run=not args.report)
            if r["status"] == "ok":
                r["measures"] = [measure(d, rule, b) for d in r.pop("runs")]
            board[task][rule] = r
            print(f"[board] {task} {rule}: {r['status']}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    stem = results / f"online_board_{args.budget}"
    head = (
        f"Measured with `python experiments/online_board.py --budget {args.budget}` "
        f"on {platform.machine()} ({platform.system()}), float32: Elman "
        f"{b['hidden']} units, {b['streams']} streams, {b['steps']} online steps, "
        f"resets every {b['reset']} steps (the series), SGD; learning rate from "
        f"{b['lrs']} by a grid sweep on the validation split; {b['seeds']} seeds. "
        + (
            "Tables written from the runs that exist (`--report`).\n"
            if args.report
            else f"Wall time of this invocation {wall / 60:.1f} min.\n"
        )
    )
    text = head + table(board, b)
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(
        json.dumps({"budget": b, "board": board}, indent=1, default=str) + "\n"
    )
    figure(board, stem.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
