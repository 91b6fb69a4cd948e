"""Benchmark: BPTT against `jax.grad` through `lax.scan` and against diffrax, and
BPTT with checkpointing on a sequence of a million steps.

Same model throughout: a CTRNN `dr/dt = -r + W tanh(r) + U x + b` stepped by
explicit Euler (`dt = 0.1`), one input, a linear readout, float32, the loss
`mean_batch mean_t mse(V r_t + c, y_t)`; the time is that of one jit-compiled
`jax.value_and_grad` with respect to all parameters.

1. **Speed and memory**, for each hidden size `n` (batch 32, T = 1000):
   - `rnnode.BPTT()`: the explicit adjoint recursion (custom VJP);
   - `rnnode.Autodiff()`: `jax.grad` through `lax.scan`, the reference;
   - `rnnode.BPTT(checkpoints=√T)`: stores √T states, recomputes the rest;
   - diffrax: one `diffeqsolve(ODETerm, Euler(), RecursiveCheckpointAdjoint())`
     over the whole sequence, the input held piecewise constant (the vector field
     looks up the sample of the current step), fixed steps exactly on the sample
     grid (`StepTo`), the state saved after every step (`SaveAt(steps=True)`).
     (Saving with `SaveAt(ts=...)` instead gave the same loss but a gradient off by
     ~1% for T = 200 in float64 with diffrax 0.7.2, so it is not used.)
   Time: median (and minimum) of repeated calls after compilation and a warm-up,
   in interleaved rounds so that a busy machine slows every method alike.
   Memory: `jax.jit(f).lower(...).compile().memory_analysis()`, temp + argument
   + output bytes (what XLA allocates for the call; works on CPU). Every method's
   gradient is checked against `Autodiff`'s (relative max-norm difference).
2. **Long sequence** (`--long`; issue 6): `BPTT(checkpoints=1000)` on T = 10⁶
   steps, n = 64, batch 8: compiled memory and the wall time of one
   `value_and_grad`, against the compiled memory that storing every state
   (`BPTT()`, `Autodiff()`) would need (compiled only, not run).

Writes `experiments/benchmarks/results/bptt_<device>.md`.

    python experiments/benchmarks/bench_bptt.py            # a few minutes on 2 CPU cores
    python experiments/benchmarks/bench_bptt.py --long     # + the 10⁶-step row
"""

import argparse
import math
import os
import platform
import resource
import time
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import rnnode

DT = 0.1


def make_problem(n, T, B, seed=0):
    k1, k2, k3, k4 = jr.split(jr.PRNGKey(seed), 4)
    model = rnnode.Model(
        rnnode.CTRNN(n, 1, key=k1),
        rnnode.Euler(DT),
        rnnode.Linear(n, 1, key=k2),
    )
    ts = DT * jnp.arange(T, dtype=jnp.float32)
    phase = jr.uniform(k3, (B,), maxval=2 * np.pi)
    xs = jnp.sin(ts[:, None] + phase)[..., None] + 0.1 * jr.normal(k4, (T, B, 1))
    ys = jnp.sin(ts[:, None] + phase + 0.5)[..., None]
    return model, xs, ys


def sequence_loss_fn(static, gradient):
    def loss(params, xs, ys):
        model = eqx.combine(params, static)
        return rnnode.sequence_loss(model, xs, ys, gradient=gradient)

    return loss


def diffrax_loss_fn(static):
    """The same loss with the whole sequence solved by one `diffeqsolve`."""

    def loss(params, xs, ys):
        model = eqx.combine(params, static)
        T = xs.shape[0]
        grid = DT * jnp.arange(T + 1, dtype=xs.dtype)

        def vf(t, h, args):
            field, x = args
            # Piecewise-constant input: the sample of the step that starts at t.
            # (Euler only evaluates the field at the step starts t_i = i dt.)
            i = jnp.clip(jnp.round(t / DT).astype(jnp.int32), 0, T - 1)
            return field(t, h, x[i])

        def one(x, y):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(vf),
                diffrax.Euler(),
                t0=0.0,
                t1=T * DT,
                dt0=None,
                y0=model.init_state().astype(xs.dtype),
                args=(model.dynamics, x),
                stepsize_controller=diffrax.StepTo(ts=grid),
                saveat=diffrax.SaveAt(steps=True),
                adjoint=diffrax.RecursiveCheckpointAdjoint(),
                max_steps=T,
            )
            outs = jax.vmap(model.output)(sol.ys)
            return jnp.mean(jax.vmap(rnnode.mse)(outs, y))

        return jnp.mean(jax.vmap(one, in_axes=(1, 1))(xs, ys))

    return loss


