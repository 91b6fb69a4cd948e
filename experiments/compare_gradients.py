"""Train one config with each gradient method and compare them.

    python experiments/compare_gradients.py                     # configs/sine.yaml, small
    python experiments/compare_gradients.py configs/oscillator_fit.yaml \\
        --methods autodiff,bptt,rtrl,online

Autodiff, BPTT and RTRL compute the same exact gradient, so from the same seed
their loss curves agree to rounding (float64 by default here) while their cost
differs: the table shows each method's final test metrics, time and speed, and
the largest relative difference of its training-loss curve from the first
method's. `online` is RTRL's online mode (`train.online: true`, an update at
every time step), a different algorithm, so its curve is not compared. Extra
`KEY=VALUE` arguments override the config for every method; the defaults
(`--small`) shrink the sine config so that RTRL stays cheap.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

SMALL = [
    "model.hidden_size=16",
    "task.options.num_steps=50",
    "train.steps=300",
    "train.eval_every=100",
    "train.checkpoint_every=300",
    "train.dtype=float64",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", nargs="?", default="configs/sine.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument(
        "--methods",
        default="autodiff,bptt,rtrl",
        help="comma-separated: autodiff, bptt, rtrl, online",
    )
    p.add_argument(
        "--no-small",
        action="store_true",
        help="do not apply the small defaults: " + " ".join(SMALL),
    )
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)

    from rnnode.train import ConfigError, load_config, read_losses, train
    from rnnode.train.config import resolve_config_path

    config = args.config
    if not Path(config).exists():
        config = Path(config).stem  # fall back to the built-in of that name
    try:
        name = resolve_config_path(config).stem
    except ConfigError as e:
        print("\n".join(f"compare: error: {x}" for x in e.errors), file=sys.stderr)
        return 2
    out = Path(args.out or Path("runs") / f"gradients-{name}")
    base = [] if args.no_small else list(SMALL)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    configs = []
    for m in methods:
        extra = (
            ["gradient.name=rtrl", "train.online=true"]
            if m == "online"
            else [f"gradient.name={m}", "train.online=false"]
        )
        try:
            cfg = load_config(
                config, [*base, *args.overrides, *extra, f"out_dir={out / m}"]
            )
        except ConfigError as e:
            print(
                "\n".join(f"compare: error: [{m}] {x}" for x in e.errors),
                file=sys.stderr,
            )
            return 2
        configs.append((m, cfg))

    rows, reference = [], None
    for m, cfg in configs:
        print(f"== {m}", file=sys.stderr)
        t0 = time.perf_counter()
        summary = train(cfg, progress=not args.quiet)
        wall = time.perf_counter() - t0
        _, losses = read_losses(summary["run_dir"])
        diff = ""
        if m != "online":
            if reference is None:
                reference, diff = losses, "(reference)"
            else:
                n = min(len(losses), len(reference))
                rel = np.abs(losses[:n] - reference[:n]) / np.maximum(
                    np.abs(reference[:n]), 1e-300
                )
                diff = f"{rel.max():.2e}"
        test = summary.get("test", {})
        main_metric = next(iter(test.items()), ("", float("nan")))
        rows.append(
            [
                m,
                f"{summary['test_loss']:.4g}",
                f"{main_metric[0]} {main_metric[1]:.4g}",
                f"{wall:.1f}",
                f"{summary.get('first_call_s') or 0:.1f}",
                f"{summary.get('steps_per_s') or 0:.1f}",
                diff,
            ]
        )
    header = [
        "method",
        "test loss",
        "test metric",
        "wall s",
        "first call s",
        "steps/s",
        "max rel. loss diff",
    ]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"(also in {out / 'compare.md'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
