"""A neural network as an ODE solver, against explicit Euler at several steps.

    python experiments/nn_ode_solver.py                # -> runs/nn_ode_solver/
    python experiments/nn_ode_solver.py --damping 0 --out /tmp/nn_ode

The oscillator `x'' + γ x' + ω₀² x = 0`, `x(0) = x0`, `x'(0) = v0` on `[0, 2π]`
(γ = 0: the harmonic oscillator `A cos(ω₀ t) + B sin(ω₀ t)`), solved
(a) by `rnnode.solve_ode_nn` with the trial solution
`g(t) = x0 + v0 t + (t/2π)² N(t)` trained on the squared residual at collocation
points, and (b) by `rnnode.Euler` at `dt = 0.1, 0.01, 0.001` (a `Model` of
`rnnode.DampedOscillator` rolled out with zero force). `solutions.png` shows the
solutions and the absolute errors against the closed form; `summary.json` the
maximum errors, the network's residual and the costs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import rnnode as rn  # noqa: E402


def exact(t, x0, v0, gamma, omega0):
    """The closed form of the underdamped (or undamped) oscillator."""
    wd = np.sqrt(omega0**2 - gamma**2 / 4)
    B = (v0 + gamma / 2 * x0) / wd
    return np.exp(-gamma * t / 2) * (x0 * np.cos(wd * t) + B * np.sin(wd * t))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/nn_ode_solver", help="output directory")
    p.add_argument("--damping", type=float, default=0.3, help="γ (0: harmonic)")
    p.add_argument("--omega0", type=float, default=1.0)
    p.add_argument("--x0", type=float, default=1.0)
    p.add_argument("--v0", type=float, default=0.5)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0 <= args.damping < 2 * args.omega0:
        p.error("the closed form here needs 0 <= damping < 2 omega0 (underdamped)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gamma, w0, x0, v0 = args.damping, args.omega0, args.x0, args.v0
    t1 = 2 * np.pi
    t_eval = np.linspace(0.0, t1, 2001)
    ref = exact(t_eval, x0, v0, gamma, w0)

    start = time.time()
    sol = rn.solve_ode_nn(
        lambda t, x, dx: -gamma * dx - w0**2 * x,
        (0.0, t1),
        x0,
        order=2,
        v0=v0,
        hidden=args.hidden,
        key=jr.PRNGKey(args.seed),
    )
    nn_x = np.asarray(sol(t_eval))
    nn_seconds = time.time() - start
    summary = {
        "problem": {"damping": gamma, "omega0": w0, "x0": x0, "v0": v0, "t1": t1},
        "nn": {
            "max_error": float(np.max(np.abs(nn_x - ref))),
            "mean_squared_residual": float(sol.residual),
            "parameters": int(
                sum(a.size for a in jax.tree.leaves(eqx.filter(sol.net, eqx.is_array)))
            ),
            "seconds": nn_seconds,
        },
        "euler": {},
    }

    fig = Figure(figsize=(7, 7), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(t_eval, ref, "k", lw=2.5, alpha=0.35, label="exact")
    ax1.plot(t_eval, nn_x, "C3", lw=1.2, label="neural network")
    ax2.semilogy(t_eval, np.abs(nn_x - ref) + 1e-17, "C3", label="neural network")
    oscillator = rn.DampedOscillator(mass=1.0, damping=gamma, stiffness=w0**2)
    for i, dt in enumerate((0.1, 0.01, 0.001)):
        steps = int(round(t1 / dt))
        model = rn.Model(oscillator, rn.Euler(dt), initial_state=jnp.array([x0, v0]))
        start = time.time()
        hs, _ = model.rollout(jnp.zeros((steps, 1)))
        ts = dt * np.arange(steps + 1)
        xs = np.concatenate([[x0], np.asarray(hs[:, 0])])
        seconds = time.time() - start
        err = np.abs(xs - exact(ts, x0, v0, gamma, w0))
        summary["euler"][str(dt)] = {
            "steps": steps,
            "max_error": float(err.max()),
            "seconds": seconds,
        }
        ax1.plot(ts, xs, f"C{i}", lw=1, ls="--", label=f"Euler dt={dt}")
        ax2.semilogy(ts, err + 1e-17, f"C{i}", lw=1, ls="--", label=f"Euler dt={dt}")
    ax1.set_ylabel("x(t)")
    ax1.legend(fontsize=8)
    ax1.set_title(f"x'' + {gamma:g} x' + {w0**2:g} x = 0")
    ax2.set_xlabel("t")
    ax2.set_ylabel("|error|")
    ax2.grid(True, which="both", alpha=0.3)
    fig.savefig(out / "solutions.png", dpi=120)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}/solutions.png, summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
