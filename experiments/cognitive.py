"""Train a noisy E/I rate network on a cognitive task with BPTT and measure it
as a neuroscientist would: NeuroGym's accuracy, the psychometric curve (for
`context`, one per context against the relevant and the irrelevant
coherence), the slopes.

    python experiments/cognitive.py decision              # ~ minutes on 2 cores
    python experiments/cognitive.py context --steps 3000

The network: `CTRNN(form="rate", activation="relu", excitatory=0.8,
autapses=False, noise_std=σ, observe="excitatory")` (Song, Yang & Wang 2016),
τ = 100 ms, Euler at the task's dt, float32, Adam, a fresh noise realisation
per batch drawn from the seed. Writes `docs/results/cognitive_<task>.json` and
the figure `docs/cognitive_<task>.png`.
"""

from __future__ import annotations

import argparse
import json
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

ROOT = Path(__file__).resolve().parent.parent

TASKS = {
    "decision": {
        "timing": {"fixation": 100, "stimulus": 600, "delay": 0, "decision": 200},
        "num_train": 4096,
        "num_test": 2048,
    },
    "context": {
        "timing": {
            "fixation": 200,
            "stimulus": 750,
            "delay": {"uniform": [100, 300]},
            "decision": 200,
        },
        "num_train": 4096,
        "num_test": 2048,
    },
    "delay_match": {
        "timing": {
            "fixation": 100,
            "sample": 300,
            "delay": {"uniform": [200, 600]},
            "test": 300,
            "decision": 200,
        },
        "num_train": 4096,
        "num_test": 2048,
    },
    "go_nogo": {
        "timing": {"fixation": 0, "stimulus": 300, "delay": 300, "decision": 300},
        "num_train": 2048,
        "num_test": 1024,
    },
    "ready_set_go": {
        "timing": {
            "fixation": 100,
            "ready": 80,
            "measure": {"uniform": [400, 800]},
            "set": 80,
        },
        "num_train": 4096,
        "num_test": 1024,
    },
}


def build_model(task, hidden: int, noise: float, key) -> rn.Model:
    k1, k2 = jr.split(key)
    dyn = rn.CTRNN(
        hidden,
        task.input_size,
        tau=100.0,
        form="rate",
        activation="relu",
        gain=1.5,
        noise_std=noise,
        excitatory=0.8,
        autapses=False,
        observe="excitatory",
        key=k1,
    )
    readout = rn.Linear(dyn.observe_size, task.output_size, key=k2)
    return rn.Model(dyn, rn.Euler(task.dt), readout)


GRADIENTS = {"bptt": rn.BPTT, "rflo": rn.RFLO, "eprop": rn.EProp}


def train(task, model, *, steps, batch, lr, seed, log, gradient="bptt"):
    split = task.train
    xs = jnp.asarray(split.xs, jnp.float32)
    ys = jnp.asarray(split.ys)
    ws = jnp.asarray(split.weights, jnp.float32)
    model = jax.tree.map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, model
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    schedule = optax.cosine_decay_schedule(lr, steps, alpha=0.05)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    state = opt.init(params)
    N = split.num_sequences

    @jax.jit
    def step(params, state, key):
        kb, kn = jr.split(key)
        idx = jr.choice(kb, N, (batch,), replace=False)

        def loss(p):
            m = eqx.combine(p, static)
            return rn.sequence_loss(
                m,
                xs[:, idx],
                ys[:, idx],
                loss=rn.cross_entropy,
                weights=ws[:, idx],
                gradient=GRADIENTS[gradient](),
                key=kn,  # a fresh realisation of the private noise per batch
            )

        value, g = jax.value_and_grad(loss)(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, value

    key = jr.PRNGKey(seed)
    t0 = time.time()
    for i in range(steps):
        params, state, value = step(params, state, jr.fold_in(key, i))
        if (i + 1) % max(steps // 20, 1) == 0:
            log(f"step {i + 1}: loss {float(value):.4f} ({time.time() - t0:.0f} s)")
    return eqx.combine(params, static), time.time() - t0


def evaluate(task, model, seed: int):
    """The test split's metrics, with the private noise on (a realisation the
    training never saw) as in the experiments, and without."""
    split = task.test
    xs = jnp.asarray(split.xs, jnp.float32)
    out = {}
    for name, key in (("noisy", jr.PRNGKey(10_000 + seed)), ("noise_free", None)):
        _, outs = jax.jit(lambda m, k: m.rollout(xs, key=k))(model, key)
        outs = np.asarray(outs, dtype=np.float64)
        out[name] = task.metrics(outs, split)
        if name == "noisy":
            noisy_outs = outs
    return out, noisy_outs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--gradient",
        choices=sorted(GRADIENTS),
        default="bptt",
        help="bptt (exact); rflo / eprop: their approximate gradients summed "
        "over each sequence (the online rules, updated once a batch)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    a = p.parse_args(argv)
    task = make_task(a.task, TASKS[a.task], seed=a.seed)
    model = build_model(task, a.hidden, a.noise, jr.PRNGKey(a.seed))
    model, seconds = train(
        task,
        model,
        steps=a.steps,
        batch=a.batch,
        lr=a.lr,
        seed=a.seed,
        log=lambda s: print(s, flush=True),
        gradient=a.gradient,
    )
    metrics, outs = evaluate(task, model, a.seed)
    (a.out / "results").mkdir(parents=True, exist_ok=True)
    result = {
        "task": a.task,
        "options": TASKS[a.task],
        "hidden": a.hidden,
        "noise_std": a.noise,
        "excitatory": 0.8,
        "steps": a.steps,
        "batch": a.batch,
        "lr": a.lr,
        "seed": a.seed,
        "gradient": a.gradient,
        "train_seconds": round(seconds, 1),
        "machine": "shared 2-core CPU, loaded",
        "test": metrics,
    }
    name = a.task if a.gradient == "bptt" else f"{a.task}_{a.gradient}"
    (a.out / "results" / f"cognitive_{name}.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )
    rn.train.plot_psychometric(a.out / f"cognitive_{name}.png", task, outs)
    print(json.dumps(metrics["noisy"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
