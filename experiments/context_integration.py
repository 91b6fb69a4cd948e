"""Context-dependent integration (Mante, Sussillo, Shenoy & Newsome, 2013) end
to end: train a CTRNN on the `context` task, find its slow points in each
context, and measure the line attractor and the selection vectors.

    python experiments/context_integration.py                  # configs/context.yaml
    python experiments/context_integration.py --run runs/context   # analyse only
    python experiments/context_integration.py --figure docs/context_line_attractor.png

It trains like `rnnode train configs/context.yaml [overrides]` (unless `--run`
names a trained run), runs `rnnode analyse RUN --what line_attractor`, and
then draws the figure in the style of Mante et al.'s Fig. 6 with the test
trajectories of the stimulus period coloured by the relevant stream's signed
coherence. Prints and writes (`RUN/analysis/context_integration.json`): the
test metrics (accuracy, psychometric slopes on the relevant and irrelevant
streams), then per context the number of slow points, the fraction of their
variance on the first principal direction, the median slow eigenvalue and the
median next one (per ms and times τ), and the median selection-vector
projections on the relevant and on the irrelevant stream.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", nargs="?", default=str(ROOT / "configs/context.yaml"))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/context", help="the run directory")
    p.add_argument("--run", help="analyse this trained run instead of training")
    p.add_argument("--sequences", type=int, default=128, help="test trials used")
    p.add_argument("--starts", type=int, default=256)
    p.add_argument("--figure", help="also write the figure to this path")
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    import rnnode as rn
    from rnnode.cli import main as rnnode_main
    from rnnode.train import load_config, load_run, train

    start = time.perf_counter()
    if args.run:
        run = Path(args.run)
        summary = json.loads((run / "summary.json").read_text())
    else:
        cfg = load_config(args.config, [*args.overrides, f"out_dir={args.out}"])
        summary = train(cfg, progress=False)
        run = Path(summary["run_dir"])
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    analyse = ["analyse", str(run), "--what", "line_attractor"]
    analyse += ["--sequences", str(args.sequences), "--starts", str(args.starts)]
    if (rc := rnnode_main(analyse)) != 0:
        return rc
    analyse_s = time.perf_counter() - start
    record = json.loads((run / "analysis" / "line_attractor.json").read_text())

    # The figure with the stimulus period's trajectories, by relevant coherence.
    model, cfg, task = load_run(run)
    dtype = jnp.result_type(model.init_state())
    split = task.test
    c = split.conditions
    xs = jnp.asarray(split.xs[:, : args.sequences], dtype=dtype)
    hs, _ = model.rollout(xs)
    hs = np.asarray(hs)
    ctx = np.asarray(c["context"][: args.sequences])
    t0 = int(np.min(c["start_stimulus"][: args.sequences]))
    t1 = int(np.max(c["start_decision"][: args.sequences]))
    labels = sorted(set(ctx.tolist()))
    inputs = np.stack([np.asarray(xs[0, np.flatnonzero(ctx == k)[0]]) for k in labels])
    stimulus = list(range(1, task.input_size - 2))
    result = rn.analysis.line_attractor(
        model,
        inputs,
        stimulus=stimulus,
        key=jr.PRNGKey(0),
        states=[hs[:, ctx == k] for k in labels],
        contexts=labels,
        num_starts=args.starts,
    )
    rel = np.asarray(c["relevant_coherence"][: args.sequences], dtype=float)
    fig = rn.analysis.plot_line_attractor(
        result,
        [hs[t0:t1, ctx == k] for k in labels],
        [rel[ctx == k] for k in labels],
    )
    out = run / "analysis" / "context_line_attractor.png"
    fig.savefig(out, dpi=110)
    tau = float(np.mean(np.asarray(getattr(model.dynamics, "tau", 1.0))))
    found = {
        "run_dir": str(run),
        "test": summary.get("test"),
        "train_wall_s": round(train_s, 1),
        "analyse_wall_s": round(analyse_s, 1),
        "tau_ms": tau,
        "contexts": record["contexts"],
    }
    (run / "analysis" / "context_integration.json").write_text(
        json.dumps(found, indent=1) + "\n"
    )
    test = summary.get("test") or {}
    print()
    print(
        "test: accuracy {:.3f}; slopes relevant/irrelevant: context 1 {:.3g}/{:.3g}, "
        "context 2 {:.3g}/{:.3g}".format(
            test.get("accuracy", float("nan")),
            test.get("slope_relevant_context1", float("nan")),
            test.get("slope_irrelevant_context1", float("nan")),
            test.get("slope_relevant_context2", float("nan")),
            test.get("slope_irrelevant_context2", float("nan")),
        )
    )
    for r in record["contexts"]:
        print(
            f"context {r['context']}: {r['num_slow_points']} slow points, "
            f"{100 * r['variance_on_line']:.1f}% of their variance on a line; "
            f"slow λ τ = {tau * r['slow_eigenvalue_median']:+.3f}, next λ τ = "
            f"{tau * r['next_eigenvalue_median']:+.3f}; selection · relevant "
            f"{r['relevant_projection_median']:.3g}, · irrelevant "
            f"{r['irrelevant_projection_median']:.3g}"
        )
    print(f"train {train_s:.1f} s, analyse {analyse_s:.1f} s (wall)")
    if args.figure:
        shutil.copyfile(out, args.figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
