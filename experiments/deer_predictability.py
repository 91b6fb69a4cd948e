"""Predictability enables parallelisation: the mean-field experiment of Gonzalez,
Buchanan, Zhao & Linderman (NeurIPS 2025), on this CPU.

The network `s_t = W tanh(s_{t-1}) + u_t`, `W ~ N(0, g²/n)`, `n = 100`, is
stable (a negative largest Lyapunov exponent) for `g < 1` and chaotic for
`g > 1` (Sompolinsky, Crisanti & Sommers, 1988). Here it is an rnnode `CTRNN`
(current form, `τ = 1`) stepped by `Euler(dt=1)`, which is exactly that map,
with `U = I`, `b = 0` and inputs `u_t ~ N(0, 0.1²)`, in float64.

For each gain `g` and length `T`: the largest Lyapunov exponent along the
trajectory (`rnnode.analysis.lyapunov_exponents`, per step) and the number of
`rnnode.DEER()` (undamped Newton) iterations to the default tolerance
(`max_t |h_t − f(h_{t-1})| ≤ eps^0.75 (1 + max|f|)`), capped at `--cap`
iterations to fit the machine (a capped or diverged solve is marked). The
prediction of the paper: a bounded number of iterations for `g < 1`, a number
growing with `T` (up to `T`) for `g > 1`.

Writes `docs/results/deer_predictability.md` (the table) and
`docs/deer_predictability.png` (iterations against `T`, per `g`; and the
exponent against `g`).

    python experiments/deer_predictability.py            # ~15 min on a loaded 2-core CPU
    python experiments/deer_predictability.py --quick    # a smoke run
"""

import argparse
import math
import platform
import re
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import rnnode as rn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mean_field(n: int, g: float, key) -> rn.Model:
    """`s_t = W tanh(s_{t-1}) + u_t` as a CTRNN stepped by `Euler(dt=1)`."""
    k1, k2 = jr.split(key)
    dyn = rn.CTRNN(n, n, key=k1)
    W = g * jr.normal(k2, (n, n)) / math.sqrt(n)
    dyn = eqx.tree_at(lambda d: (d.W, d.U, d.b), dyn, (W, jnp.eye(n), jnp.zeros(n)))
    return rn.Model(dyn, rn.Euler(dt=1.0))


def run(n, gains, lengths, cap, chaotic_max_T, seed):
    rows = []
    key = jr.PRNGKey(seed)
    for g in gains:
        kw, kx = jr.split(jr.fold_in(key, int(round(100 * g))))
        model = mean_field(n, g, kw)
        for T in lengths:
            if g > 1 and T > chaotic_max_T:
                continue
            xs = 0.1 * jr.normal(kx, (T, n))
            lyap = float(rn.analysis.lyapunov_exponents(model, xs, k=1).per_step[0])
            method = rn.DEER(max_steps=min(T, cap))
            solve = jax.jit(lambda xs, m=method: rn.parallel_rollout(model, xs, m))
            t = time.perf_counter()
            sol = solve(xs)
            sol.value.block_until_ready()
            wall = time.perf_counter() - t
            ref, _ = model.rollout(xs)
            err = float(jnp.max(jnp.abs(sol.value - ref)))
            outcome = {0: "converged", 1: "cap reached", 2: "diverged"}[
                int(sol.result._value)
            ]
            rows.append(
                dict(
                    g=g,
                    T=T,
                    lyap=lyap,
                    iters=int(sol.num_steps),
                    cap=min(T, cap),
                    outcome=outcome,
                    err=err,
                    wall=wall,
                )
            )
            r = rows[-1]
            print(
                f"g={g:4.2f} T={T:5d} λ={lyap:+.4f} iters={r['iters']:4d} "
                f"({outcome}) err={err:.1e} {wall:.1f}s",
                flush=True,
            )
    return rows


