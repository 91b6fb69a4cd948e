"""Benchmark: the LRU's recurrence run sequentially (`lax.scan`) against in
parallel over time (`jax.lax.associative_scan`, `LRU(..., parallel=True)`).

Model: `rnnode.Model(rnnode.LRU(n, m), readout=rnnode.Linear(m, 1))`, float32,
inputs `(T, batch, m)`. For each sequence length T:

- **forward**: one jit-compiled `Model.rollout` (the outputs of every step);
- **value_and_grad**: one jit-compiled `jax.value_and_grad` of
  `sequence_loss(..., gradient=Autodiff())` with respect to every parameter
  (`jax.grad` through `lax.scan`, or through the associative scan: BPTT by the
  parallel scan).

Time: median (and minimum) of repeated calls after compilation and a warm-up, the
two paths interleaved so that a busy machine slows both alike. Memory:
`memory_analysis()` of the compiled call, temp + argument + output bytes. Δ: the
max-norm difference of the parallel path's outputs (forward) or gradient
(value_and_grad) from the sequential one's, relative to its max-norm. The device
is the one JAX picks (CPU here; the script runs unchanged on a GPU).

Writes `experiments/benchmarks/results/lru_<platform>.md`.

    python experiments/benchmarks/bench_lru.py                 # T = 10³, 10⁴, 10⁵
    python experiments/benchmarks/bench_lru.py --T 50 --repeats 2   # a smoke test
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

import rnnode


def make(n, m, parallel, seed=0):
    k1, k2 = jr.split(jr.PRNGKey(seed))
    lru = rnnode.LRU(n, m, r_min=0.9, parallel=parallel, key=k1)
    return rnnode.Model(lru, None, rnnode.Linear(m, 1, key=k2))


def functions(model, xs, ys):
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def forward(params, xs):
        return eqx.combine(params, static).rollout(xs)[1]

    def loss(params, xs, ys):
        return rnnode.sequence_loss(eqx.combine(params, static), xs, ys)

    return {
        "forward": (jax.jit(forward), (params, xs)),
        "value_and_grad": (jax.jit(jax.value_and_grad(loss)), (params, xs, ys)),
    }


def memory(fn, args):
    info = fn.lower(*args).compile().memory_analysis()
    if info is None:
        return float("nan")
    return (
        info.temp_size_in_bytes
        + info.argument_size_in_bytes
        + info.output_size_in_bytes
    )


def flat(tree):
    return np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])


def bench_T(T, args):
    kx, ky = jr.split(jr.PRNGKey(1))
    xs = jr.normal(kx, (T, args.batch, args.m))
    ys = jr.normal(ky, (T, args.batch, 1))
    fns = {p: functions(make(args.n, args.m, p), xs, ys) for p in (False, True)}
    rows = []
    for what in ("forward", "value_and_grad"):
        res = {}
        for p in (False, True):
            fn, fargs = fns[p][what]
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(*fargs))
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(fn(*fargs))  # warm-up
            res[p] = {
                "out": out,
                "times": [],
                "compile": compile_s,
                "mem": memory(fn, fargs),
            }
        for _ in range(args.repeats):
            for p in (False, True):
                fn, fargs = fns[p][what]
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*fargs))
                res[p]["times"].append(time.perf_counter() - t0)
        ref = flat(res[False]["out"] if what == "forward" else res[False]["out"][1])
        par = flat(res[True]["out"] if what == "forward" else res[True]["out"][1])
        delta = float(np.max(np.abs(par - ref)) / np.max(np.abs(ref)))
        for p in (False, True):
            r = res[p]
            rows.append(
                {
                    "T": T,
                    "what": what,
                    "path": "parallel (associative_scan)"
                    if p
                    else "sequential (lax.scan)",
                    "median": float(np.median(r["times"])),
                    "best": float(np.min(r["times"])),
                    "compile": r["compile"],
                    "mem": r["mem"],
                    "delta": delta if p else 0.0,
                }
            )
        seq, par_ = rows[-2], rows[-1]
        print(
            f"T={T:>7} {what:>15}: sequential {seq['median'] * 1e3:9.2f} ms, "
            f"parallel {par_['median'] * 1e3:9.2f} ms, Δ {delta:.1e}",
            flush=True,
        )
    return rows


def render(rows, args):
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    if d.platform == "cpu":
        kind = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    lines = [
        f"# LRU benchmark: sequential against parallel scan ({d.platform}: {kind})",
        "",
        f"jax {jax.__version__}, float32, `LRU({args.n}, {args.m}, r_min=0.9)` + "
        f"`Linear({args.m}, 1)`, batch {args.batch}; time of one jit-compiled call "
        f"(median and minimum of {args.repeats} interleaved runs after warm-up); "
        "memory = compiled temp + argument + output bytes; Δ = max-norm difference "
        "of the parallel path's outputs (forward) or gradient (value_and_grad) from "
        "the sequential path's, relative to its max-norm.",
        "",
        f"Command: `python experiments/benchmarks/bench_lru.py {' '.join(args.argv)}`".rstrip(),
        "",
        "| T | call | path | median ms | min ms | compile s | memory MiB | Δ | speedup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in range(0, len(rows), 2):
        seq = rows[i]
        for r in rows[i : i + 2]:
            lines.append(
                f"| {r['T']} | {r['what']} | {r['path']} | {r['median'] * 1e3:.2f} | "
                f"{r['best'] * 1e3:.2f} | {r['compile']:.2f} | {r['mem'] / 2**20:.2f} | "
                f"{r['delta']:.1e} | {seq['median'] / r['median']:.2f}× |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--n", type=int, default=64, help="complex units")
    p.add_argument("--m", type=int, default=16, help="input (and output) width")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="markdown output file")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    print(f"devices: {jax.devices()}", flush=True)
    rows = [r for T in args.T for r in bench_T(T, args)]
    text = render(rows, args)
    print()
    print(text)
    out = args.out
    if out is None:
        out = Path(__file__).parent / "results" / f"lru_{jax.devices()[0].platform}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written {out}")


if __name__ == "__main__":
    main()
