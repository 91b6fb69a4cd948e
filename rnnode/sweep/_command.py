"""`rnnode sweep`: its arguments and what it does (called by `rnnode.cli`)."""

from __future__ import annotations

import argparse
import sys
import textwrap

DESCRIPTION = (
    "Search a config's hyperparameters with Optuna. SPEC is a sweep file: the base "
    "config, fixed overrides, the search space (`params:` float, int, categorical, "
    "or groups of overrides), the metric and its direction, n_trials, the sampler "
    "(tpe, random, grid) and the pruner. Each trial is an ordinary run in "
    "OUT_DIR/trial_N/; the study is a SQLite file OUT_DIR/study.db (or --storage). "
    "The same command resumes a stopped sweep (finished trials are kept, "
    "interrupted ones re-run) and, on another machine with the same --storage, "
    "joins it. At the end the report is written: trials.md, trials.csv, best.json, "
    "best.yaml, history.png, importances.png, slice.png."
)
EPILOG = (
    "examples:\n"
    "  rnnode sweep configs/sweeps/sine.yaml\n"
    "  rnnode sweep configs/sweeps/sine.yaml n_trials=40 --workers 2\n"
    "  rnnode sweep configs/sweeps/sine.yaml --storage postgresql://host/db\n"
    "  rnnode sweep configs/sweeps/sine.yaml --report     (report only)"
)


def add_sweep_parser(sub, overrides_help: str) -> None:
    """Add the `sweep` subcommand and its arguments to the CLI's subparsers `sub`."""
    s = sub.add_parser(
        "sweep",
        help="search hyperparameters with Optuna (pruning, workers, resumable)",
        description=textwrap.fill(DESCRIPTION, 79),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("spec", metavar="SPEC", help="a sweep file (YAML)")
    s.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides of the sweep file (e.g. n_trials=40 sampler.seed=1)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run trials in N processes on this machine (default 1)",
    )
    s.add_argument(
        "--storage",
        metavar="URL",
        help="the study's database URL (default: sqlite:///OUT_DIR/study.db)",
    )
    s.add_argument(
        "--report", action="store_true", help="write and print the report only"
    )
    s.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def sweep_command(args) -> int:
    """Run `rnnode sweep`; returns the exit status (a `ConfigError` propagates)."""
    from . import (
        WorkerFailed,
        load_spec,
        open_study,
        run_sweep,
        storage_url,
        write_report,
    )

    if args.workers < 1:
        print(
            f"rnnode: error: --workers: must be >= 1, got {args.workers}",
            file=sys.stderr,
        )
        return 2
    spec = load_spec(args.spec, list(args.overrides))
    if args.report:
        study = open_study(spec, args.storage, create=False)
    else:
        if not args.no_report:  # (not the workers of `--workers N`)
            print(
                f"sweep {spec.name}: {spec.n_trials} trials of {spec.config_path}, "
                f"{spec.metric} ({spec.direction}); study {storage_url(spec, args.storage)}",
                file=sys.stderr,
            )
        try:
            c = run_sweep(
                spec,
                workers=args.workers,
                storage=args.storage,
                progress=not args.quiet,
                worker_index=args.worker_index,
            )
        except WorkerFailed as e:
            print(f"rnnode: error: {e}", file=sys.stderr)
            return e.code
        except KeyboardInterrupt:
            print(
                "\nrnnode: interrupted; the same `rnnode sweep` command resumes the "
                "sweep (the interrupted trial runs again)",
                file=sys.stderr,
            )
            return 130
        if args.no_report:
            return 0
        print(f"sweep {spec.name}: {c['done']} trials done", file=sys.stderr)
        study = open_study(spec, args.storage)
    report = write_report(study, spec)
    print(report["table"], end="")
    best = report["best"]
    if best is not None:
        print(
            f"best: trial {best['trial']}, {spec.metric} {best[spec.metric]:.4g}, "
            + " ".join(best["overrides"])
        )
    for what, reason in report["skipped"].items():
        print(f"({what} plot skipped: {reason})")
    print("written: " + " ".join(report["files"].values()))
    return 0
