"""Benchmark: the cost of one online learning step for each online method, against
a plain forward step with its readout gradient, on dense and sparse Elman networks.

Model: `rnnode.ElmanRNN(n, 2)` (dense, and with `density=0.1`: a fixed random
10 % of the recurrent weights), a linear readout to 2 outputs, float32, batch 1,
the per-step loss `mse`. For each `n` and each method (exact RTRL, SnAp-1, SnAp-2,
UORO, KF-RTRL, RFLO, e-prop):

- **time per step**: `method.step(model, state, x, y)` (the state and trace
  advanced, this step's loss and gradient estimate) in a compiled `lax.scan` of
  `--chunk` steps; the median and the minimum over repeated calls after
  compilation and a warm-up, divided by the chunk length (ratios use the minima:
  on a machine shared with other jobs they are the robust figure). The reference ("forward + readout grad") is the
  same scan of the bare step `h = model.step(h, x)` with the gradient of the
  step's loss with respect to the readout only: what any online learner pays.
- **memory**: the compiled memory of one step (`jax.jit(step).lower(...)
  .compile().memory_analysis()`: arguments + outputs + temporaries), and the
  bytes of the method's online state (its trace of `∂h/∂θ`).

A method whose online state would exceed `--max-state-mib` (exact RTRL's
`n × m ≈ n³` numbers, SnAp-2 on a dense network) is compiled for its memory
but not run: its time is marked "not run". The targets (issue 12): SnAp-1, UORO,
RFLO and e-prop at most 3× the reference at n = 256 and 512, with memory growing
like `n²` (the exponent fitted from the largest two sizes); SnAp-2 on the
10 %-dense network at n = 256 at least 10× faster than exact RTRL there.

Writes `experiments/benchmarks/results/online_<device>.md`.

    python experiments/benchmarks/bench_online.py                 # n = 32 … 512
    python experiments/benchmarks/bench_online.py --sizes 8 16 --repeats 3
"""

import argparse
import math
import os
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from online_floor import floor_chunk, snap2_layout

import rnnode as rn

METHODS = ("RTRL", "SnAp-1", "SnAp-2", "UORO", "KF-RTRL", "RFLO", "e-prop")
REF = "forward + readout grad"
TARGET_METHODS = ("SnAp-1", "UORO", "RFLO", "e-prop")
INPUTS = 2


def make_method(name):
    """The strategy of a display name of `rn.GRADIENT_VARIANTS` (the one table of
    methods), or `None` when this version of rnnode lacks it."""
    make = getattr(rn, "make_gradient", None)
    return None if make is None else make(name)


def make_model(n, density, seed=0):
    k1, k2 = jr.split(jr.PRNGKey(seed))
    if density < 1:
        cell = rn.ElmanRNN(n, INPUTS, density=density, key=k1)
    else:
        cell = rn.ElmanRNN(n, INPUTS, key=k1)
    return rn.Model(cell, readout=rn.Linear(n, 2, key=k2))


def tree_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def init_state(method, model):
    if getattr(method, "stochastic", False):
        return method.init(model, key=jr.PRNGKey(1))
    return method.init(model)


def method_fns(method, model):
    """`(one_step, chunk, carry)`: one online step, a scan of steps over
    `(xs, ys)`, and the starting carry."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def one(params, state, x, y):
        state, loss, grads = method.step(eqx.combine(params, static), state, x, y)
        return state, loss, grads

    def chunk(params, state, xs, ys):
        def body(state, xy):
            state, loss, grads = one(params, state, *xy)
            # keep the gradient live: a learner uses it
            return state, loss + sum(jnp.sum(g) for g in jax.tree.leaves(grads))

        return jax.lax.scan(body, state, (xs, ys))

    return one, chunk, (params, init_state(method, model))


def reference_fns(model):
    """The floor: the forward step and the gradient of the step's loss with
    respect to the readout only."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def one(params, h, x, y):
        m = eqx.combine(params, static)
        t = jnp.zeros((), x.dtype)
        h = m.step(h, t, x, x)

        def readout_loss(readout):
            return rn.mse(readout(m.dynamics.observe(h)), y)

        loss, g = jax.value_and_grad(readout_loss)(m.readout)
        return h, loss, g

    def chunk(params, h, xs, ys):
        def body(h, xy):
            h, loss, g = one(params, h, *xy)
            return h, loss + sum(jnp.sum(a) for a in jax.tree.leaves(g))

        return jax.lax.scan(body, h, (xs, ys))

    return one, chunk, (params, model.init_state())


