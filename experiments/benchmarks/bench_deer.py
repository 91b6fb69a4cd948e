"""Benchmark: the sequential scan against DEER and quasi-DEER (Newton on the whole
trajectory, in parallel over time), for a GRU and a CTRNN.

For each cell (`GRU(n, 1)`; `CTRNN(n, 1)` stepped by `Euler(dt=0.1)`; default
initialisations, a linear readout, float32, one sequence of standard normal
inputs) and each `n` and `T`:

- **fwd**: the loss `sequence_loss(model, xs, ys)` with `gradient=Autodiff()`
  (a `lax.scan`, the sequential baseline), `DEER()` and `DEER(quasi=True)`;
- **fwd+bwd**: `jax.value_and_grad` of the same (DEER's backward pass: one reverse
  linear scan; quasi: a diagonal iteration of the adjoint);
- **iterations**: Newton iterations to the default tolerance (`parallel_rollout`);
- **depth**: the sequential depth, `T` for the scan and `⌈log₂ T⌉ × iterations`
  for Newton (the combine levels of each associative scan, times the
  iterations): what a GPU, with enough parallel lanes, turns into time;
- **memory**: what XLA allocates for the compiled fwd+bwd call
  (`memory_analysis()`: temp + arguments + outputs).

Time: the minimum of `--repeats` calls after compilation and a warm-up. Dense
`DEER()` is skipped where its `T n²` Jacobians would pass `--max-dense` numbers.

Writes `experiments/benchmarks/results/deer_<device>.md`. Runs unchanged on a
GPU (there the default grid is the full one of the issue, `T` up to 10⁵).

    python experiments/benchmarks/bench_deer.py             # CPU grid, ~15 min loaded
    python experiments/benchmarks/bench_deer.py --quick     # a smoke run
"""

import argparse
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import rnnode as rn

RESULTS = Path(__file__).resolve().parent / "results"


def make_model(cell: str, n: int, key) -> rn.Model:
    k1, k2 = jr.split(key)
    if cell == "gru":
        return rn.Model(rn.GRU(n, 1, key=k1), None, rn.Linear(n, 1, key=k2))
    return rn.Model(rn.CTRNN(n, 1, key=k1), rn.Euler(dt=0.1), rn.Linear(n, 1, key=k2))


def scan_depth(T: int) -> int:
    """The combine levels of one parallel scan of length `T`: `⌈log₂ T⌉`."""
    return max(1, (T - 1).bit_length())


def compiled(f, model, xs):
    """`f` compiled once for `(params, xs)`, and XLA's memory for it (MiB)."""
    params, static = eqx.partition(model, eqx.is_array)
    g = jax.jit(lambda p, xs: f(eqx.combine(p, static), xs))
    c = g.lower(params, xs).compile()
    stats = c.memory_analysis()
    mem = float("nan")
    if stats is not None:
        mem = (
            stats.temp_size_in_bytes
            + stats.argument_size_in_bytes
            + stats.output_size_in_bytes
        ) / 2**20
    return (lambda: c(params, xs)), mem


def timed(f, repeats):
    jax.block_until_ready(f())  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f())
        best = min(best, time.perf_counter() - t)
    return best


def bench_one(cell, n, T, method, repeats, key):
    kx, ky, km = jr.split(key, 3)
    model = make_model(cell, n, km)
    xs = jr.normal(kx, (T, 1), dtype=jnp.float32)
    ys = jr.normal(ky, (T, 1), dtype=jnp.float32)
    gradient = rn.Autodiff() if method is None else method

    def loss(m, xs):
        return rn.sequence_loss(m, xs, ys, gradient=gradient)

    fwd, _ = compiled(loss, model, xs)
    both, mem = compiled(eqx.filter_value_and_grad(loss), model, xs)
    row = dict(fwd=timed(fwd, repeats), both=timed(both, repeats), mem=mem)
    if method is None:
        row.update(iters=None, depth=T)
    else:
        sol = eqx.filter_jit(rn.parallel_rollout)(model, xs, method)
        ok = bool(sol.result == rn.RESULTS.successful)
        row.update(iters=int(sol.num_steps), depth=scan_depth(T) * int(sol.num_steps))
        if not ok:
            row["iters"] = f"{int(sol.num_steps)} (not converged)"
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--cells", nargs="+", default=["gru", "ctrnn"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--max-dense",
        type=float,
        default=None,
        help="skip DEER() when T n² exceeds this (default: 3e7 on CPU, 3e8 on GPU)",
    )
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    device = jax.devices()[0]
    gpu = device.platform != "cpu"
    sizes = args.sizes or [2, 8, 32, 64]
    lengths = args.lengths or ([1_000, 10_000, 100_000] if gpu else [1_000, 10_000])
    max_dense = args.max_dense or (3e8 if gpu else 3e7)
    if args.quick:
        sizes, lengths, args.repeats = [2, 8], [100], 1
    methods = [("scan", None), ("DEER", rn.DEER()), ("quasi-DEER", rn.DEER(quasi=True))]
    rows = []
    start = time.perf_counter()
    for cell in args.cells:
        for n in sizes:
            for T in lengths:
                for name, method in methods:
                    if name == "DEER" and T * n * n > max_dense:
                        continue
                    key = jr.PRNGKey(n * 7 + T)
                    r = bench_one(cell, n, T, method, args.repeats, key)
                    r.update(cell=cell, n=n, T=T, method=name)
                    rows.append(r)
                    print(
                        f"{cell:5s} n={n:3d} T={T:7d} {name:10s} fwd {r['fwd']:.4f}s "
                        f"fwd+bwd {r['both']:.4f}s iters {r['iters']} depth "
                        f"{r['depth']} mem {r['mem']:.1f} MiB",
                        flush=True,
                    )
    elapsed = time.perf_counter() - start
    kind = "gpu" if gpu else "cpu"
    lines = [
        f"# DEER benchmark ({kind})",
        "",
        f"Device: {device.device_kind} ({platform.machine()}), jax {jax.__version__}, "
        f"float32, one sequence, min of {args.repeats} calls after warm-up; "
        f"{elapsed / 60:.0f} min in all."
        + ("" if gpu else " CPU: 2 cores shared with other jobs (loaded)."),
        "Depth: T for the scan, ⌈log₂ T⌉ × iterations for Newton. Memory: XLA's "
        f"allocation for fwd+bwd. Dense DEER skipped where T n² > {max_dense:.0e}.",
        "",
        "| cell | n | T | method | iterations | depth | fwd (s) | fwd+bwd (s) "
        "| memory (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        it = "—" if r["iters"] is None else r["iters"]
        lines.append(
            f"| {r['cell']} | {r['n']} | {r['T']} | {r['method']} | {it} | "
            f"{r['depth']} | {r['fwd']:.4f} | {r['both']:.4f} | {r['mem']:.1f} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"deer_{kind}{suffix}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
