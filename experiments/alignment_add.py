"""The gradient alignment table of README's "Online learning" section: how near
each approximate method's gradient comes to the exact one on the Add task.

Trains `configs/add_online.yaml` (Elman 32, exact RTRL, 10 000 online steps),
then compares, on the whole 20 000-step test stream, the gradient of the loss
by every method of `rnnode.analysis.alignment_methods()` with the exact one
(`rnnode analyse RUN --what alignment` does the same), and writes the cosine
over all parameters, the norm ratio and the cosine of the recurrent weights
`W` alone to `docs/results/alignment_add.md` (and the full record, every
parameter group, to `alignment_add.json`).

    python experiments/alignment_add.py                 # train, then measure
    python experiments/alignment_add.py --run runs/add_online   # a trained run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax.numpy as jnp

import rnnode as rn
from rnnode.train import load_config, load_run, train

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", help="a trained add_online run (default: train one)")
    p.add_argument("--out", default="runs/alignment_add", help="where to train")
    p.add_argument("--config", default=str(ROOT / "configs" / "add_online.yaml"))
    p.add_argument("--results", default=str(ROOT / "docs" / "results"))
    args = p.parse_args(argv)
    run = args.run
    if run is None:
        summary = train(
            load_config(args.config, [f"out_dir={args.out}"]), progress=False
        )
        run = summary["run_dir"]
    model, cfg, task = load_run(run)
    dtype = jnp.float64 if cfg.train.dtype == "float64" else jnp.float32
    xs = jnp.asarray(task.test.xs, dtype)
    ys = jnp.asarray(task.test.ys)
    result = rn.analysis.gradient_alignment(
        model,
        xs,
        ys,
        rn.analysis.alignment_methods(),
        loss=rn.cross_entropy,
        weights=jnp.asarray(task.test.weights, dtype),
    )
    groups = list(result.groups)
    w = groups.index("dynamics.W")
    a = groups.index("all")
    lines = [
        f"Gradient alignment on the Add task: `python experiments/alignment_add.py` "
        f"(the network of `configs/add_online.yaml` after {cfg.train.steps} online "
        f"steps; the whole {result.num_steps}-step test stream, {cfg.train.dtype}; "
        "every method gets the readout's gradient exactly).",
        "",
        "| method | cosine | norm ratio | cosine, `W` |",
        "|---|---|---|---|",
    ]
    for i, name in enumerate(result.methods):
        lines.append(
            f"| {name} | {result.cosine[i, a]:.4f} | {result.norm_ratio[i, a]:.4f} "
            f"| {result.cosine[i, w]:.4f} |"
        )
    text = "\n".join(lines) + "\n"
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "alignment_add.md").write_text(text)
    (out / "alignment_add.json").write_text(
        json.dumps(result.to_dict(), indent=1) + "\n"
    )
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
