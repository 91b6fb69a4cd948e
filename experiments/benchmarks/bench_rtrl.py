"""Benchmark: RTRL against naive forward mode, its matrix-product rate, its memory,
and online learning over an unbounded stream.

Same model throughout: a CTRNN `dr/dt = -r + W tanh(r) + U x + b` stepped by
`Euler(0.1)`, one input, a linear readout, float32, batch 1 (one sequence: the
online setting RTRL is for), the loss `mean_t mse(V r_t + c, y_t)`.

1. **Speed**, for each `n`: the gradient by `rnnode.RTRL()` (structured path)
   against `jax.jacfwd` of the same loss through `lax.scan` (forward mode with one
   tangent per parameter: the naive RTRL), and `jax.grad` (reverse mode) for
   scale. Median time of the jitted gradient after warm-up.
2. **Rate of the `J P` products**: RTRL's `P_t = J_t P_{t-1} + …` costs
   `2 n² m` flops per step (`m` = the dynamics' parameter count). Reported as
   GFLOP/s over RTRL's whole gradient time, and as a share of this machine's
   matrix-multiply peak (a large float32 matmul). "J P alone" times a bare
   `lax.scan` of the same `(n, n) @ (n, m)` products: what the hardware gives
   for this shape.
3. **Memory**: compiled memory (`jax.jit(f).lower(...).compile()
   .memory_analysis()`) of the RTRL gradient for a short and a long sequence.
   "temp" is the working memory; "args" holds the input sequence itself (which
   necessarily grows with `T`). Reverse mode is shown for contrast.
4. **Unbounded stream** (issue 6): real-time recurrent learning, an optax update
   after every step, over a stream fed in chunks to one compiled chunk function.
   Compiled memory per chunk and the process's resident memory after the first
   and after the last chunk.

Writes `experiments/benchmarks/results/rtrl_<device>.md` (`..._<k>core.md` with
`--cores k`). On a CPU, XLA runs RTRL's `(n, n) @ (n, m)` products on one core at
these sizes, while `jax.jacfwd`'s large elementwise work spreads over all cores:
`--cores 1` compares the two methods on the same budget.

    python experiments/benchmarks/bench_rtrl.py
    python experiments/benchmarks/bench_rtrl.py --cores 1
    python experiments/benchmarks/bench_rtrl.py --sizes 32 64 --repeats 50
"""

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import rnnode

DT = 0.1


def make_problem(n, T, seed=0):
    k1, k2, k3 = jr.split(jr.PRNGKey(seed), 3)
    model = rnnode.Model(
        rnnode.CTRNN(n, 1, gain=1.2, key=k1),
        rnnode.Euler(DT),
        rnnode.Linear(n, 1, key=k2),
    )
    ts = DT * jnp.arange(T, dtype=jnp.float32)
    xs = jnp.sin(ts)[:, None] + 0.1 * jr.normal(k3, (T, 1))
    ys = jnp.sin(ts + 0.5)[:, None]
    return model, xs, ys


def loss_fn(static, gradient):
    def loss(params, xs, ys):
        return rnnode.sequence_loss(
            eqx.combine(params, static), xs, ys, gradient=gradient
        )

    return loss


def interleaved_times(fns, repeats, budget_s=60.0):
    """Median and minimum time of each jitted `f(*args)` in `fns` (a dict), after
    compilation and a warm-up call, timed in interleaved rounds so that a busy
    machine slows every method alike."""
    for f, args in fns.values():
        jax.block_until_ready(f(*args))  # compile
    t0 = time.perf_counter()
    for f, args in fns.values():
        jax.block_until_ready(f(*args))  # warm-up
    first = time.perf_counter() - t0
    rounds = max(3, min(repeats, int(budget_s / max(first, 1e-9))))
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, (f, args) in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[k].append(time.perf_counter() - t0)
    return {k: (float(np.median(v)), float(np.min(v))) for k, v in times.items()}


