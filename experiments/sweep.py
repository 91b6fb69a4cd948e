"""A hyperparameter search from Python: what `rnnode sweep SPEC` does, in the
few calls of `rnnode.sweep` (Optuna underneath: TPE, pruning, resumable).

    python experiments/sweep.py                                  # configs/sweeps/sine.yaml
    python experiments/sweep.py configs/sweeps/sine.yaml n_trials=24 --workers 2

The sweep file names the base config, fixed overrides, the search space, the
metric, the sampler and the pruner (see README, "Sweeps"). Trials are ordinary
runs in `OUT_DIR/trial_N/`; the table, the best config and the plots are written
to `OUT_DIR` (default `runs/sweep-<spec name>/`). Started again, the same command
resumes the study.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnode.sweep import load_spec, open_study, run_sweep, write_report

DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "sine.yaml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("spec", nargs="?", default=str(DEFAULT), help="a sweep file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="of the file")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    args = p.parse_args(argv)

    spec = load_spec(args.spec, args.overrides)  # validated before anything runs
    run_sweep(spec, workers=args.workers, progress=False)
    report = write_report(open_study(spec), spec)
    print(report["table"], end="")
    if report["best"] is not None:
        best = report["best"]
        print(f"best: trial {best['trial']}, {spec.metric} {best[spec.metric]:.4g}")
        print(f"its config: {report['files']['best_config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
