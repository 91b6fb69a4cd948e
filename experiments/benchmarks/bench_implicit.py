"""Benchmark: gradient of a batched equilibrium loss by implicit differentiation.

Same model, same data, several sizes. A contractive CTRNN
`dr/dt = -r + W tanh(r) + U x + b` (gain < 1, float64), whose equilibria
`r* = W tanh(r*) + U x + b` are found by fixed-point iteration for a batch of
constant inputs; the loss is `mean_batch mse(V r* + c, y)`. Compared:

- `implicit`:  `rnnode.Implicit()` — Neumann iteration on `V = V J + a` with VJPs;
- `implicit-gmres`: `rnnode.Implicit(linear_solver=lineax.GMRES(...))`;
- `unrolled`:  `rnnode.Unrolled()` — reverse mode through the bounded while loop
  (stores every step up to `max_steps`);
- `unrolled-scan`: reverse mode through a plain `lax.scan` of exactly K steps
  (K = the most steps the forward solve needed) — the leanest unrolled baseline;
- `optimistix`: `optimistix.fixed_point(..., adjoint=ImplicitAdjoint())` with its
  default linear solver (`AutoLinearSolver(well_posed=None)` → LU, which
  materialises the `n × n` Jacobian per example), vmapped over the batch;
- `optimistix-joint` (n ≤ `--optimistix-joint-max-n`): the same, but the whole batch as one
  fixed-point problem on the `(N, n)` state, so the Jacobian is `(N n) × (N n)`.

Reported per method: time of one jitted gradient (min over repeats, after
compilation), compiled memory from `jax.jit(f).lower(...).compile()
.memory_analysis()` (temporary buffers, and the total incl. arguments/outputs),
and the max relative difference of the gradient from `unrolled` (relative to the
largest gradient entry). Times are taken round-robin (one call of each method
per round) and reported as the minimum and median wall time and the minimum
process CPU time (all threads), which is less sensitive to other processes on a
shared machine. Writes `results/implicit_<device>.md`.

    python experiments/benchmarks/bench_implicit.py                 # n = 64, 256
    python experiments/benchmarks/bench_implicit.py --sizes 256 --repeats 5
"""

import argparse
import os
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402

import rnnode  # noqa: E402

try:
    import optimistix as optx
except ImportError:  # pragma: no cover
    optx = None


def make_problem(n, batch, m, k, gain, seed):
    k1, k2, k3, k4, k5 = jr.split(jr.PRNGKey(seed), 5)
    dyn = rnnode.CTRNN(n, m, gain=gain, key=k1)
    dyn = eqx.tree_at(lambda d: d.b, dyn, 0.1 * jr.normal(k4, (n,)))
    model = rnnode.Model(dyn, rnnode.Euler(0.1), rnnode.Linear(n, k, key=k2))
    xs = jr.normal(k3, (batch, m))
    ys = jr.normal(k5, (batch, k))
    return model, xs, ys


def tree_rel(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(la, lb, strict=True))
    return diff / max(float(jnp.max(jnp.abs(y))) for y in lb)


def memory(jitted, *args):
    compiled = jitted.lower(*args).compile()
    ma = compiled.memory_analysis()
    if ma is None:
        return float("nan"), float("nan")
    temp = ma.temp_size_in_bytes
    total = (
        ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        + ma.temp_size_in_bytes
        - ma.alias_size_in_bytes
    )
    return temp, total