def matmul_peak(repeats):
    """The best float32 matmul rate over a few square sizes: `(median-based,
    best-time-based)` GFLOP/s, each the maximum over sizes, and the sizes."""
    cpu = jax.devices()[0].platform == "cpu"
    sizes = (256, 512, 1024, 2048) if cpu else (4096, 8192)
    f = jax.jit(lambda a, b: a @ b)
    med_rate, best_rate = 0.0, 0.0
    for N in sizes:
        a = jr.normal(jr.PRNGKey(0), (N, N), dtype=jnp.float32)
        med, best = interleaved_times({"mm": (f, (a, a))}, repeats)["mm"]
        med_rate = max(med_rate, 2 * N**3 / med / 1e9)
        best_rate = max(best_rate, 2 * N**3 / best / 1e9)
    return med_rate, best_rate, sizes


def compiled_memory(f, *args):
    mem = jax.jit(f).lower(*args).compile().memory_analysis()
    return mem.temp_size_in_bytes, mem.argument_size_in_bytes


def speed_rows(sizes, T, repeats, peak, block=None):
    rows = []
    for n in sizes:
        k = block or min(n, T // 4)
        model, xs, ys = make_problem(n, T)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        dyn = eqx.filter(model.dynamics, eqx.is_inexact_array)
        m = sum(x.size for x in jax.tree.leaves(dyn))
        rtrl = jax.jit(jax.grad(loss_fn(static, rnnode.RTRL())))
        fwd = jax.jit(jax.jacfwd(loss_fn(static, rnnode.Autodiff())))
        g1, g2 = rtrl(params, xs, ys), fwd(params, xs, ys)
        scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g2))
        diff = max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True)
        )
        J = jnp.eye(n, dtype=jnp.float32) * 0.9
        P = jnp.zeros((n, m), jnp.float32)

        def bare(J, P):
            return jax.lax.scan(lambda P, _: (J @ P + 1.0, None), P, None, length=T)[0]

        generic = rnnode.RTRL(structured=False)
        rtrl_block = jax.jit(jax.grad(loss_fn(static, rnnode.RTRL(block=k))))
        g3 = rtrl_block(params, xs, ys)
        diff = max(
            [diff]
            + [
                float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(g3), jax.tree.leaves(g2), strict=True)
            ]
        )
        fns = {
            "rtrl": (rtrl, (params, xs, ys)),
            "block": (rtrl_block, (params, xs, ys)),
            "generic": (jax.jit(jax.grad(loss_fn(static, generic))), (params, xs, ys)),
            "jacfwd": (fwd, (params, xs, ys)),
            "grad": (
                jax.jit(jax.grad(loss_fn(static, rnnode.Autodiff()))),
                (params, xs, ys),
            ),
            "bare": (jax.jit(bare), (J, P)),
        }
        t = interleaved_times(fns, repeats)
        flops = 2 * n * n * m * T
        r = dict(n=n, m=m, k=k, t=t, rel_diff=diff / scale)
        r["speedup"] = t["jacfwd"][0] / t["rtrl"][0]
        r["speedup_block"] = t["jacfwd"][0] / t["block"][0]
        r["speedup_min"] = t["jacfwd"][1] / t["rtrl"][1]
        r["gflops"] = flops / t["rtrl"][0] / 1e9
        r["gflops_min"] = flops / t["rtrl"][1] / 1e9
        r["pct"] = 100 * r["gflops"] / peak[0]
        r["pct_best"] = 100 * r["gflops_min"] / peak[1]
        r["gflops_bare"] = flops / t["bare"][0] / 1e9
        r["bound"] = t["jacfwd"][0] / t["bare"][0]
        rows.append(r)
        ms = {k: 1e3 * v[0] for k, v in t.items()}
        print(
            f"n={n:3d} m={m:5d}  RTRL {ms['rtrl']:8.2f} ms (generic {ms['generic']:8.2f}, "
            f"block={k} {ms['block']:8.2f}: {r['speedup_block']:.1f}x)"
            f"  jacfwd {ms['jacfwd']:8.2f} ms  speedup {r['speedup']:5.1f}x "
            f"(min/min {r['speedup_min']:.1f}x)  jax.grad {ms['grad']:6.2f} ms  "
            f"J P {r['gflops']:5.1f} GFLOP/s = {r['pct']:4.1f}% of peak "
            f"(best: {r['gflops_min']:5.1f} = {r['pct_best']:4.1f}%) "
            f"(bare J P {r['gflops_bare']:5.1f})  rel diff {r['rel_diff']:.1e}",
            flush=True,
        )
    return rows


