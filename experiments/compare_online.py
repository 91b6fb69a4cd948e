"""Online learning rules compared on the Add task: exact RTRL, SnAp-1, SnAp-2,
UORO, KF-RTRL, RFLO, e-prop, and truncated BPTT as the usual baseline.

Every method trains the same Elman network (from the same initialisation) on
the same stream of the Add task (Pitis 2016; Marschall, Cho & Savin 2020):
`y_t ~ Bernoulli(0.5 + 0.5 x_{t-5} - 0.25 x_{t-9})`, one weight update per time
step (truncated BPTT: one per chunk of `--truncate` steps, the gradient of the
chunk's summed loss, the state carried across chunks), plain SGD, float32. The
online methods run through their public online API, `init(model, key=...)` and
`step(model, state, x, y, ...)`.

Reports, per method: the final cross-entropy on a held-out test stream (the
trained network run over it once) against the task's three floors (nothing
learnt 0.662, the first dependency 0.519, both 0.454 nats), the mean training
loss over the last tenth of the stream, steps per second (wall clock and CPU
time), and memory: the bytes of the method's online state (its trace of
`∂h/∂θ`) and the compiled working memory of one update. Writes
`OUT/compare_online.md` (the table), `OUT/curves.png` (learning curves, one
plot) and `OUT/results.json`.

    python experiments/compare_online.py                      # 20 000 steps, n = 32
    python experiments/compare_online.py --steps 500 --hidden 8 --out /tmp/x  # tiny
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import rnnode as rn
from rnnode.data import make_task

FLOORS = ("floor_nothing", "floor_first", "floor_both")


def online_methods(truncate: int) -> dict:
    """Name → strategy; a method this installation of rnnode lacks maps to `None`
    (reported as missing, not run). `"TBPTT"` is handled apart (not online)."""
    names = ("RTRL", "SnAp-1", "SnAp-2", "UORO", "KF-RTRL", "RFLO", "e-prop")
    make = getattr(rn, "make_gradient", None)  # the one table of methods
    methods = {name: None if make is None else make(name) for name in names}
    methods[f"TBPTT({truncate})"] = "tbptt"
    return methods


def tree_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def online_run(method, model, opt, stream, *, chunk, key):
    """Train online over `stream = (xs, ys, ws)` in compiled chunks of `chunk`
    steps; returns the per-step losses, the final model, timings and memory."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def update(params, opt_state, state, x, y, w):
        m = eqx.combine(params, static)
        state, loss, grads = method.step(
            m, state, x, y, loss=rn.cross_entropy, weight=w
        )
        grads = eqx.filter(grads, eqx.is_inexact_array)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, state, loss

    def run_chunk(params, opt_state, state, xs, ys, ws):
        def body(carry, data):
            *carry, loss = update(*carry, *data)
            return tuple(carry), loss

        return jax.lax.scan(body, (params, opt_state, state), (xs, ys, ws))

    # stochastic methods (UORO, KF-RTRL) draw from a key in their online state
    stochastic = getattr(method, "stochastic", False)
    state = method.init(model, key=key) if stochastic else method.init(model)
    carry = (params, opt.init(params), state)
    xs, ys, ws = stream
    one = jax.jit(update).lower(*carry, xs[0], ys[0], ws[0]).compile()
    temp = one.memory_analysis().temp_size_in_bytes
    return _chunked(run_chunk, carry, stream, chunk, static, tree_bytes(state), temp)


