"""rnnode's `find_fixed_points` against FixedPointFinder on a trained flip-flop.

    python experiments/fixed_point_finder_reference.py runs/flipflop
    python experiments/fixed_point_finder_reference.py runs/flipflop --starts 1024 --noise 0.5

FixedPointFinder (Golub & Sussillo, 2018, JOSS 3(31) 1003) is TensorFlow /
PyTorch code that is not published as a package, so the reference here is a
faithful re-implementation of its algorithm in NumPy + JAX, with its default
hyperparameters (`FixedPointFinderBase._default_hps`):

- the objective `q_b = ½‖f(h_b, x) - h_b‖²` per start, on the network's
  one-step map `f` (here Euler: `f(h) = h + dt F(h)`), minimised jointly
  (`method='joint'`: Adam on the mean of `q_b` over all starts, `epsilon=0.01`,
  β = 0.9, 0.999);
- the adaptive learning rate (`AdaptiveLearningRate`: initial 1.0, ×0.95 when the
  newest loss is worse than the 5 before it, ×1/0.95 after 5 monotone
  decreases, at most one change per 5 steps) and the adaptive gradient-norm
  clip (`AdaptiveGradNormClip`: the 95th percentile of the last 128 global
  gradient norms, starting at 1e12);
- termination when every start has `q < tol_q = 1e-12` or `|Δq| < tol_dq · lr`
  (`tol_dq = 1e-20`), or after `max_iters = 5000` iterations;
- then `get_unique` (two ends are one point if they differ by less than
  `tol_unique = 1e-3` in every coordinate, the smaller `q` kept) and the
  distance outliers (farther from the starts' centroid than 10 times the
  starts' mean distance to it); the Jacobian of the map at each point and its
  eigenvalues (stable when all `|λ| < 1`).

The same starts (visited test states plus Gaussian noise, as in FixedPointFinder's
flip-flop example: 1024 starts, noise 0.5) go to the reference and to rnnode's
`find_fixed_points` with `method="optimise"` and `method="newton"`. Every
reference point with `q < tol_q` must be found by rnnode (within 1e-3) with the
same number of unstable directions. Writes `RUN/analysis/fpf_comparison.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import rnnode as rn

TOL_Q, TOL_DQ, MAX_ITERS, TOL_UNIQUE, OUTLIER_SCALE = 1e-12, 1e-20, 5000, 1e-3, 10.0


def fixed_point_finder(model, x, starts) -> dict:
    """FixedPointFinder's joint optimisation and filtering (see the module
    docstring) on `model`'s one-step map under the constant input `x`."""

    def q_b(h):
        return 0.5 * jnp.sum((model.step(h, 0.0, x, x) - h) ** 2)

    @jax.jit
    def iterate(H, m, v, t, lr, clip):
        q, grad = jax.vmap(jax.value_and_grad(q_b))(H)
        grad = grad / H.shape[0]  # the gradient of the mean of q_b
        norm = jnp.sqrt(jnp.sum(grad**2))
        grad = grad * jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-300))
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        step = lr * jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)  # TF's Adam
        H = H - step * m / (jnp.sqrt(v) + 0.01)
        return H, m, v, q, norm

    H = jnp.asarray(starts)
    m, v = jnp.zeros_like(H), jnp.zeros_like(H)
    lr, clip, losses, norms, last_change = 1.0, 1e12, [], [], 0
    q_prev = None
    for it in range(1, MAX_ITERS + 2):
        H, m, v, q, norm = iterate(H, m, v, float(it), lr, clip)
        q = np.asarray(q)
        losses.append(float(np.mean(q)))
        norms.append(float(norm))
        used_lr = lr
        step = it - 1  # AdaptiveLearningRate.update at its step count
        if step >= 1 and step >= last_change + 5:
            window = losses[-6:]
            if all(window[-1] > w for w in window[:-1]):
                lr, last_change = lr * 0.95, step
            elif all(b < a for a, b in zip(window[:-1], window[1:], strict=True)):
                lr, last_change = lr / 0.95, step
        clip = min(float(np.percentile(norms[-128:], 95)), 1e12)
        if q_prev is not None:
            dq = np.abs(q - q_prev)
            if np.all((dq < TOL_DQ * used_lr) | (q < TOL_Q)):
                break
        q_prev = q
    # q at the final states, as FixedPoints stores it
    q = np.asarray(jax.vmap(q_b)(H))
    H = np.asarray(H)
    order = np.argsort(q, kind="stable")
    kept = []
    for i in order:  # get_unique: the smaller q of two within tol_unique
        if all(np.max(np.abs(H[i] - H[j])) >= TOL_UNIQUE for j in kept):
            kept.append(int(i))
    centroid = starts.mean(axis=0)
    scale = np.mean(np.linalg.norm(starts - centroid, axis=1))
    kept = [i for i in kept if np.linalg.norm(H[i] - centroid) < OUTLIER_SCALE * scale]
    J = np.asarray(
        jax.vmap(jax.jacfwd(lambda h: model.step(h, 0.0, x, x)))(jnp.asarray(H[kept]))
    )
    eig = np.linalg.eigvals(J) if kept else np.zeros((0, H.shape[1]))
    return {
        "points": H[kept],
        "q": q[kept],
        "unstable_dims": np.sum(np.abs(eig) > 1, axis=1),
        "iterations": it,
    }