def time_round_robin(fns, args, repeats, budget_s=30.0):
    """Time every compiled function `repeats` times, interleaved (one call of each
    per round) so that load changes on a shared machine hit all methods alike; a
    method whose timed calls have taken `budget_s` in all is not called again
    (so a minute-long baseline is timed once or twice, not `repeats` times).
    Returns per name `(min wall, median wall, min process CPU, number of calls)`
    in seconds; the CPU time (all threads of this process) is less sensitive to
    other processes."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))  # compile + warm up
    walls = {k: [] for k in fns}
    cpus = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if sum(walls[name]) >= budget_s:
                continue
            c, t = time.process_time(), time.perf_counter()
            jax.block_until_ready(fn(*args))
            walls[name].append(time.perf_counter() - t)
            cpus[name].append(time.process_time() - c)
    return {
        k: (min(walls[k]), float(np.median(walls[k])), min(cpus[k]), len(walls[k]))
        for k in fns
    }


def build_methods(static, xs, ys, tol, max_steps, K, include_optx, include_joint):
    solver = rnnode.FixedPointIteration(rtol=tol, atol=tol, max_steps=max_steps)

    def eq_loss(gradient):
        def loss(params):
            model = eqx.combine(params, static)
            return rnnode.equilibrium_loss(
                model, xs, ys, gradient=gradient, solver=solver
            )

        return loss

    def scan_loss(params):
        model = eqx.combine(params, static)
        G = rnnode.fixed_point_map(model.dynamics)

        def body(h, _):
            return jax.vmap(G, in_axes=(None, 0, 0))(model.dynamics, xs, h), None

        h0 = jnp.zeros((xs.shape[0], model.state_size), xs.dtype)
        hs, _ = jax.lax.scan(body, h0, None, length=K)
        return jnp.mean(jax.vmap(lambda h, y: rnnode.mse(model.output(h), y))(hs, ys))

    def optx_loss(params):
        model = eqx.combine(params, static)
        G = rnnode.fixed_point_map(model.dynamics)

        def one(x):
            fn = lambda h, args: G(args[0], args[1], h)
            sol = optx.fixed_point(
                fn,
                optx.FixedPointIteration(rtol=tol, atol=tol),
                jnp.zeros((model.state_size,), x.dtype),
                args=(model.dynamics, x),
                max_steps=max_steps,
                adjoint=optx.ImplicitAdjoint(),
            )
            return sol.value

        hs = jax.vmap(one)(xs)
        return jnp.mean(jax.vmap(lambda h, y: rnnode.mse(model.output(h), y))(hs, ys))

    def optx_joint_loss(params):
        # the whole batch as one fixed-point problem on an (N, n) state: the
        # default adjoint then materialises an (N n) × (N n) Jacobian
        model = eqx.combine(params, static)
        G = rnnode.fixed_point_map(model.dynamics)

        def fn(hs, args):
            dyn, x = args
            return jax.vmap(G, in_axes=(None, 0, 0))(dyn, x, hs)

        sol = optx.fixed_point(
            fn,
            optx.FixedPointIteration(rtol=tol, atol=tol),
            jnp.zeros((xs.shape[0], model.state_size), xs.dtype),
            args=(model.dynamics, xs),
            max_steps=max_steps,
            adjoint=optx.ImplicitAdjoint(),
        )
        hs = sol.value
        return jnp.mean(jax.vmap(lambda h, y: rnnode.mse(model.output(h), y))(hs, ys))

    gmres = lx.GMRES(rtol=tol, atol=tol, max_steps=max_steps)
    methods = {
        "implicit": eq_loss(rnnode.Implicit(tol=tol, max_steps=max_steps)),
        "implicit-gmres": eq_loss(
            rnnode.Implicit(tol=tol, max_steps=max_steps, linear_solver=gmres)
        ),
        "unrolled": eq_loss(rnnode.Unrolled()),
        "unrolled-scan": scan_loss,
    }
    if include_optx:
        methods["optimistix"] = optx_loss
    if include_optx and include_joint:
        methods["optimistix-joint"] = optx_joint_loss
    return methods


def run_size(n, args):
    model, xs, ys = make_problem(n, args.batch, args.inputs, args.outputs, args.gain, 0)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    solver = rnnode.FixedPointIteration(
        rtol=args.tol, atol=args.tol, max_steps=args.max_steps
    )
    info = rnnode.equilibrium(model, xs, solver=solver, return_info=True)
    K = int(jnp.max(info.num_steps))
    rho = float(jnp.max(rnnode.spectral_radius_estimate(model, xs[:4])))
    include_optx = optx is not None and not args.no_optimistix
    include_joint = n <= args.optimistix_joint_max_n
    methods = build_methods(
        static, xs, ys, args.tol, args.max_steps, K, include_optx, include_joint
    )
    fns, mem, compile_s = {}, {}, {}
    for name, loss in methods.items():
        fns[name] = jax.jit(jax.grad(loss))
        t0 = time.perf_counter()
        mem[name] = memory(fns[name], params)
        compile_s[name] = time.perf_counter() - t0
    timings = time_round_robin(fns, (params,), args.repeats, args.budget)
    rows, grads = [], {}
    for name, fn in fns.items():
        grads[name] = fn(params)
        tmin, tmed, cpu, calls = timings[name]
        temp, total = mem[name]
        rows.append(
            dict(
                method=name,
                time=tmin,
                median=tmed,
                cpu=cpu,
                temp=temp,
                total=total,
                compile=compile_s[name],
                calls=calls,
            )
        )
        print(
            f"  n={n:4d} {name:15s} {tmin * 1e3:10.2f} ms  cpu {cpu * 1e3:10.2f} ms  "
            f"temp {temp / 2**20:9.2f} MiB",
            flush=True,
        )
    ref = grads["unrolled"]
    for r in rows:
        r["rel"] = tree_rel(grads[r["method"]], ref)
    return dict(n=n, K=K, rho=rho, rows=rows)


def fmt_table(results, args):
    lines = [
        "| n | method | time (ms) | median (ms) | CPU time (ms) | temp memory (MiB) "
        "| total memory (MiB) | time / implicit | CPU / implicit | temp mem / implicit "
        "| max rel. diff vs unrolled | timed calls |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        imp = next(r for r in res["rows"] if r["method"] == "implicit")
        for r in res["rows"]:
            lines.append(
                f"| {res['n']} | {r['method']} | {r['time'] * 1e3:.2f} | "
                f"{r['median'] * 1e3:.2f} | {r['cpu'] * 1e3:.2f} | "
                f"{r['temp'] / 2**20:.2f} | {r['total'] / 2**20:.2f} | "
                f"{r['time'] / imp['time']:.2f}× | {r['cpu'] / imp['cpu']:.2f}× | "
                f"{r['temp'] / max(imp['temp'], 1):.2f}× | {r['rel']:.1e} | "
                f"{r['calls']} |"
            )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="64,256", help="comma-separated hidden sizes n")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--inputs", type=int, default=8)
    p.add_argument("--outputs", type=int, default=4)
    p.add_argument(
        "--gain", type=float, default=0.5, help="CTRNN gain (< 1: contractive)"
    )
    p.add_argument(
        "--tol", type=float, default=1e-12, help="forward and adjoint tolerance"
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=100,
        help="solver step limit (also bounds `unrolled`'s storage)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="seconds of timed calls per method, after which it is not timed again",
    )
    p.add_argument("--no-optimistix", action="store_true")
    p.add_argument(
        "--optimistix-joint-max-n",
        type=int,
        default=256,
        help="also run `optimistix-joint` (the batch as one (N, n) fixed point, "
        "so an (N n)² Jacobian: 4 GiB and about a minute a call at N=64, n=256 on "
        "a 2-core CPU) for sizes n up to this; 0: never",
    )
    p.add_argument(
        "--out",
        default=None,
        help="markdown path (default results/implicit_<device>.md)",
    )
    args = p.parse_args(argv)

    dev = jax.devices()[0]
    device = dev.platform
    header = (
        f"device: {dev.platform} ({getattr(dev, 'device_kind', '?')}), "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"jax {jax.__version__}; float64; batch {args.batch}, inputs {args.inputs}, "
        f"outputs {args.outputs}, gain {args.gain}, tol {args.tol:g}, "
        f"max_steps {args.max_steps}, {args.repeats} interleaved runs per method"
    )
    try:
        header += f"; load average at start {os.getloadavg()[0]:.1f}"
    except OSError:
        pass
    print(header)
    results = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        results.append(run_size(n, args))
    table = fmt_table(results, args)
    steps = "; ".join(
        f"n={r['n']}: forward steps K={r['K']}, ρ(J)≈{r['rho']:.2f}" for r in results
    )
    print()
    print(table)
    print(steps)
    out = (
        Path(args.out)
        if args.out
        else (Path(__file__).parent / "results" / f"implicit_{device}.md")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python experiments/benchmarks/bench_implicit.py " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    out.write_text(
        "# Implicit fixed-point gradients: benchmark\n\n"
        f"Command: `{cmd.strip()}`\n\n{header}\n\n{table}\n\n{steps}\n\n"
        "`temp memory`: XLA's temporary buffers of the compiled gradient; "
        "`total`: arguments + outputs + temporaries. "
        "`optimistix`: `optimistix.fixed_point` with `ImplicitAdjoint()` and its "
        "default linear solver (LU on the materialised Jacobian), vmapped over the "
        "batch (an n × n Jacobian per example); `optimistix-joint`: the batch as one "
        "(N, n) fixed point (an (N n) × (N n) Jacobian). CPU time: process CPU "
        "seconds (all threads) per call, less sensitive than wall time to other "
        "processes on a shared machine.\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