def tbptt_run(truncate, model, opt, stream, *, chunk):
    """Truncated BPTT online: the stream in pieces of `truncate` steps, one
    update per piece with the exact gradient of its summed loss, the state
    carried over (no gradient flows into the previous piece)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    xs, ys, ws = stream
    T = (xs.shape[0] // truncate) * truncate
    pieces = [a[:T].reshape(-1, truncate, *a.shape[1:]) for a in (xs, ys, ws)]

    def piece_loss(params, h, x, y, w):
        m = eqx.combine(params, static)
        hs, outs = m.rollout(x, h0=h)
        losses = w * jax.vmap(rn.cross_entropy)(outs, y)
        return jnp.sum(losses), (hs[-1], losses)

    def update(params, opt_state, h, x, y, w):
        grads, (h, losses) = jax.grad(piece_loss, has_aux=True)(params, h, x, y, w)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, h, losses

    def run_chunk(params, opt_state, h, xs, ys, ws):
        def body(carry, data):
            *carry, losses = update(*carry, *data)
            return tuple(carry), losses

        carry, losses = jax.lax.scan(body, (params, opt_state, h), (xs, ys, ws))
        return carry, losses.reshape(-1)

    h0 = model.init_state()
    carry = (params, opt.init(params), h0)
    one = jax.jit(update).lower(*carry, *(p[0] for p in pieces)).compile()
    temp = one.memory_analysis().temp_size_in_bytes
    return _chunked(
        run_chunk,
        carry,
        tuple(pieces),
        max(1, chunk // truncate),
        static,
        tree_bytes(h0),
        temp,
    )


def _chunked(run_chunk, carry, stream, chunk, static, state_bytes, temp):
    n = stream[0].shape[0]
    size = min(chunk, n)
    compiled = jax.jit(run_chunk).lower(*carry, *(a[:size] for a in stream)).compile()
    starts = list(range(0, n - size + 1, size))
    losses = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for s in starts:
        carry, loss = compiled(*carry, *(a[s : s + size] for a in stream))
        losses.append(loss)
    jax.block_until_ready(carry)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    losses = np.concatenate([np.asarray(x) for x in losses])
    return dict(
        losses=losses,
        model=eqx.combine(carry[0], static),
        steps=losses.size,
        wall=wall,
        cpu=cpu,
        state_bytes=state_bytes,
        temp_bytes=temp,
    )


def test_cross_entropy(model, task):
    xs = jnp.asarray(task.test.xs, jnp.float32)
    _, outs = eqx.filter_jit(lambda m, xs: m.rollout(xs))(model, xs)
    return task.metrics(np.asarray(outs), task.test)["cross_entropy"]


def smooth(losses, scored, window):
    """The mean loss over each window of `window` steps (unscored steps left
    out), at the window's last step."""
    k = len(losses) // window
    total = losses[: k * window].reshape(k, window)
    s = scored[: k * window].reshape(k, window)
    return window * np.arange(1, k + 1), total.sum(1) / np.maximum(s.sum(1), 1)


