"""Fixed points across training: those of every checkpoint of a run, matched
from one checkpoint to the next (`rnnode.analysis.track_fixed_points`).

    rnnode train configs/flipflop.yaml train.keep_checkpoints=13 train.checkpoint_every=250
    python experiments/track_fixed_points.py runs/flipflop
    python experiments/track_fixed_points.py runs/flipflop --figure docs/flipflop_tracks.png

The input is the task's resting input (zeros if it has none); the starts are
the previous checkpoint's points plus fresh ones from the states each
checkpoint visits on test sequences, plus noise. Writes `RUN/analysis/tracks.json`
(per checkpoint: step, counts by stability, track ids) and `tracks.png` (the
points' first principal component against the step, and the counts).
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run", help="a run directory with several checkpoints")
    p.add_argument("--starts", type=int, default=128)
    p.add_argument("--noise", type=float, default=0.5)
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--method", default="newton", choices=("optimise", "newton"))
    p.add_argument("--figure", help="also copy the figure to this path")
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    import rnnode as rn
    from rnnode.train import load_checkpoints, load_run

    run = Path(args.run)
    _, _, task = load_run(run)
    checkpoints = load_checkpoints(run)
    model = checkpoints[-1][1]
    dtype = jnp.result_type(model.init_state())
    xs = jnp.asarray(task.test.xs[:, : args.sequences], dtype=dtype)
    x = jnp.asarray(task.rest_input or [0.0] * task.input_size, dtype=dtype)
    start = time.perf_counter()
    tracks = rn.analysis.track_fixed_points(
        [m for _, m in checkpoints],
        x,
        key=jr.PRNGKey(0),
        steps=[s for s, _ in checkpoints],
        states=lambda m: m.rollout(xs)[0],
        num_starts=args.starts,
        noise=args.noise,
        method=args.method,
    )
    wall = time.perf_counter() - start
    out = run / "analysis"
    out.mkdir(exist_ok=True)
    fig = rn.analysis.plot_tracks(tracks, title=f"{task.name}: fixed points")
    fig.savefig(out / "tracks.png", dpi=110)
    record = {
        "run_dir": str(run),
        "wall_s": round(wall, 1),
        "num_tracks": tracks.num_tracks,
        "checkpoints": [
            {"step": s, "counts": c, "ids": ids.tolist()}
            for s, c, ids in zip(tracks.steps, tracks.counts(), tracks.ids, strict=True)
        ],
    }
    (out / "tracks.json").write_text(json.dumps(record, indent=1) + "\n")
    for s, c in zip(tracks.steps, tracks.counts(), strict=True):
        print(f"step {s:>6}: " + ", ".join(f"{v} {k}" for k, v in c.items() if v))
    print(f"{tracks.num_tracks} tracks; {wall:.1f} s; wrote {out / 'tracks.json'}")
    if args.figure:
        shutil.copyfile(out / "tracks.png", args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
