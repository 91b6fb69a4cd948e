"""Sweep a config over a grid of overrides (and seeds); print a results table.

    python experiments/sweep.py configs/sine.yaml optim.lr=1e-3,3e-3,1e-2 \\
        model.hidden_size=32,64 --seeds 0,1

    # LSTM against the Elman RNN on the adding problem (different model options,
    # so each is a variant: a set of overrides applied together)
    python experiments/sweep.py configs/adding.yaml \\
        --variant "model.dynamics=lstm" \\
        --variant "model.dynamics=elman model.options={}"

Positional `KEY=V1,V2,...` arguments are grid axes (values read as YAML; commas
inside brackets do not split: `task.options.frequency_range=[1,2],[2,4]`);
`--set KEY=VALUE` fixes a value for every run; `--variant "K=V K=V"` (repeatable)
adds one more axis whose values are groups of overrides. Every combination is
validated before the first run starts. Each run goes to `OUT/<name>/` (default
`runs/sweep-<config>/`), and the table is written to `OUT/sweep.md` and
`OUT/sweep.csv`.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import re
import sys
import time
from pathlib import Path


def split_values(text: str) -> list[str]:
    """Split `a,b,[c,d]` at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out if v.strip()]


def _slug(overrides: list[str]) -> str:
    text = "_".join(o.split(".")[-1] for o in overrides) or "base"
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "", text.replace("=", "-"))[:120]


def _metric_columns(summaries: list[dict]) -> list[str]:
    cols: list[str] = []
    for s in summaries:
        for k in s.get("test") or {}:
            if k not in cols:
                cols.append(k)
    return cols


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", help="a config file or built-in config name")
    p.add_argument("grid", nargs="*", metavar="KEY=V1,V2", help="grid axes")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for every run",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='"K=V K=V"',
        help="a group of overrides: one value of the variant axis",
    )
    p.add_argument("--seeds", default=None, help="comma-separated train.seed values")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    from rnnode.train import ConfigError, load_config, train
    from rnnode.train._config import resolve_config_path

    axes: list[list[list[str]]] = []
    for item in args.grid:
        key, sep, values = item.partition("=")
        if not sep:
            print(
                f"sweep: error: grid axis {item!r}: expected KEY=V1,V2", file=sys.stderr
            )
            return 2
        axes.append([[f"{key}={v}"] for v in split_values(values)])
    if args.variant:
        axes.append([v.split() for v in args.variant])
    if args.seeds:
        axes.append([[f"train.seed={s}"] for s in split_values(args.seeds)])
    try:
        name = resolve_config_path(args.config).stem
    except ConfigError as e:
        for line in e.errors:
            print(f"sweep: error: {line}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("runs") / f"sweep-{name}")
    runs = []
    for combo in itertools.product(*axes) if axes else [()]:
        overrides = [o for group in combo for o in group]
        run_dir = out / _slug(overrides)
        try:
            cfg = load_config(
                args.config, [*args.set, *overrides, f"out_dir={run_dir}"]
            )
        except ConfigError as e:
            for line in e.errors:
                print(f"sweep: error: [{' '.join(overrides)}] {line}", file=sys.stderr)
            return 2
        runs.append((overrides, cfg))

    print(f"{len(runs)} runs of {name}, results in {out}/", file=sys.stderr)
    rows = []
    for i, (overrides, cfg) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {' '.join(overrides) or '(base)'}", file=sys.stderr)
        t0 = time.perf_counter()
        try:
            summary = train(cfg, progress=not args.quiet)
        except Exception as e:  # noqa: BLE001 - record the failure, go on
            summary = {"status": f"failed: {str(e).splitlines()[0][:80]}"}
        summary["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append((overrides, summary))

    cols = _metric_columns([s for _, s in rows])
    header = ["overrides", "status", "test_loss", *cols, "wall_s"]
    table = []
    for overrides, s in rows:
        test = s.get("test") or {}
        table.append(
            [
                " ".join(overrides) or "(base)",
                s.get("status", "?"),
                _fmt(s.get("test_loss")),
                *(_fmt(test.get(c)) for c in cols),
                _fmt(s.get("wall_s")),
            ]
        )
    out.mkdir(parents=True, exist_ok=True)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in table]
    (out / "sweep.md").write_text("\n".join(md) + "\n")
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(table)
    print("\n".join(md))
    return 0 if all(s.get("status") == "finished" for _, s in rows) else 1


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