def compare(reference: dict, fps: rn.analysis.FixedPoints, *, radius=1e-3) -> dict:
    """Which reference fixed points (`q < tol_q`) rnnode found, with the same
    number of unstable directions."""
    fixed = reference["q"] < TOL_Q
    ours = fps.points
    unstable = np.sum(fps.eigenvalues.real > 0, axis=1)
    found = same = 0
    for p, k in zip(
        reference["points"][fixed], reference["unstable_dims"][fixed], strict=True
    ):
        d = np.linalg.norm(ours - p, axis=1) if len(ours) else np.array([np.inf])
        j = int(np.argmin(d))
        if d[j] <= radius:
            found += 1
            same += int(unstable[j] == k)
    return {
        "reference_fixed_points": int(fixed.sum()),
        "reference_slow_points": int((~fixed).sum()),
        "found": found,
        "same_stability": same,
        "rnnode_points": len(fps),
        "rnnode_counts": {s: fps.stability.count(s) for s in rn.analysis.STABILITIES},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run", help="a trained flip-flop run directory")
    p.add_argument("--starts", type=int, default=1024)
    p.add_argument("--noise", type=float, default=0.5)
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    from rnnode.train import load_run

    model, _, task = load_run(args.run)
    dtype = jnp.result_type(model.init_state())
    xs = jnp.asarray(task.test.xs[:, : args.sequences], dtype=dtype)
    hs, _ = model.rollout(xs)
    rng = np.random.RandomState(args.seed)  # FixedPointFinder's sampling
    flat = np.asarray(hs).reshape(-1, model.state_size)
    starts = flat[rng.randint(flat.shape[0], size=args.starts)]
    starts = starts + args.noise * rng.randn(*starts.shape)
    x = jnp.zeros(model.input_size, dtype=dtype)

    t0 = time.perf_counter()
    reference = fixed_point_finder(model, x, starts)
    t_ref = time.perf_counter() - t0
    record = {
        "run": str(args.run),
        "num_starts": args.starts,
        "noise": args.noise,
        "reference": {
            "iterations": reference["iterations"],
            "wall_s": round(t_ref, 1),
        },
    }
    print(f"reference: {reference['iterations']} iterations, {t_ref:.1f} s")
    for method in ("optimise", "newton"):
        t0 = time.perf_counter()
        fps = rn.analysis.find_fixed_points(
            model, x, starts=starts, method=method, tol=[1e-6, 1e-8]
        )
        wall = time.perf_counter() - t0
        result = compare(reference, fps)
        result["wall_s"] = round(wall, 1)
        result["max_iterations"] = int(fps.candidate_iterations.max())
        record[method] = result
        print(f"{method}: {result}")
    out = Path(args.run) / "analysis" / "fpf_comparison.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