def compile_vg(loss, params, xs, ys):
    return jax.jit(jax.value_and_grad(loss)).lower(params, xs, ys).compile()


def compiled_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes


def interleaved_times(calls, repeats, budget_s):
    """Median and minimum wall time of each compiled call, timed in interleaved
    rounds after one warm-up call each."""
    for f, args in calls.values():
        jax.block_until_ready(f(*args))
    times = {k: [] for k in calls}
    t_start = time.perf_counter()
    for r in range(repeats):
        for k, (f, args) in calls.items():
            t = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[k].append(time.perf_counter() - t)
        if r >= 2 and time.perf_counter() - t_start > budget_s:
            break
    return {
        k: (float(np.median(v)), float(np.min(v)), len(v)) for k, v in times.items()
    }


def rel_diff(g, ref):
    num = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref), strict=True)
    )
    den = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(ref))
    return num / den


def mb(x):
    return f"{x / 2**20:.1f}"


def bench_sizes(args):
    rows = []
    for n in args.sizes:
        T, B = args.steps, args.batch
        model, xs, ys = make_problem(n, T, B)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        k = max(1, round(math.sqrt(T)))
        methods = {
            "BPTT()": sequence_loss_fn(static, rnnode.BPTT()),
            "jax.grad through lax.scan (Autodiff())": sequence_loss_fn(
                static, rnnode.Autodiff()
            ),
            f"BPTT(checkpoints={k})": sequence_loss_fn(
                static, rnnode.BPTT(checkpoints=k)
            ),
            "diffrax Euler + RecursiveCheckpointAdjoint": diffrax_loss_fn(static),
        }
        calls, memory, values = {}, {}, {}
        for name, loss in methods.items():
            t = time.perf_counter()
            c = compile_vg(loss, params, xs, ys)
            print(
                f"  n={n}: compiled {name} in {time.perf_counter() - t:.1f} s",
                flush=True,
            )
            calls[name] = (c, (params, xs, ys))
            memory[name] = compiled_bytes(c)
            values[name] = c(params, xs, ys)
        # The floor: a scan of the bare (B, n) @ (n, n) product. Any BPTT of this
        # model does three such products per step (W φ(h) forward; λ W and the
        # accumulation of λᵀ φ(h) backward), so 3 × this time bounds every
        # implementation that steps through time.
        # (An orthogonal matrix of the same shape, so that the iterate neither
        # grows nor decays into subnormal numbers.)
        W = jnp.linalg.qr(params.dynamics.W)[0]
        h = jnp.ones((B, n), W.dtype) / n

        def bare(W, h):
            return jax.lax.scan(lambda h, _: (h @ W, None), h, None, length=T)[0]

        calls["bare"] = (jax.jit(bare), (W, h))
        ref_name = "jax.grad through lax.scan (Autodiff())"
        ref_v, ref_g = values[ref_name]
        times = interleaved_times(calls, args.repeats, args.budget)
        floor = 3 * times["bare"][0]
        for name in methods:
            v, g = values[name]
            med, best, runs = times[name]
            rows.append(
                dict(
                    n=n, T=T, B=B, method=name, median=med, best=best, runs=runs,
                    memory=memory[name],
                    value_diff=abs(float(v) - float(ref_v)) / abs(float(ref_v)),
                    grad_diff=rel_diff(g, ref_g), floor=floor,
                )
            )  # fmt: skip
            print(
                f"  n={n} {name}: {med * 1e3:.1f} ms, {mb(memory[name])} MiB",
                flush=True,
            )
    return rows


