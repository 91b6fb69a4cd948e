"""Fixed points of a trained network (Sussillo & Barak, 2013): train a CTRNN on the
K-bit flip-flop task, then find, classify and plot its fixed points under zero
input on a PCA projection of its trajectories.

    python experiments/fixed_points.py                  # -> runs/fixed_points/
    python experiments/fixed_points.py --bits 3 --train-steps 1500 --out /tmp/fp

The task: each of `K` input channels carries occasional ±1 pulses; the matching
output must hold the sign of the last pulse. A network that solves it needs `2^K`
stable fixed points (one per memory), with saddles between them whose unstable
directions route the flips. Writes `fixed_points.png`, `training.png` and
`summary.json` (loss, counts by stability, eigenvalues).
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
import optax  # noqa: E402

import rnnode as rn  # noqa: E402
from rnnode import analysis as an  # noqa: E402


def flip_flop(key, bits: int, steps: int, batch: int, p: float = 0.05):
    """Inputs `(T, B, K)` of ±1 pulses (one at t = 0 on every channel, then with
    probability `p`), targets `(T, B, K)`: the sign of the last pulse."""
    k1, k2 = jr.split(key)
    pulse = jr.bernoulli(k1, p, (steps, batch, bits)).at[0].set(True)
    sign = jnp.where(jr.bernoulli(k2, 0.5, (steps, batch, bits)), 1.0, -1.0)
    xs = jnp.where(pulse, sign, 0.0)

    def hold(prev, x):
        y = jnp.where(x != 0, x, prev)
        return y, y

    _, ys = jax.lax.scan(hold, jnp.zeros((batch, bits)), xs)
    return xs, ys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/fixed_points", help="output directory")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--hidden", type=int, default=24)
    p.add_argument("--steps", type=int, default=60, help="sequence length")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--starts", type=int, default=256, help="fixed-point starts")
    p.add_argument(
        "--noise",
        type=float,
        default=1.0,
        help="std of the noise added to trajectory states to make the starts; "
        "large enough to reach the saddles between the memories",
    )
    p.add_argument("--method", default="optimise", choices=("optimise", "newton"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    K, n = args.bits, args.hidden
    key = jr.PRNGKey(args.seed)
    kmodel, kread, kdata, ktest, kfp = jr.split(key, 5)

    model = rn.Model(
        rn.CTRNN(n, K, tau=1.0, gain=1.2, key=kmodel),
        rn.Euler(0.5),
        rn.Linear(n, K, key=kread),
    )
    opt = optax.adam(args.lr)
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def train_step(model, opt_state, key):
        xs, ys = flip_flop(key, K, args.steps, args.batch)
        loss, grads = eqx.filter_value_and_grad(rn.sequence_loss)(model, xs, ys)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = opt.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss

    t_start = time.time()
    losses = []
    for i, k in enumerate(jr.split(kdata, args.train_steps)):
        model, opt_state, loss = train_step(model, opt_state, k)
        losses.append(float(loss))
        if i % 200 == 0 or i == args.train_steps - 1:
            print(f"step {i:5d}  loss {losses[-1]:.4g}", flush=True)
    train_time = time.time() - t_start

    xs, ys = flip_flop(ktest, K, args.steps * 2, 32)
    hs, outs = model.rollout(xs)
    test_mse = float(jnp.mean((outs - ys) ** 2))
    accuracy = float(jnp.mean(jnp.sign(outs) == ys))

    t_start = time.time()
    fps = an.find_fixed_points(
        model,
        jnp.zeros(K),
        num_starts=args.starts,
        key=kfp,
        states=hs,
        noise=args.noise,
        method=args.method,
    )
    find_time = time.time() - t_start
    counts = {s: fps.stability.count(s) for s in sorted(set(fps.stability))}
    readouts = [np.asarray(model.readout(jnp.asarray(r))) for r in fps.points]
    summary = {
        "bits": K,
        "hidden": n,
        "train_steps": args.train_steps,
        "final_train_loss": losses[-1],
        "test_mse": test_mse,
        "test_sign_accuracy": accuracy,
        "train_seconds": train_time,
        "fixed_point_seconds": find_time,
        "num_starts": args.starts,
        "num_converged": fps.num_converged,
        "num_fixed_points": len(fps.points),
        "counts": counts,
        "fixed_points": [
            {
                "stability": s,
                "speed": float(v),
                "readout": np.round(o, 3).tolist(),
                "leading_eigenvalues": [
                    [float(e.real), float(e.imag)] for e in eig[:3]
                ],
            }
            for s, v, o, eig in zip(
                fps.stability, fps.speeds, readouts, fps.eigenvalues, strict=True
            )
        ],
    }
    fig = an.plot_fixed_points(
        fps, hs[:, :12], title=f"{K}-bit flip-flop CTRNN: fixed points at x = 0"
    )
    fig.savefig(out / "fixed_points.png", dpi=120)
    fig = an.plot_norm_vs_lag(
        {"training loss": (np.arange(len(losses)), np.asarray(losses))},
        title="training",
        xlabel="step",
        ylabel="loss (MSE)",
    )
    fig.savefig(out / "training.png", dpi=120)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        json.dumps({k: v for k, v in summary.items() if k != "fixed_points"}, indent=1)
    )
    print(f"wrote {out}/fixed_points.png, training.png, summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