def plot_curves(results, floors, path, window, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    for i, (name, r) in enumerate(results.items()):
        steps, curve = smooth(r["losses"], r["scored"], window)
        ax.plot(steps, curve, lw=1.2, label=name, color=f"C{i}")
    for (floor, value), ls in zip(floors.items(), (":", "--", "-."), strict=True):
        ax.axhline(value, color="k", lw=0.8, ls=ls)
        ax.annotate(floor, (0, value), fontsize="small", va="bottom")
    ax.set_xlabel("time step (= weight update, TBPTT: one per chunk)")
    ax.set_ylabel(f"training cross-entropy (nats, mean over {window} steps)")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--steps", type=int, default=20_000, help="online steps")
    p.add_argument("--hidden", type=int, default=32, help="units of the Elman RNN")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate")
    p.add_argument("--truncate", type=int, default=10, help="TBPTT chunk length")
    p.add_argument("--chunk", type=int, default=1000, help="steps per compiled call")
    p.add_argument("--window", type=int, default=None, help="smoothing window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of: RTRL,SnAp-1,SnAp-2,UORO,KF-RTRL,RFLO,"
        "e-prop,TBPTT (default: all)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/compare_online"))
    args = p.parse_args(argv)

    task = make_task(
        "add", {"num_steps": args.steps, "num_train": 1, "num_test": 1}, seed=args.seed
    )
    floors = {k: task.info["floors"][k] for k in FLOORS}
    lag = task.info["scored_from_step"]
    xs = jnp.asarray(task.train.xs[:, 0], jnp.float32)
    ys = jnp.asarray(task.train.ys[:, 0])
    ws = jnp.asarray(task.train.weights > 0, jnp.float32)  # a_t = 1 when scored
    stream = (xs, ys, ws)
    scored = np.asarray(ws) > 0
    k1, k2 = jr.split(jr.PRNGKey(args.seed))
    model = rn.Model(
        rn.ElmanRNN(args.hidden, 2, key=k1), readout=rn.Linear(args.hidden, 2, key=k2)
    )
    opt = optax.sgd(args.lr)
    methods = online_methods(args.truncate)
    if args.methods:
        wanted = args.methods.split(",")
        unknown = [w for w in wanted if w != "TBPTT" and w not in methods]
        if unknown:
            p.error(f"--methods: unknown {unknown}; choose from {list(methods)}")
        methods = {
            k: v
            for k, v in methods.items()
            if k in wanted or (v == "tbptt" and "TBPTT" in wanted)
        }

    dev = jax.devices()[0]
    print(
        f"Add task (t1=5, t2=9), Elman n={args.hidden}, {args.steps} steps, SGD "
        f"lr={args.lr}, float32; {dev.platform} ({platform.processor() or platform.machine()}), "
        f"{len(os.sched_getaffinity(0))} cores usable; jax {jax.__version__}",
        flush=True,
    )
    results, missing, failed = {}, [], {}
    for name, method in methods.items():
        if method is None:
            missing.append(name)
            print(f"{name:10s} not in this version of rnnode", flush=True)
            continue
        try:
            if method == "tbptt":
                r = tbptt_run(args.truncate, model, opt, stream, chunk=args.chunk)
            else:
                r = online_run(method, model, opt, stream, chunk=args.chunk, key=k2)
        except ValueError as e:  # a method that does not apply to this network
            failed[name] = str(e).splitlines()[0]
            print(f"{name:10s} not applicable: {failed[name]}", flush=True)
            continue
        r["scored"] = scored[: r["steps"]]
        last = slice(r["steps"] - max(r["steps"] // 10, 1), r["steps"])
        r["train_last"] = float(
            r["losses"][last].sum() / max(r["scored"][last].sum(), 1)
        )
        r["test"] = test_cross_entropy(r.pop("model"), task)
        results[name] = r
        print(
            f"{name:10s} test CE {r['test']:.4f}  train CE (last 10%) "
            f"{r['train_last']:.4f}  {r['steps'] / r['wall']:8.0f} steps/s "
            f"(CPU {r['steps'] / r['cpu']:8.0f})  state {r['state_bytes'] / 1024:9.1f} KiB  "
            f"step temp {r['temp_bytes'] / 1024:9.1f} KiB",
            flush=True,
        )

    args.out.mkdir(parents=True, exist_ok=True)
    window = args.window or max(args.steps // 50, 1)
    plot_curves(
        results,
        floors,
        args.out / "curves.png",
        window,
        f"Add task online, Elman n = {args.hidden}, SGD lr = {args.lr}",
    )
    lines = [
        f"Add task (t1 = 5, t2 = 9, first {lag} steps unscored), Elman n = "
        f"{args.hidden}, {args.steps} online steps, SGD lr = {args.lr}, float32, "
        f"seed {args.seed}; test stream of {task.test.num_steps} steps. Floors: "
        + ", ".join(f"{k.removeprefix('floor_')} {v:.3f}" for k, v in floors.items())
        + " nats.",
        "",
        "| method | test CE | vs floors | train CE (last 10%) | steps/s (wall) "
        "| steps/s (CPU) | online state (KiB) | step temp (KiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        below = [k.removeprefix("floor_") for k, v in floors.items() if r["test"] <= v]
        where = f"below {below[-1]}" if below else "above nothing"
        lines.append(
            f"| {name} | {r['test']:.3f} | {where} | {r['train_last']:.3f} | "
            f"{r['steps'] / r['wall']:.0f} | {r['steps'] / r['cpu']:.0f} | "
            f"{r['state_bytes'] / 1024:.1f} | {r['temp_bytes'] / 1024:.1f} |"
        )
    for name in missing:
        lines.append(f"| {name} | not in this version of rnnode |")
    for name, why in failed.items():
        lines.append(f"| {name} | not applicable: {why} |")
    lines += [
        "",
        "Command: `python experiments/compare_online.py --steps "
        f"{args.steps} --hidden {args.hidden} --lr {args.lr} --truncate "
        f"{args.truncate} --seed {args.seed}`",
    ]
    text = "\n".join(lines) + "\n"
    (args.out / "compare_online.md").write_text(text)
    summary = {
        name: {k: v for k, v in r.items() if k not in ("losses", "scored")}
        for name, r in results.items()
    }
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "floors": floors,
                "methods": summary,
                "missing": missing,
                "not_applicable": failed,
            },
            indent=1,
        )
        + "\n"
    )
    print("\n" + text)
    print(f"(also in {args.out}/compare_online.md, curves.png, results.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