def compiled_bytes(f, *args):
    mem = jax.jit(f).lower(*args).compile().memory_analysis()
    return (
        mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    )


def own_times(f, args, repeats, budget_s):
    """Median and minimum time of `f(*args)` after compilation and a warm-up:
    `repeats` calls, or fewer (at least 3) when they take over `budget_s`. On a
    machine shared with other jobs the minimum is the robust figure."""
    jax.block_until_ready(f(*args))
    jax.block_until_ready(f(*args))
    times, end = [], time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < end):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def measure(n, density, names, args):
    """Build, compile and time every method at one size: `name → row`."""
    try:
        model = make_model(n, density)
    except TypeError:  # an rnnode without sparse networks
        print(f"n={n:4d} density={density:.2f} needs `ElmanRNN(..., density=)`")
        return {REF: dict(error="no `density=`")}
    xs = jr.normal(jr.PRNGKey(2), (args.chunk, INPUTS))
    ys = jr.normal(jr.PRNGKey(3), (args.chunk, 2))
    rows, fns = {}, {}
    entries = [(REF, None)] + [(k, make_method(k)) for k in names]
    for name, method in entries:
        if name != REF and method is None:
            rows[name] = dict(missing=True)
            continue
        try:
            one, chunk, (params, state) = (
                reference_fns(model) if method is None else method_fns(method, model)
            )
            memory = compiled_bytes(one, params, state, xs[0], ys[0])
        except ValueError as e:  # not defined for this network
            rows[name] = dict(error=str(e).splitlines()[0])
            continue
        state_b = tree_bytes(state) if method is not None else 0
        rows[name] = dict(state=state_b, memory=memory)
        if state_b > args.max_state_mib * 2**20:
            mib = f"{state_b / 2**20:.0f} MiB > {args.max_state_mib:g}"
            rows[name]["skipped"] = f"state {mib}"
        else:
            fns[name] = (jax.jit(chunk), (params, state, xs, ys))
    if args.floor:  # each rule's irreducible work as plain JAX ops
        for name in list(fns):
            if name == REF:
                continue
            layout = snap2_layout(model) if name == "SnAp-2" else None
            chunk, f_args = floor_chunk(name, model, layout)
            fns[f"floor:{name}"] = (jax.jit(chunk), (*f_args, xs, ys))
    for name, (f, f_args) in fns.items():
        med, best = own_times(f, f_args, args.repeats, args.budget)
        if name.startswith("floor:"):
            rows[name[6:]]["floor_min"] = 1e6 * best / args.chunk
            continue
        rows[name]["us"] = 1e6 * med / args.chunk
        rows[name]["us_min"] = 1e6 * best / args.chunk
    for name, row in rows.items():
        if "us" in row:
            what = f"{row['us']:10.1f} us/step (min {row['us_min']:.1f})"
            if "floor_min" in row:
                what += f" floor {row['floor_min']:.1f}"
        else:
            what = row.get("skipped") or row.get("error") or "not in this rnnode"
        mem = (
            f"  compiled {row['memory'] / 2**20:9.3f} MiB  state "
            f"{row['state'] / 2**20:9.3f} MiB"
            if "memory" in row
            else ""
        )
        print(f"n={n:4d} density={density:.2f} {name:24s} {what}{mem}", flush=True)
    return rows


