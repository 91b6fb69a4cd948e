"""How fast `find_fixed_points` and `continue_fixed_points` run on a CPU.

    python experiments/benchmarks/bench_fixed_points.py                 # the targets
    python experiments/benchmarks/bench_fixed_points.py --n 32 --starts 64 --inputs 20 --out /tmp/b.md

1. The search: a random tanh CTRNN (`n` units, current form, `gain`, τ = 1,
   Euler dt = 0.1, float64) under a constant input; `starts` starts drawn from
   its visited states (8 sequences of 100 steps of random input) plus noise
   0.5; tolerance 1e-8. Both methods (`"newton"`: Levenberg-Marquardt from the
   starts; `"optimise"`: Adam, then the same polish). The first call compiles;
   the second, with other starts of the same shape, is the time of a search.
2. The continuation: every branch found at the first of `inputs` input values
   (the first input channel from -2 to 2, the others 0), followed to the last.

Writes a markdown table (default `experiments/benchmarks/results/fixed_points_cpu.md`).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import rnnode as rn  # noqa: E402

ROOT = Path(__file__).resolve().parent


def network(n: int, gain: float, seed: int = 0):
    k1, k2 = jr.split(jr.PRNGKey(seed))
    cell = rn.CTRNN(n, 3, gain=gain, tau=1.0, key=k1)
    return rn.Model(cell, rn.Euler(0.1), rn.Linear(n, 1, key=k2))


def search(model, starts_key, num_starts, method):
    xs = jr.normal(jr.PRNGKey(7), (100, 8, 3))
    hs, _ = model.rollout(xs)
    t0, c0 = time.perf_counter(), time.process_time()
    fps = rn.analysis.find_fixed_points(
        model,
        jnp.zeros(3),
        key=starts_key,
        num_starts=num_starts,
        states=hs,
        noise=0.5,
        method=method,
        tol=1e-8,
    )
    return fps, (time.perf_counter() - t0, time.process_time() - c0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--starts", type=int, default=1024)
    p.add_argument("--gain", type=float, default=1.2)
    p.add_argument("--inputs", type=int, default=200)
    p.add_argument("--cont-n", type=int, default=64, help="units, continuation")
    p.add_argument("--out", default=str(ROOT / "results" / "fixed_points_cpu.md"))
    args = p.parse_args(argv)
    model = network(args.n, args.gain)
    rows = []
    for method in ("newton", "optimise"):
        _, first = search(model, jr.PRNGKey(1), args.starts, method)
        fps, wall = search(model, jr.PRNGKey(2), args.starts, method)
        converged = fps.num_converged
        rows.append(
            f"| search `{method}` | {args.n} | {args.starts} starts | "
            f"{wall[0]:.1f} s wall, {wall[1]:.1f} s CPU ({first[0]:.1f} s wall, "
            f"{first[1]:.1f} s CPU with compilation) | "
            f"{converged}/{args.starts} starts at ‖F‖ ≤ 1e-8, {len(fps)} points "
            f"({', '.join(f'{fps.stability.count(s)} {s}' for s in rn.analysis.STABILITIES if fps.stability.count(s))}); "
            f"at most {int(fps.candidate_iterations.max())} iterations |"
        )
        print(rows[-1], flush=True)

    cmodel = network(args.cont_n, 1.5, seed=3)
    path = np.zeros((args.inputs, 3))
    path[:, 0] = np.linspace(-2.0, 2.0, args.inputs)
    start = rn.analysis.find_fixed_points(
        cmodel, path[0], key=jr.PRNGKey(4), num_starts=256, noise=1.0, method="newton"
    )
    for label in ("with compilation", "again"):
        t0, c0 = time.perf_counter(), time.process_time()
        cont = rn.analysis.continue_fixed_points(cmodel, path, fixed_points=start)
        wall = (time.perf_counter() - t0, time.process_time() - c0)
        if label == "with compilation":
            first = wall
    kinds = [b.kind for b in cont.bifurcations]
    npts = sum(len(b.s) for b in cont.branches)
    rows.append(
        f"| continuation | {args.cont_n} | {args.inputs} inputs | {wall[0]:.1f} s "
        f"wall, {wall[1]:.1f} s CPU ({first[0]:.1f} s wall, {first[1]:.1f} s CPU "
        f"with compilation) | {len(cont.branches)} branches, "
        f"{npts} points, bifurcations: "
        + (", ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds))) or "none")
        + " |"
    )
    print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Fixed points on the CPU",
            "",
            f"`python experiments/benchmarks/bench_fixed_points.py "
            f"--n {args.n} --starts {args.starts} --gain {args.gain} "
            f"--inputs {args.inputs} --cont-n {args.cont_n}`; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
            "shared with other jobs (load average about 20 while this ran: the "
            "wall times are inflated; the CPU times, of this process's threads, "
            "are closer to what an idle machine takes), float64, jax "
            f"{jax.__version__}. Search: a random tanh CTRNN (gain {args.gain}) "
            "under a constant input, starts from visited states plus noise 0.5, "
            "tolerance 1e-8. Continuation: a random CTRNN (gain 1.5), the first "
            "input channel from -2 to 2, every branch found at -2.",
            "",
            "| what | units | size | wall time | result |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
