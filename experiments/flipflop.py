"""The 3-bit flip-flop end to end (Sussillo & Barak, 2013): train the config, find
the fixed points under the resting input, and say what they are.

    python experiments/flipflop.py                         # configs/flipflop.yaml
    python experiments/flipflop.py --out runs/ff train.steps=500 model.hidden_size=32
    python experiments/flipflop.py --figure docs/flipflop_fixed_points.png

It trains like `rnnode train CONFIG [overrides]`, then runs `rnnode analyse RUN --what
fixed_points --tol TOL --starts N` (the input is the task's resting input, zeros:
no pulse), and prints: the test metrics; the counts by stability; for each
stable point the sign pattern of its readout and its distance to the nearest
corner of the cube `{-1, +1}^K`, and whether the stable points cover all `2^K`
corners once each; the saddles, grouped by how many readout channels sit near 0
(between two memories: `|o_k| < 0.5`), and whether each saddle has as many
unstable directions as it has such channels. Writes `RUN/analysis/flipflop.json`
besides the analysis' own `fixed_points.json` and `fixed_points.png`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np

from rnnode.cli import main as rnnode_main
from rnnode.train import load_config, train

ROOT = Path(__file__).resolve().parents[1]


def describe(result: dict) -> dict:
    """What the fixed points of a `flipflop` run say: see the module docstring."""
    readouts = np.asarray(result["readouts"], dtype=float)
    stability = result["stability"]
    K = readouts.shape[1] if readouts.ndim == 2 else 0
    stable = [i for i, s in enumerate(stability) if s == "stable"]
    points = []
    for i in stable:
        corner = np.where(readouts[i] >= 0, 1.0, -1.0)
        points.append(
            {
                "signs": "".join("+" if c > 0 else "-" for c in corner),
                "readout": readouts[i].round(3).tolist(),
                "distance_to_corner": float(np.linalg.norm(readouts[i] - corner)),
            }
        )
    corners = {"".join(c) for c in itertools.product("+-", repeat=K)}
    found = [p["signs"] for p in points]
    saddles = [i for i, s in enumerate(stability) if s == "saddle"]
    near_zero = [int(np.sum(np.abs(readouts[i]) < 0.5)) for i in saddles]
    eig = result["eigenvalues"]  # {"real", "imag"}, or a plain list if all real
    eig = (
        np.asarray(eig["real"]) + 1j * np.asarray(eig["imag"])
        if "real" in eig
        else np.asarray(eig)
    )
    grow = eig.real > 0 if result["kind"] == "continuous" else np.abs(eig) > 1
    unstable_dims = [int(np.sum(grow[i])) for i in saddles]
    return {
        "counts": result["counts"],
        "num_stable": len(stable),
        "num_saddles": len(saddles),
        "stable_points": sorted(points, key=lambda p: p["signs"]),
        "all_corners_once": sorted(found) == sorted(corners),
        "max_distance_to_corner": max(
            (p["distance_to_corner"] for p in points), default=None
        ),
        "saddles_by_channels_near_zero": {
            str(k): near_zero.count(k) for k in sorted(set(near_zero))
        },
        "saddle_unstable_dims_equal_channels_near_zero": unstable_dims == near_zero,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", nargs="?", default=str(ROOT / "configs/flipflop.yaml"))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/flipflop", help="the run directory")
    p.add_argument("--starts", type=int, default=256, help="fixed-point starts")
    p.add_argument("--tol", type=float, default=1e-6, help="largest speed kept")
    p.add_argument("--sequences", type=int, default=16, help="test sequences used")
    p.add_argument("--figure", help="also copy the figure to this path")
    args = p.parse_args(argv)

    start = time.perf_counter()
    cfg = load_config(args.config, [*args.overrides, f"out_dir={args.out}"])
    summary = train(cfg, progress=False)
    train_s = time.perf_counter() - start
    run = Path(summary["run_dir"])
    print(f"trained {run}: test {summary['test']}")

    start = time.perf_counter()
    analyse = ["analyse", str(run), "--what", "fixed_points"]
    analyse += ["--tol", str(args.tol), "--starts", str(args.starts)]
    if (rc := rnnode_main([*analyse, "--sequences", str(args.sequences)])) != 0:
        return rc
    analyse_s = time.perf_counter() - start

    result = json.loads((run / "analysis" / "fixed_points.json").read_text())
    found = describe(result)
    found = {
        "run_dir": str(run),
        "test": summary.get("test"),
        "train_wall_s": round(train_s, 1),
        "analyse_wall_s": round(analyse_s, 1),
        **found,
    }
    (run / "analysis" / "flipflop.json").write_text(json.dumps(found, indent=1) + "\n")

    print()
    print(f"fixed points by stability: {found['counts']}")
    print(f"stable points: {found['num_stable']}")
    for q in found["stable_points"]:
        print(
            f"  {q['signs']}  readout {q['readout']}  distance to the corner "
            f"{q['distance_to_corner']:.3f}"
        )
    print(f"each corner once: {'yes' if found['all_corners_once'] else 'no'}")
    near = found["saddles_by_channels_near_zero"]
    print(
        f"saddles: {found['num_saddles']}; by readout channels near 0: "
        + ", ".join(f"{k}: {v}" for k, v in near.items())
    )
    same = found["saddle_unstable_dims_equal_channels_near_zero"]
    print(
        "each saddle has one unstable direction per readout channel near 0: "
        + ("yes" if same else "no")
    )
    print(f"train {train_s:.1f} s, analyse {analyse_s:.1f} s (wall)")
    print(f"wrote {run / 'analysis' / 'flipflop.json'}")
    if args.figure:
        shutil.copyfile(run / "analysis" / "fixed_points.png", args.figure)
        print(f"copied the figure to {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