def bench_long(args):
    T, n, B, k = (
        args.long_steps,
        args.long_hidden,
        args.long_batch,
        args.long_checkpoints,
    )
    model, xs, ys = make_problem(n, T, B)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    out = dict(T=T, n=n, B=B, k=k)
    for name, gradient in [
        ("BPTT()", rnnode.BPTT()),
        ("Autodiff()", rnnode.Autodiff()),
    ]:
        c = compile_vg(sequence_loss_fn(static, gradient), params, xs, ys)
        out[f"full:{name}"] = compiled_bytes(c)
        del c
    t = time.perf_counter()
    c = compile_vg(sequence_loss_fn(static, rnnode.BPTT(checkpoints=k)), params, xs, ys)
    out["compile"] = time.perf_counter() - t
    out["memory"] = compiled_bytes(c)
    m = c.memory_analysis()
    out["temp"], out["args"] = m.temp_size_in_bytes, m.argument_size_in_bytes
    t = time.perf_counter()
    value, grads = jax.block_until_ready(c(params, xs, ys))
    out["time"] = time.perf_counter() - t
    out["finite"] = bool(np.isfinite(float(value))) and all(
        bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)
    )
    out["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"  long: {out['time']:.1f} s, {mb(out['memory'])} MiB compiled", flush=True)
    return out


def device_description():
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    if d.platform == "cpu":
        kind = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return d.platform, kind


def render(rows, long, args):
    plat, kind = device_description()
    lines = [
        f"# BPTT benchmark ({plat}: {kind})",
        "",
        f"jax {jax.__version__}, diffrax {diffrax.__version__}, float32, CTRNN + Euler(dt={DT}) "
        "+ Linear readout, one input; time of one jit-compiled `value_and_grad` "
        "(median and minimum over interleaved runs after warm-up); memory = compiled "
        "temp + argument + output bytes (`memory_analysis()`); Δgrad = max-norm "
        "difference from `Autodiff`'s gradient relative to its max-norm.",
        "",
        f"Command: `python experiments/benchmarks/bench_bptt.py {' '.join(args.argv)}`".rstrip(),
        "",
        "| n | batch | T | method | median ms | min ms | runs | memory MiB | Δgrad | vs Autodiff | diffrax / this |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    floor_lines = []
    for n in sorted({r["n"] for r in rows}):
        rs = [r for r in rows if r["n"] == n]
        ref = next(r for r in rs if r["method"].startswith("jax.grad"))
        dfx = next(r for r in rs if r["method"].startswith("diffrax"))
        bp = next(r for r in rs if r["method"] == "BPTT()")
        for r in rs:
            lines.append(
                f"| {r['n']} | {r['B']} | {r['T']} | {r['method']} | {r['median'] * 1e3:.1f} | "
                f"{r['best'] * 1e3:.1f} | {r['runs']} | {mb(r['memory'])} | {r['grad_diff']:.1e} | "
                f"{r['median'] / ref['median']:.2f}× | {dfx['median'] / r['median']:.2f}× |"
            )
        fl = bp["floor"]
        floor_lines.append(
            f"| {n} | {fl * 1e3:.1f} | {dfx['median'] / fl:.2f}× | "
            f"{bp['median'] / fl:.2f}× |"
        )
    lines += [
        "",
        "Targets (issue 3): BPTT within 1.1× of `jax.grad` through `lax.scan` "
        "(column *vs Autodiff* ≤ 1.10), and ≥ 3× faster than diffrax (column "
        "*diffrax / this* ≥ 3 on the `BPTT()` rows).",
        "",
        "Floor: every BPTT of this model does three `(batch, n) @ (n, n)` products "
        "per step (`W φ(h)` forward; `λ W` and the accumulated `λᵀ φ(h)` backward). "
        "A `lax.scan` of the bare product alone, times 3:",
        "",
        "| n | 3 × bare product (ms) | diffrax / floor | BPTT() / floor |",
        "|---|---|---|---|",
        *floor_lines,
    ]
    if long is not None:
        lines += [
            "",
            f"## Long sequence: T = {long['T']:,}, n = {long['n']}, batch {long['B']}",
            "",
            "| method | compiled memory MiB (temp / args) | one value_and_grad s | compile s |",
            "|---|---|---|---|",
            f"| BPTT(checkpoints={long['k']}) | {mb(long['memory'])} ({mb(long['temp'])} / "
            f"{mb(long['args'])}) | {long['time']:.1f} | {long['compile']:.1f} |",
            f"| BPTT() (every state stored; compiled, not run) | {mb(long['full:BPTT()'])} | – | – |",
            f"| Autodiff() (compiled, not run) | {mb(long['full:Autodiff()'])} | – | – |",
            "",
            f"Gradient finite: {long['finite']}. Peak resident memory of the whole "
            f"benchmark process (JAX runtime included): {mb(long['maxrss'])} MiB. "
            "The arguments are the input and target sequences themselves "
            f"({long['T']:,} × {long['B']} float32 each, plus the parameters).",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    import sys

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[32, 128], help="hidden sizes n"
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000, help="sequence length T")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per method")
    p.add_argument(
        "--budget", type=float, default=60.0, help="seconds of timing per size"
    )
    p.add_argument(
        "--long", action="store_true", help="add the 10⁶-step checkpointed row"
    )
    p.add_argument("--long-steps", type=int, default=1_000_000)
    p.add_argument("--long-hidden", type=int, default=64)
    p.add_argument("--long-batch", type=int, default=8)
    p.add_argument("--long-checkpoints", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None, help="markdown output file")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    print(f"devices: {jax.devices()}", flush=True)
    long = bench_long(args) if args.long else None
    rows = bench_sizes(args)
    text = render(rows, long, args)
    print()
    print(text)
    out = args.out
    if out is None:
        out = Path(__file__).parent / "results" / f"bptt_{jax.devices()[0].platform}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written {out}")


if __name__ == "__main__":
    main()