def write(rows, args, elapsed):
    out = ROOT / "docs" / "results"
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# DEER iterations against predictability (Gonzalez et al., 2025)",
        "",
        f"`s_t = W tanh(s_(t-1)) + u_t`, n = {args.n}, W ~ N(0, g²/n), u_t ~ "
        f"N(0, 0.1²), float64, seed {args.seed}; `rnnode.DEER()` from a zero "
        f"guess, default tolerance, at most min(T, {args.cap}) iterations. "
        f"λ: the largest Lyapunov exponent per step along the trajectory. "
        f"err: max |h − sequential rollout|. Machine: {platform.machine()} CPU, "
        f"2 cores shared with other jobs (loaded), {elapsed / 60:.0f} min in all.",
        "",
        "| g | T | λ (per step) | DEER iterations | outcome | err | wall (s, incl. compile) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['g']:.2f} | {r['T']} | {r['lyap']:+.3f} | {r['iters']} | "
            f"{r['outcome']} | {r['err']:.1e} | {r['wall']:.1f} |"
        )
    name = "deer_predictability_quick" if args.quick else "deer_predictability"
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    gains = sorted({r["g"] for r in rows})
    cmap = plt.get_cmap("coolwarm")
    for i, g in enumerate(gains):
        rs = [r for r in rows if r["g"] == g]
        ok = [r for r in rs if r["outcome"] != "diverged"]
        c = cmap(i / max(1, len(gains) - 1))
        ax1.plot(
            [r["T"] for r in ok],
            [r["iters"] for r in ok],
            "o-",
            color=c,
            label=f"g = {g:.2f}",
        )
        for r in rs:
            if r["outcome"] == "cap reached":
                ax1.plot(r["T"], r["iters"], "x", color="k", ms=8)
            if r["outcome"] == "diverged":  # overflowed: drawn at the cap
                ax1.plot(r["T"], r["cap"], "*", color=c, ms=12)
    Ts = np.array(sorted({r["T"] for r in rows}))
    ax1.plot(Ts, Ts, "k--", lw=0.8, label="T (the worst case)")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("sequence length T")
    ax1.set_ylabel("DEER iterations (x: cap reached, *: diverged)")
    ax1.legend(fontsize=7)
    ax1.set_title("Newton iterations to tolerance")
    Tmax = max(r["T"] for r in rows if r["g"] == gains[0])
    for g in gains:
        rs = [r for r in rows if r["g"] == g]
        ax2.plot(g, rs[-1]["lyap"], "o", color="C0")
    ax2.axhline(0.0, color="k", lw=0.8, ls="--")
    ax2.set_xlabel("gain g")
    ax2.set_ylabel("largest Lyapunov exponent (per step)")
    ax2.set_title(f"predictability (longest T per g, ≤ {Tmax})")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / f"{name}.png", dpi=110)


def read_table(path: Path) -> list[dict]:
    """The rows of a table written by `write` (to redraw the figure)."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 7 or not cells[0][0].isdigit():
            continue
        g, T, lyap, iters, outcome, err, wall = cells
        cap = int(re.search(r"min\(T, (\d+)\)", path.read_text()).group(1))
        rows.append(
            dict(
                g=float(g),
                T=int(T),
                lyap=float(lyap),
                iters=int(iters),
                cap=min(int(T), cap),
                outcome=outcome,
                err=float(err),
                wall=float(wall),
            )
        )
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument(
        "--gains", type=float, nargs="+", default=[0.5, 0.8, 1.0, 1.2, 1.5, 2.0]
    )
    p.add_argument("--lengths", type=int, nargs="+", default=[100, 300, 1000, 3000])
    p.add_argument("--cap", type=int, default=100, help="most DEER iterations")
    p.add_argument(
        "--chaotic-max-T",
        type=int,
        default=1000,
        help="longest T run for g > 1 (they take ~cap iterations)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--replot",
        action="store_true",
        help="redraw the figure from the written table only",
    )
    args = p.parse_args()
    if args.replot:
        table = ROOT / "docs" / "results" / "deer_predictability.md"
        rows = read_table(table)
        text = table.read_text()
        write(rows, args, 60 * float(re.search(r"(\d+) min in all", text).group(1)))
        return
    if args.quick:
        args.n, args.gains, args.lengths, args.cap = 16, [0.5, 1.5], [20, 50], 50
    start = time.perf_counter()
    rows = run(
        args.n, args.gains, args.lengths, args.cap, args.chaotic_max_T, args.seed
    )
    write(rows, args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