def memory_rows(sizes, T_short, T_long, block=None):
    """Compiled memory `(temp, args)` in bytes of three gradients per `(n, T)`:

    - `own`: `RTRL().loss` itself (the `AbstractGradient` interface) with the
      per-step inputs `(t, x, x_next)` precomputed and passed as arguments;
    - `seq`: `jax.grad` of `sequence_loss(..., gradient=RTRL())`, which also
      builds the per-step inputs (time stamps, next inputs) inside the program;
    - `blk`: the same with `RTRL(block=k)` (`k = block or min(n, T_short / 4)`);
    - `grad`: reverse mode (`Autodiff()`) through `sequence_loss`, for contrast.
    """
    rows = []
    for n in sizes:
        out = dict(n=n)
        for T in (T_short, T_long):
            model, xs, ys = make_problem(n, T)
            params, static = eqx.partition(model, eqx.is_inexact_array)

            def own(params, inputs, ys, weights):
                m = eqx.combine(params, static)
                return rnnode.RTRL().loss(
                    step=lambda p, h, inp: p.step(h, *inp),
                    loss=lambda p, h, y: rnnode.mse(p.output(h), y),
                    params=m,
                    h0=m.init_state(),
                    inputs=inputs,
                    targets=ys,
                    weights=weights,
                )

            weights = jnp.full((T,), 1.0 / T, dtype=xs.dtype)
            out["own", T] = compiled_memory(
                jax.grad(own), params, model.step_inputs(xs), ys, weights
            )
            for name, gradient in (
                ("seq", rnnode.RTRL()),
                ("blk", rnnode.RTRL(block=block or min(n, T_short // 4))),
                ("grad", rnnode.Autodiff()),
            ):
                out[name, T] = compiled_memory(
                    jax.grad(loss_fn(static, gradient)), params, xs, ys
                )
        rows.append(out)
        mb = lambda key: out[key][0] / 2**20
        print(
            f"n={n:3d}  RTRL temp {mb(('own', T_short)):7.3f} MiB (T={T_short}) vs "
            f"{mb(('own', T_long)):7.3f} MiB (T={T_long}); through sequence_loss "
            f"{mb(('seq', T_short)):7.3f} vs {mb(('seq', T_long)):7.3f} MiB; "
            f"reverse mode {mb(('grad', T_short)):7.3f} vs {mb(('grad', T_long)):8.3f} MiB",
            flush=True,
        )
    return rows


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def max_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream_row(n, steps, chunk, lr):
    model, _, _ = make_problem(n, 1)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    rtrl = rnnode.RTRL()
    opt = optax.adam(lr)

    def run_chunk(params, opt_state, state, xs, ys):
        def body(carry, xy):
            params, opt_state, state = carry
            state, loss, grads = rtrl.step(eqx.combine(params, static), state, *xy)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, state), loss

        carry, losses = jax.lax.scan(
            body, (params, opt_state, state), (xs, ys), unroll=2
        )
        return carry, jnp.mean(losses)

    def chunk_data(i):  # the stream: predict sin(t + 0.5) from a noisy sin(t)
        ts = DT * (i * chunk + jnp.arange(chunk, dtype=jnp.float32))
        noise = 0.1 * jr.normal(jr.fold_in(jr.PRNGKey(1), i), (chunk, 1))
        return jnp.sin(ts)[:, None] + noise, jnp.sin(ts + 0.5)[:, None]

    carry = (params, opt.init(params), rtrl.init(model))
    compiled = jax.jit(run_chunk).lower(*carry, *chunk_data(0)).compile()
    mem = compiled.memory_analysis()
    n_chunks = steps // chunk
    losses = []
    t0 = time.perf_counter()
    for i in range(n_chunks):
        carry, loss = compiled(*carry, *chunk_data(i))
        losses.append(float(loss))
        if i == 0:
            rss_first, max_first = rss_mib(), max_rss_mib()
    jax.block_until_ready(carry)
    wall = time.perf_counter() - t0
    row = dict(
        n=n,
        steps=n_chunks * chunk,
        chunk=chunk,
        us_per_step=1e6 * wall / (n_chunks * chunk),
        temp=mem.temp_size_in_bytes,
        args=mem.argument_size_in_bytes,
        rss_first=rss_first,
        rss_last=rss_mib(),
        max_first=max_first,
        max_last=max_rss_mib(),
        loss_first=losses[0],
        loss_last=losses[-1],
    )
    print(
        f"stream n={n}: {row['steps']} steps in chunks of {chunk}, "
        f"{row['us_per_step']:.1f} us/step; compiled per chunk: temp "
        f"{row['temp'] / 2**20:.3f} MiB, args {row['args'] / 2**20:.3f} MiB; RSS after "
        f"chunk 1 {row['rss_first']:.0f} MiB, after chunk {n_chunks} {row['rss_last']:.0f} MiB "
        f"(max RSS {row['max_first']:.0f} -> {row['max_last']:.0f} MiB); mean loss "
        f"{row['loss_first']:.4f} (chunk 1) -> {row['loss_last']:.4f} (last)",
        flush=True,
    )
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--long-T", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--stream-n", type=int, default=32)
    p.add_argument("--stream-steps", type=int, default=100_000)
    p.add_argument("--chunk", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--block",
        type=int,
        default=None,
        help="the block k of `RTRL(block=k)` (default: min(n, T / 4), so that the "
        "sequence has several blocks)",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument(
        "--cores",
        type=int,
        default=None,
        help="pin this process to the first CORES cores (a same-budget comparison: "
        "`jax.jacfwd` spreads over cores, RTRL's small products do not); the table "
        "goes to rtrl_<device>_<CORES>core.md",
    )
    args = p.parse_args(argv)
    if args.cores:  # before JAX starts its CPU client
        os.sched_setaffinity(0, set(range(args.cores)))

    dev = jax.devices()[0]
    device = dev.platform
    kind = f"{dev.device_kind} ({platform.processor() or platform.machine()})"
    print(f"device: {device}, {kind}, jax {jax.__version__}", flush=True)
    peak, peak_best, N = matmul_peak(args.repeats)
    N = "/".join(map(str, N))
    print(
        f"matmul peak: {peak:.1f} GFLOP/s from median times, {peak_best:.1f} from "
        f"best times (float32 square matmuls, N = {N})",
        flush=True,
    )
    speed = speed_rows(args.sizes, args.T, args.repeats, (peak, peak_best), args.block)
    memory = memory_rows(args.sizes, args.T, args.long_T, args.block)
    stream = stream_row(args.stream_n, args.stream_steps, args.chunk, args.lr)

    mib = lambda b: f"{b / 2**20:.3f}"
    lines = [
        f"# RTRL benchmark ({device})",
        "",
        f"Device: {device}, {kind}, {len(os.sched_getaffinity(0))} core(s) usable; "
        f"jax {jax.__version__}; float32; CTRNN + Euler(0.1), 1 input, linear "
        f"readout, batch 1, T = {args.T}.",
        f"Matrix-multiply peak: {peak:.1f} GFLOP/s from median times, "
        f"{peak_best:.1f} from best times (the fastest of float32 N×N matmuls, "
        f"N = {N}).",
        "",
        "Command: `python experiments/benchmarks/bench_rtrl.py --sizes "
        + " ".join(map(str, args.sizes))
        + f" --T {args.T} --long-T {args.long_T} --repeats {args.repeats} "
        + (f"--block {args.block} " if args.block else "")
        + f"--stream-n {args.stream_n} --stream-steps {args.stream_steps} "
        f"--chunk {args.chunk}"
        + (f" --cores {args.cores}" if args.cores else "")
        + "`",
        "",
        "## Speed: RTRL vs `jax.jacfwd` of the loss",
        "",
        "Median (and minimum) over interleaved rounds, after compilation and warm-up.",
        "",
        "| n | m | RTRL (ms) | RTRL generic (ms) | jacfwd (ms) | speedup "
        "| `RTRL(block=k)` (ms) | its speedup "
        "| jax.grad (ms) | J P GFLOP/s | % of peak | bare J P GFLOP/s "
        "| jacfwd / bare J P | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in speed:
        t = {k: (1e3 * a, 1e3 * b) for k, (a, b) in r["t"].items()}
        lines.append(
            f"| {r['n']} | {r['m']} | {t['rtrl'][0]:.2f} ({t['rtrl'][1]:.2f}) | "
            f"{t['generic'][0]:.2f} ({t['generic'][1]:.2f}) | "
            f"{t['jacfwd'][0]:.2f} ({t['jacfwd'][1]:.2f}) | "
            f"{r['speedup']:.1f}× ({r['speedup_min']:.1f}×) | "
            f"k = {r['k']}: {t['block'][0]:.2f} ({t['block'][1]:.2f}) | "
            f"{r['speedup_block']:.1f}× | "
            f"{t['grad'][0]:.2f} | {r['gflops']:.1f} ({r['gflops_min']:.1f}) | "
            f"{r['pct']:.0f}% ({r['pct_best']:.0f}%) | {r['gflops_bare']:.1f} | "
            f"{r['bound']:.1f}× | {r['rel_diff']:.1e} |"
        )
    lines += [
        "",
        "`m`: the dynamics' parameters (`W`, `U`, `b`), the ones carrying "
        "sensitivities. GFLOP/s counts `2 n² m` flops per step for `J P`, over "
        "RTRL's whole gradient time; 'bare J P' is a `lax.scan` of the products "
        "alone; % of peak: median/median (best/best). *jacfwd / bare J P*: the "
        "most any per-step RTRL can gain over `jax.jacfwd` here, since it must do "
        "these products (XLA:CPU runs each of them on one thread; see "
        "`--cores 1`). `RTRL(block=k)`: the "
        "sensitivities propagated once every k steps (Schmidhuber 1992; the same "
        "gradient in `O(n³ + n m + n² m / k)` per step); the GFLOP/s columns are "
        "for per-step `RTRL()`. max rel. diff: the larger of RTRL's and "
        "`RTRL(block=k)`'s difference from `jax.jacfwd`, relative to its largest "
        "entry.",
        "",
        f"## Compiled memory: T = {args.T} vs T = {args.long_T}",
        "",
        "temp: working memory of the compiled gradient; args: its arguments "
        "(parameters and the sequence, which grows with T).",
        "",
        f"| n | RTRL temp, T={args.T} (MiB) | RTRL temp, T={args.long_T} (MiB) "
        f"| ratio | RTRL args, T={args.T} / {args.long_T} (MiB) "
        "| via `sequence_loss`: temp (MiB) | `RTRL(block=k)`: temp (MiB) "
        "| reverse mode (`jax.grad`): temp (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in memory:
        T0, T1 = args.T, args.long_T
        (a, aa), (b, ba) = r["own", T0], r["own", T1]
        lines.append(
            f"| {r['n']} | {mib(a)} | {mib(b)} | {b / a:.3f} | {mib(aa)} / {mib(ba)} | "
            f"{mib(r['seq', T0][0])} / {mib(r['seq', T1][0])} | "
            f"{mib(r['blk', T0][0])} / {mib(r['blk', T1][0])} | "
            f"{mib(r['grad', T0][0])} / {mib(r['grad', T1][0])} |"
        )
    lines += [
        "",
        "RTRL: `jax.grad` of `RTRL().loss` (the strategy's interface) with the "
        "per-step inputs `(t, x, x_next)` passed in; via `sequence_loss`: `jax.grad` "
        "of `sequence_loss(..., gradient=RTRL())`, which builds those inputs itself "
        "(for an integrator that reads `t` or `x_next`, e.g. `interpolation="
        "'linear'`, they are `O(T)` arrays beside RTRL's constant state).",
        "",
        "## Online RTRL on an unbounded stream (issue 6)",
        "",
        f"Adam({args.lr}) update after every step; predict sin(t + 0.5) from a noisy "
        "sin(t); one compiled chunk function fed chunk after chunk.",
        "",
        "| n | steps | chunk | µs/step | compiled temp per chunk (MiB) | compiled args "
        "(MiB) | RSS after chunk 1 → last (MiB) | max RSS after chunk 1 → last (MiB) "
        "| mean loss chunk 1 → last |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {stream['n']} | {stream['steps']} | {stream['chunk']} | "
        f"{stream['us_per_step']:.1f} | {mib(stream['temp'])} | {mib(stream['args'])} | "
        f"{stream['rss_first']:.0f} → {stream['rss_last']:.0f} | {stream['max_first']:.0f} → "
        f"{stream['max_last']:.0f} | {stream['loss_first']:.4f} → {stream['loss_last']:.4f} |",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.cores}core" if args.cores else ""
    path = args.out / f"rtrl_{device}{suffix}.md"
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