def _cell(row, ref):
    if row.get("missing"):
        return "not in this rnnode", "", "", ""
    if "error" in row:
        return "n/a", "", "", ""
    mem = f"{row['memory'] / 2**10:.1f}"
    state = f"{row['state'] / 2**10:.1f}"
    if "us" not in row:
        return f"not run ({row['skipped']})", "", mem, state
    ratio = f"{row['us_min'] / ref:.1f}×" if ref else ""
    return f"{row['us']:.1f} ({row['us_min']:.1f})", ratio, mem, state


def exponent(results, density, name, sizes):
    """The slope of log(compiled memory) against log(n) over the largest two
    sizes."""
    a, b = sizes[-2:]
    ra, rb = results[density][a].get(name, {}), results[density][b].get(name, {})
    if "memory" not in ra or "memory" not in rb:
        return math.nan
    return math.log(rb["memory"] / ra["memory"]) / math.log(b / a)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    p.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.1])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--chunk", type=int, default=5, help="steps per timed call")
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument(
        "--budget", type=float, default=3.0, help="seconds of timing per method"
    )
    p.add_argument(
        "--max-state-mib",
        type=float,
        default=128.0,
        help="do not run a method whose online state is larger (compile only)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also time each rule's irreducible work as plain JAX ops "
        "(online_floor.py) and write the ratios to online_floor_<device>.md",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)

    dev = jax.devices()[0]
    kind = f"{dev.device_kind} ({platform.processor() or platform.machine()})"
    print(f"device: {dev.platform}, {kind}, jax {jax.__version__}", flush=True)
    sizes = sorted(args.sizes)
    cpu0 = time.process_time()
    results = {
        d: {n: measure(n, d, args.methods, args) for n in sizes} for d in args.densities
    }
    cpu = time.process_time() - cpu0

    ref_name = REF
    lines = [
        f"# Online learning step benchmark ({dev.platform})",
        "",
        f"Device: {dev.platform}, {kind}, {len(os.sched_getaffinity(0))} core(s) "
        f"usable; jax {jax.__version__}; float32; Elman RNN with {INPUTS} inputs, "
        "linear readout to 2 outputs, batch 1, mse. Time: median (minimum) µs per "
        f"step over compiled scans of {args.chunk} steps, up to {args.repeats} calls "
        f"or {args.budget:g} s per method; ratios and targets use the minima (the "
        "machine is shared with other jobs: medians are inflated by them). Memory: compiled memory of one step "
        "(arguments + outputs + temporaries) and the method's online state. "
        f"The whole benchmark took {cpu:.0f} s of CPU time.",
        "",
        "Command: `python experiments/benchmarks/bench_online.py --sizes "
        + " ".join(map(str, sizes))
        + " --densities "
        + " ".join(map(str, args.densities))
        + f" --chunk {args.chunk} --repeats {args.repeats} --budget {args.budget} "
        f"--max-state-mib {args.max_state_mib:g}`",
        "",
        "| density | n | method | µs/step (min) | × forward | compiled (KiB) | state (KiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in args.densities:
        for n in sizes:
            rows = results[d][n]
            ref = rows[ref_name].get("us_min")
            for name, row in rows.items():
                us, ratio, mem, state = _cell(row, ref)
                if name == ref_name:
                    ratio = "1.0×"
                lines.append(
                    f"| {d:g} | {n} | {name} | {us} | {ratio} | {mem} | {state} |"
                )

    # the targets
    lines += ["", "## Targets", ""]
    big = [n for n in sizes if n >= 256] or sizes[-1:]
    lines += [
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for d in args.densities:
        for name in TARGET_METHODS:
            if name not in args.methods:
                continue
            ratios = []
            for n in big:
                row = results[d][n].get(name, {})
                ref = results[d][n][ref_name].get("us_min")
                if "us_min" in row and ref:
                    ratios.append((n, row["us_min"] / ref))
            if ratios:
                text = ", ".join(f"{r:.1f}× at n = {n}" for n, r in ratios)
                met = "yes" if all(r <= 3 for _, r in ratios) else "no"
            else:
                text, met = "not measured", "–"
            lines.append(f"| {name} (density {d:g}) ≤ 3× forward | {text} | {met} |")
            if len(sizes) >= 2:
                e = exponent(results, d, name, sizes)
                met = "–" if math.isnan(e) else ("yes" if e < 2.5 else "no")
                lines.append(
                    f"| {name} (density {d:g}) memory like n² | exponent {e:.2f} "
                    f"(n = {sizes[-2]} → {sizes[-1]}) | {met} |"
                )
    sparse = min(args.densities)
    if "SnAp-2" in args.methods and "RTRL" in args.methods and sparse < 1:
        n = 256 if 256 in sizes else sizes[-1]
        rows = results[sparse][n]
        s, r = rows.get("SnAp-2", {}), rows.get("RTRL", {})
        if "us_min" in s and "us_min" in r:
            speedup = r["us_min"] / s["us_min"]
            text, met = f"{speedup:.1f}× at n = {n}", "yes" if speedup >= 10 else "no"
        else:
            text, met = "not measured", "–"
        lines.append(
            f"| SnAp-2 (density {sparse:g}) ≥ 10× faster than RTRL | {text} | {met} |"
        )
    if args.floor:
        lines = floor_report(results, args, sizes, kind, cpu, dev)
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "online_floor" if args.floor else "online"
    path = args.out / f"{stem}_{dev.platform}.md"
    path.write_text(text)
    print("\n" + text)
    print(f"(written to {path})")
    return 0


def floor_report(results, args, sizes, kind, cpu, dev):
    """The table of each rule against its floor (`online_floor.py`)."""
    lines = [
        f"# Online rules against their floor ({dev.platform})",
        "",
        f"Device: {dev.platform}, {kind}, {len(os.sched_getaffinity(0))} core(s) "
        f"usable, shared with other jobs (loaded); jax {jax.__version__}; float32; "
        f"Elman RNN with {INPUTS} inputs, linear readout to 2 outputs, one stream, "
        "mse. Each rule's step (`method.step`, state, trace, loss and gradient) "
        "and its floor (the irreducible work of the step as plain JAX ops: the "
        "forward step, one read and one write of the trace, the gradient's "
        "accumulation, UORO's two extra matrix-vector products, KF-RTRL's n × n by "
        "n × n product, RTRL's `J P`; see `experiments/benchmarks/online_floor.py`) "
        f"are timed in compiled scans of {args.chunk} steps, up to {args.repeats} "
        f"calls or {args.budget:g} s each; the table gives the minima (µs per "
        f"step). The run took {cpu:.0f} s of CPU time. Target: ≤ 1.5× the floor.",
        "",
        "Command: `python experiments/benchmarks/bench_online.py --floor --sizes "
        + " ".join(map(str, sizes))
        + " --densities "
        + " ".join(map(str, args.densities))
        + f" --chunk {args.chunk} --repeats {args.repeats} --budget {args.budget}`",
        "",
        "| density | n | rule | µs/step (min) | floor µs/step (min) | × floor | ≤ 1.5× |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in args.densities:
        for n in sizes:
            for name, row in results[d][n].items():
                if name == REF:
                    continue
                if "us_min" in row and "floor_min" in row:
                    r = row["us_min"] / row["floor_min"]
                    lines.append(
                        f"| {d:g} | {n} | {name} | {row['us_min']:.1f} | "
                        f"{row['floor_min']:.1f} | {r:.2f}× | "
                        f"{'yes' if r <= 1.5 else 'no'} |"
                    )
                else:
                    why = row.get("skipped") or row.get("error") or "not run"
                    lines.append(f"| {d:g} | {n} | {name} | {why} | | | |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
