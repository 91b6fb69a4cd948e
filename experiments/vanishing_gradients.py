"""The eigen-story of vanishing and exploding gradients.

    python experiments/vanishing_gradients.py                # -> runs/vanishing_gradients/
    python experiments/vanishing_gradients.py --out /tmp/vg --hidden 64 --steps 200

1. `W = Q Λ Q⁻¹` (a random non-orthogonal `Q`, or orthogonal with `--orthogonal`;
   real eigenvalues `Λ`) scaled to spectral radius ρ = 0.9, 1.0, 1.1: `‖W^t‖`
   against `t` (`power_norms.png`).
2. The gradient `‖∂l_T/∂h_k‖` of a last-step loss against the lag `T - k` for an
   Elman RNN with that `W`, linear and tanh (`elman_gradients.png`), from BPTT's
   adjoint trajectory.
3. The LSTM's cell-state path: `∂C_t/∂C_{t-1}` (holding `h_{t-1}`) is `diag(f_t)`,
   so `∂C_T/∂C_k` along it is `Π f`; with the forget gate biased high it stays
   near 1 over long lags where the Elman RNN's gradient has vanished
   (`lstm_cell_path.png`).

Numbers (norms at a few lags and fitted per-step log-slopes) go to `summary.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import rnnode as rn  # noqa: E402
from rnnode import analysis as an  # noqa: E402

RADII = (0.9, 1.0, 1.1)


def eigen_matrix(key, n: int, radius: float, *, orthogonal: bool) -> np.ndarray:
    """`W = Q Λ Q⁻¹` with spectral radius `radius` (`Q` orthogonal: `W` symmetric)."""
    kq, kl = jr.split(key)
    Q = np.asarray(jr.normal(kq, (n, n))) / np.sqrt(n) + np.eye(n)
    if orthogonal:
        Q = np.linalg.qr(Q)[0]
    lam = np.asarray(jr.uniform(kl, (n,), minval=-1.0, maxval=1.0))
    lam = lam / np.max(np.abs(lam))  # the largest has modulus exactly 1
    return radius * (Q @ np.diag(lam) @ np.linalg.inv(Q))


def elman(key, W: np.ndarray, m: int, activation: str) -> rn.Model:
    n = W.shape[0]
    k1, k2 = jr.split(key)
    cell = rn.ElmanRNN(n, m, activation=activation, key=k1)
    cell = eqx.tree_at(lambda c: (c.W, c.b), cell, (jnp.asarray(W), jnp.zeros(n)))
    return rn.Model(cell, readout=rn.Linear(n, 1, key=k2))


def slope(lags, norms, lo: int, hi: int) -> float:
    """The fitted per-step growth rate of `log norm` between two lags."""
    lags, norms = np.asarray(lags), np.asarray(norms)
    sel = (lags >= lo) & (lags <= hi) & (norms > 0) & np.isfinite(norms)
    if sel.sum() < 2:
        return float("nan")
    return float(np.polyfit(lags[sel], np.log(norms[sel]), 1)[0])


def at_lags(lags, norms, which) -> dict[str, float]:
    lags, norms = np.asarray(lags), np.asarray(norms)
    return {str(int(w)): float(norms[lags == w][0]) for w in which if w <= lags[-1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/vanishing_gradients", help="output dir")
    p.add_argument("--hidden", type=int, default=32, help="hidden size n")
    p.add_argument("--steps", type=int, default=100, help="sequence length T")
    p.add_argument("--input-scale", type=float, default=0.5, help="std of x_t")
    p.add_argument("--forget-bias", type=float, default=3.0, help="LSTM forget bias")
    p.add_argument(
        "--orthogonal", action="store_true", help="orthogonal Q (a symmetric W)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, T, m = args.hidden, args.steps, 4
    kW, kx, ky, km, kl = jr.split(jr.PRNGKey(args.seed), 5)
    xs = args.input_scale * jr.normal(kx, (T, m))
    ys = jr.normal(ky, (T, 1))
    lag_marks = (1, 10, 25, 50, T // 2, T - 1)
    summary: dict = {
        "hidden": n,
        "steps": T,
        "radii": list(RADII),
        "orthogonal_Q": args.orthogonal,
    }

    # 1. Powers of W.
    power_curves, elman_curves = {}, {}
    summary["power_norms"], summary["elman"] = {}, {}
    for rho in RADII:
        W = eigen_matrix(kW, n, rho, orthogonal=args.orthogonal)
        norms = an.matrix_power_norms(W, T)
        lags = np.arange(T + 1)
        power_curves[f"ρ = {rho}"] = (lags, norms)
        summary["power_norms"][str(rho)] = {
            "at": at_lags(lags, norms, lag_marks),
            "log_slope": slope(lags, norms, T // 4, T),
            "log_rho": float(np.log(rho)),
        }
        # 2. Gradients of an Elman RNN with this W, linear and tanh.
        for act in ("identity", "tanh"):
            model = elman(km, W, m, act)
            lags_g, g = an.gradient_norm_vs_lag(model, xs, ys)
            g = np.asarray(g) / float(g[0])
            label = f"{'linear' if act == 'identity' else 'tanh'}, ρ = {rho}"
            elman_curves[label] = (lags_g, g)
            hs, _ = model.rollout(xs)
            summary["elman"][label] = {
                "relative_gradient_at": at_lags(lags_g, g, lag_marks),
                "log_slope": slope(lags_g, g, T // 4, T - 1),
                "mean_abs_state": float(jnp.mean(jnp.abs(hs))),
            }
    fig = an.plot_norm_vs_lag(
        power_curves, title="‖W^t‖₂, W = QΛQ⁻¹", xlabel="t", ylabel="‖W^t‖₂"
    )
    fig.savefig(out / "power_norms.png", dpi=120)
    fig = an.plot_norm_vs_lag(
        elman_curves,
        title="Elman RNN: ‖∂l_T/∂h_k‖ / ‖∂l_T/∂h_T‖",
        ylabel="relative gradient norm",
    )
    fig.savefig(out / "elman_gradients.png", dpi=120)

    # 3. The LSTM's cell-state path against the Elman RNN at ρ = 1.
    lstm_curves = {}
    summary["lstm"] = {}
    for bias in (0.0, args.forget_bias):
        k1, k2 = jr.split(kl)
        model = rn.Model(
            rn.LSTM(n, m, forget_bias=bias, key=k1), readout=rn.Linear(n, 1, key=k2)
        )
        Js = np.asarray(an.step_jacobians(model, xs))
        f = np.stack([np.diag(J[n:, n:]) for J in Js])  # forget gates f_t
        # Π_{s=k+1}^{T} f_s against the lag T - k: each unit's cell path.
        log_path = np.concatenate([[np.zeros(n)], np.cumsum(np.log(f[::-1]), axis=0)])
        path = np.exp(log_path)
        prods = np.asarray(an.jacobian_products(model, xs, anchor="end"))
        cc = np.linalg.norm(prods[:, n:, n:], ord=2, axis=(1, 2))
        lags_g, g = an.gradient_norm_vs_lag(model, xs, ys)
        g = np.asarray(g) / float(g[0])
        lags = np.arange(T + 1)
        tag = f"forget bias {bias:g}"
        lstm_curves[f"LSTM {tag}: mean Π f"] = (lags, path.mean(axis=1))
        lstm_curves[f"LSTM {tag}: ‖∂C_T/∂C_k‖"] = (lags, cc)
        lstm_curves[f"LSTM {tag}: ‖∂l_T/∂(h,C)_k‖ (rel.)"] = (lags_g, g)
        summary["lstm"][tag] = {
            "mean_forget_gate": float(f.mean()),
            "mean_cell_path_at": at_lags(lags, path.mean(axis=1), lag_marks),
            "cell_jacobian_norm_at": at_lags(lags, cc, lag_marks),
            "relative_gradient_at": at_lags(lags_g, g, lag_marks),
            "gradient_log_slope": slope(lags_g, g, T // 4, T - 1),
        }
    lstm_curves["Elman tanh ρ = 1.0 (rel.)"] = elman_curves["tanh, ρ = 1.0"]
    fig = an.plot_norm_vs_lag(
        lstm_curves, title="LSTM cell-state path vs Elman", ylabel="norm"
    )
    fig.axes[0].legend(fontsize=7)
    fig.savefig(out / "lstm_cell_path.png", dpi=120)

    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}/power_norms.png, elman_gradients.png, lstm_cell_path.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
