"""Data-parallel sharding (`rnnode.train._sharding`).

Several devices are forced on the CPU in subprocesses
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`), since the device count is
fixed once JAX starts; the main process checks only the single-device path.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rnnode.train._sharding import (
    initialize_distributed,
    make_mesh,
    process_slice,
    replicate,
    shard_batch,
)

ROOT = Path(__file__).resolve().parents[1]


def _env(num_devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RNNODE_", "JAX_"))}
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _run(code: str, num_devices: int, *args: str, timeout: float = 900, **extra):
    """Run `code` in a fresh Python with `num_devices` CPU devices; return the
    JSON printed on its last output line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=_env(num_devices, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------ single device


def test_single_device_is_untouched():
    assert make_mesh(None) is None
    assert make_mesh(1) is None
    assert make_mesh("1") is None
    tree = {"x": np.ones((3, 4, 2)), "n": 3}
    assert shard_batch(None, tree) is tree
    assert replicate(None, tree) is tree


def test_make_mesh_errors():
    import jax

    n = len(jax.devices())
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        make_mesh(n + 1)
    with pytest.raises(ValueError, match="at least 1"):
        make_mesh(0)
    with pytest.raises(ValueError, match="'all'"):
        make_mesh("some")
    with pytest.raises(ValueError, match="'all'"):
        make_mesh(True)


def test_process_slice():
    assert process_slice(12, 0, 3) == slice(0, 4)
    assert process_slice(12, 2, 3) == slice(8, 12)
    assert process_slice(10, 0, 1) == slice(0, 10)
    assert process_slice(10, 0) == slice(0, 10)  # defaults: this single process
    covered = np.concatenate([np.arange(12)[process_slice(12, i, 4)] for i in range(4)])
    np.testing.assert_array_equal(covered, np.arange(12))
    with pytest.raises(ValueError, match="evenly"):
        process_slice(10, 0, 3)
    assert process_slice(10, 2, 3, drop_remainder=True) == slice(6, 9)
    with pytest.raises(ValueError):
        process_slice(10, 3, 3)


def test_initialize_distributed_single_process(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("RNNODE_", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROC")):
            monkeypatch.delenv(name)
    assert initialize_distributed() is False
    assert initialize_distributed(num_processes=1) is False
    monkeypatch.setenv("RNNODE_NUM_PROCESSES", "1")
    assert initialize_distributed() is False
    monkeypatch.setenv("RNNODE_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="coordinator address"):
        initialize_distributed(process_id=0)
    with pytest.raises(ValueError, match="process id"):
        initialize_distributed(coordinator_address="127.0.0.1:1234")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        initialize_distributed("127.0.0.1:1234", process_id=2)


# ------------------------------------------------------- four forced devices

FOUR_DEVICES = """
import json
import jax
jax.config.update("jax_enable_x64", True)
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

import rnnode
from rnnode.train._sharding import make_mesh, replicate, shard_batch

out = {"num_devices": len(jax.devices())}
mesh = make_mesh("all")
out["mesh_size"] = mesh.size
out["mesh_axes"] = list(mesh.axis_names)
out["mesh2_size"] = make_mesh(2).size
try:
    make_mesh(5)
except ValueError as e:
    out["too_many"] = str(e)

T, N, M, H = 12, 8, 2, 6
dkey, mkey = jr.split(jr.PRNGKey(0))
xs = np.asarray(jr.normal(dkey, (T, N, M)))
ys = np.sin(np.cumsum(xs[..., :1], axis=0) * 0.3)
weights = np.linspace(0.5, 1.5, T) / T
k1, k2 = jr.split(mkey)
model0 = rnnode.Model(
    rnnode.CTRNN(H, M, tau=2.0, key=k1), rnnode.RK4(0.5), rnnode.Linear(H, 1, key=k2)
)
opt = optax.adam(3e-2)

# The sharding of the data, and of the replicated parameters.
sx, sw = shard_batch(mesh, (xs, weights))
out["x_spec_ok"] = sx.sharding.spec == P(None, "batch")
out["x_shards"] = len(sx.addressable_shards)
out["x_shard_shapes"] = sorted({tuple(s.data.shape) for s in sx.addressable_shards})
out["x_shard_devices"] = len({s.device for s in sx.addressable_shards})
out["w_replicated"] = bool(sw.sharding.is_fully_replicated)
out["x_equal"] = bool(np.array_equal(np.asarray(sx), xs))
s0 = shard_batch(mesh, np.zeros((N, M)), axis=0)
out["axis0_spec_ok"] = s0.sharding.spec == P("batch")
out["axis0_shard_shape"] = list(s0.addressable_shards[0].data.shape)
for bad in [(np.zeros((T, 6, M)), 1), (np.zeros((7, M)), 0)]:
    try:
        shard_batch(mesh, {"xs": bad[0]}, axis=bad[1])
        out.setdefault("indivisible", []).append(None)
    except ValueError as e:
        out.setdefault("indivisible", []).append(str(e))

gradients = {"autodiff": rnnode.Autodiff()}
if hasattr(rnnode, "BPTT"):
    gradients["bptt"] = rnnode.BPTT(truncate=5, checkpoints=3)
if hasattr(rnnode, "RTRL"):
    gradients["rtrl"] = rnnode.RTRL()


def train(gradient, mesh, steps=5):
    model = replicate(mesh, model0)
    opt_state = replicate(mesh, opt.init(eqx.filter(model0, eqx.is_inexact_array)))
    data = shard_batch(mesh, (xs, ys, weights))

    @eqx.filter_jit
    def step(model, opt_state, data):
        x, y, w = data
        loss, grads = eqx.filter_value_and_grad(
            lambda m: rnnode.sequence_loss(m, x, y, weights=w, gradient=gradient)
        )(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = opt.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss

    # Compiled once ahead of time; the compiled step only accepts inputs placed
    # exactly as at compile time, so the loop also checks that the updated
    # parameters come back replicated.
    compiled = step.lower(model, opt_state, data).compile()
    hlo = compiled.compiled.as_text()
    losses = []
    for _ in range(steps):
        model, opt_state, loss = compiled(model, opt_state, data)
        losses.append(float(loss))
    leaves = jax.tree.leaves(eqx.filter((model, opt_state), eqx.is_array))
    return model, losses, hlo, leaves


for name, gradient in gradients.items():
    m1, l1, hlo1, _ = train(gradient, None)
    m4, l4, hlo4, leaves4 = train(gradient, mesh)
    p1 = jax.tree.leaves(eqx.filter(m1, eqx.is_inexact_array))
    p4 = jax.tree.leaves(eqx.filter(m4, eqx.is_inexact_array))
    out[name] = {
        "loss_single": l1,
        "loss_sharded": l4,
        "max_param_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(p1, p4)),
        "max_param_change": max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(p1, jax.tree.leaves(eqx.filter(model0, eqx.is_inexact_array)))
        ),
        "all_replicated": all(
            x.sharding.is_fully_replicated and len(x.sharding.device_set) == 4
            for x in leaves4
        ),
        "allreduce_sharded": "all-reduce" in hlo4,
        "allreduce_single": "all-reduce" in hlo1,
    }
print(json.dumps(out))
"""


def test_four_devices():
    """One subprocess with 4 forced CPU devices runs all the checks (one test,
    so that `pytest -n` does not start it once per worker)."""
    four = _run(FOUR_DEVICES, 4)
    _check_mesh(four)
    _check_batch_is_split(four)
    _check_indivisible_batch_raises(four)
    _check_sharded_training_matches_single_device(four)


def _check_mesh(four):
    assert four["num_devices"] == 4
    assert four["mesh_size"] == 4 and four["mesh_axes"] == ["batch"]
    assert four["mesh2_size"] == 2
    assert "only 4 exist" in four["too_many"]


def _check_batch_is_split(four):
    assert four["x_spec_ok"]
    assert four["x_shards"] == 4 and four["x_shard_devices"] == 4
    assert four["x_shard_shapes"] == [[12, 2, 2]]  # (T, N/4, M)
    assert four["x_equal"]
    assert four["w_replicated"]  # (T,) weights have no batch axis
    assert four["axis0_spec_ok"] and four["axis0_shard_shape"] == [2, 2]


def _check_indivisible_batch_raises(four):
    for msg in four["indivisible"]:
        assert msg is not None and "not divisible by the 4 devices" in msg


def _check_sharded_training_matches_single_device(four):
    names = [k for k in ("autodiff", "bptt", "rtrl") if k in four]
    assert "autodiff" in names
    for name in names:
        r = four[name]
        assert r["max_param_change"] > 1e-3, name  # training did move the parameters
        np.testing.assert_allclose(
            r["loss_sharded"], r["loss_single"], rtol=1e-12, atol=0
        )
        assert r["max_param_diff"] < 1e-12, (name, r["max_param_diff"])
        assert r["all_replicated"], name  # params and optimiser state stay replicated
        assert r["allreduce_sharded"] and not r["allreduce_single"], name


# ------------------------------------------- the training loop, `devices: all`

TRAIN_END_TO_END = """
import json, os, sys
import equinox as eqx
import jax
import numpy as np
from rnnode.train import load_run, train, validate_config

out = {"num_devices": len(jax.devices())}
for devices in ["all", 1]:
    raw = {
        "task": {"name": "sine", "options": {"num_steps": 20, "num_train": 16, "num_test": 8}},
        "model": {"dynamics": "ctrnn", "hidden_size": 8},
        "optim": {"name": "adam", "lr": 1e-2},
        "train": {"steps": 6, "batch_size": 8, "eval_every": 6, "checkpoint_every": 6,
                  "steps_per_call": 3, "dtype": "float64"},
        "devices": devices,
        "out_dir": os.path.join(sys.argv[1], f"run-{devices}"),
    }
    summary = train(validate_config(raw), progress=False)
    model, _, _ = load_run(summary["run_dir"])
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    out[str(devices)] = {
        **{
            k: summary[k]
            for k in ("status", "steps", "train_loss", "test_loss", "environment")
        },
        "params": [np.asarray(x).ravel().tolist() for x in leaves],
    }
print(json.dumps(out))
"""


def test_train_devices_all_matches_one_device(tmp_path):
    """`rnnode.train.train` with `devices: all` (4 forced CPU devices) gives the
    same losses and final parameters as `devices: 1`."""
    out = _run(TRAIN_END_TO_END, 4, str(tmp_path))
    assert out["num_devices"] == 4
    sharded, single = out["all"], out["1"]
    for r in (sharded, single):
        assert r["status"] == "finished" and r["steps"] == 6
    # the run records (and says) how many devices took part
    assert (sharded["environment"]["devices"], single["environment"]["devices"]) == (
        4,
        1,
    )
    assert (
        sharded["environment"]["processes"] == single["environment"]["processes"] == 1
    )
    np.testing.assert_allclose(sharded["train_loss"], single["train_loss"], rtol=1e-12)
    np.testing.assert_allclose(sharded["test_loss"], single["test_loss"], rtol=1e-12)
    assert len(sharded["params"]) == len(single["params"]) > 0
    for a, b in zip(sharded["params"], single["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


# ------------------------------------------ two processes on loopback (multi-host)

TWO_PROCESSES = """
import json, os, sys
import jax
jax.config.update("jax_enable_x64", True)
from rnnode.train._sharding import initialize_distributed

# The coordinator address, process count and id come from RNNODE_* variables.
assert initialize_distributed(initialization_timeout=180) is True

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

import rnnode
from rnnode.train._sharding import (
    barrier, global_batch, is_main_process, make_mesh, process_slice, replicate,
    shard_batch, to_numpy,
)

out = {
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "num_devices": len(jax.devices()),
    "num_local_devices": len(jax.local_devices()),
    "is_main": is_main_process(),
}
mesh = make_mesh("all")
out["mesh_size"] = mesh.size

T, N, M, H = 10, 8, 2, 5
dkey, mkey = jr.split(jr.PRNGKey(1))
xs = np.asarray(jr.normal(dkey, (T, N, M)))  # the global data (known here for checks)
ys = np.tanh(np.cumsum(xs[..., 1:], axis=0) * 0.3)
rows = process_slice(N)
out["rows"] = [rows.start, rows.stop]

# Each process hands over only its own rows; the global array spans both.
gx, gy = global_batch(mesh, (xs[:, rows], ys[:, rows]))
out["global_shape"] = list(gx.shape)
out["spec_ok"] = gx.sharding.spec == P(None, "batch")
out["fully_addressable"] = gx.is_fully_addressable
out["local_shard_shapes"] = [list(s.data.shape) for s in gx.addressable_shards]
out["local_rows_match"] = bool(
    np.array_equal(np.concatenate([np.asarray(s.data) for s in gx.addressable_shards], 1),
                   xs[:, rows])
)
total = jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(mesh, P()))(gx)
out["jit_sum"] = float(total)
psum = jax.jit(jax.shard_map(
    lambda x: jax.lax.psum(jnp.sum(x), "batch"),
    mesh=mesh, in_specs=P(None, "batch"), out_specs=P(),
))(gx)
out["psum"] = float(psum)
out["expected_sum"] = float(np.sum(xs))
out["gathered_equal"] = bool(np.array_equal(to_numpy(gx), xs))
out["shard_batch_equal"] = bool(np.array_equal(to_numpy(shard_batch(mesh, xs)), xs))

# A few optimiser steps over the 4 devices of both processes vs. one local device.
k1, k2 = jr.split(mkey)
model0 = rnnode.Model(
    rnnode.CTRNN(H, M, tau=2.0, key=k1), rnnode.RK4(0.5), rnnode.Linear(H, 1, key=k2)
)
opt = optax.adam(3e-2)

@eqx.filter_jit
def step(model, opt_state, x, y):
    loss, grads = eqx.filter_value_and_grad(lambda m: rnnode.sequence_loss(m, x, y))(model)
    updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state, loss

def train(model, x, y, mesh):
    model = replicate(mesh, model)
    opt_state = replicate(mesh, opt.init(eqx.filter(model, eqx.is_inexact_array)))
    losses = []
    for _ in range(4):
        model, opt_state, loss = step(model, opt_state, x, y)
        losses.append(float(loss))
    return model, losses

m_dist, l_dist = train(model0, gx, gy, mesh)
out["loss_dist"] = l_dist
p_dist = to_numpy(jax.tree.leaves(eqx.filter(m_dist, eqx.is_inexact_array)))
out["params_dist"] = [p.ravel().tolist() for p in p_dist]
if is_main_process():  # the single-device reference, on one local device
    m_local, out["loss_local"] = train(model0, jnp.asarray(xs), jnp.asarray(ys), None)
    p_local = jax.tree.leaves(eqx.filter(m_local, eqx.is_inexact_array))
    out["max_param_diff"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(p_local, p_dist)
    )

# Checkpoint rule: process 0 writes, every process reads after a barrier.
path = os.path.join(sys.argv[1], "params.npz")
if is_main_process():
    np.savez(path, *p_dist)
barrier("checkpoint-written")
with np.load(path) as f:
    loaded = [f[k] for k in sorted(f.files, key=lambda s: int(s.split("_")[1]))]
out["checkpoint_equal"] = all(np.array_equal(a, b) for a, b in zip(loaded, p_dist))
barrier("checkpoint-read")
print(json.dumps(out), flush=True)
jax.distributed.shutdown()
"""

_UNSUPPORTED = (
    "aren't implemented on the CPU",
    "not implemented on the CPU",
    "jax_cpu_collectives_implementation",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_loopback(tmp_path):
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES, str(tmp_path)],
            env=_env(
                2,
                RNNODE_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                RNNODE_NUM_PROCESSES="2",
                RNNODE_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=900)
            results.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(rc != 0 for rc, _, _ in results):
        errors = "\n".join(err for _, _, err in results)
        if any(s in errors for s in _UNSUPPORTED) and "Traceback" in errors:
            reason = next(
                line
                for line in errors.splitlines()
                if any(s in line for s in _UNSUPPORTED)
            )
            pytest.skip(
                f"this JAX's CPU backend has no multi-process collectives: {reason}"
            )
        raise AssertionError(f"two-process run failed:\n{errors}")
    outs = [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in results]
    assert [o["process_index"] for o in outs] == [0, 1]
    assert [o["is_main"] for o in outs] == [True, False]
    assert [o["rows"] for o in outs] == [[0, 4], [4, 8]]
    for o in outs:
        assert o["process_count"] == 2 and o["num_devices"] == 4
        assert o["num_local_devices"] == 2 and o["mesh_size"] == 4
        assert o["global_shape"] == [10, 8, 2] and o["spec_ok"]
        assert not o["fully_addressable"]
        assert o["local_shard_shapes"] == [[10, 2, 2], [10, 2, 2]]
        assert o["local_rows_match"] and o["gathered_equal"] and o["shard_batch_equal"]
        np.testing.assert_allclose(o["jit_sum"], o["expected_sum"], rtol=1e-12)
        np.testing.assert_allclose(o["psum"], o["expected_sum"], rtol=1e-12)
        assert o["checkpoint_equal"]
    # Training over both processes' devices matches one device, and the
    # replicated parameters are identical on both processes.
    np.testing.assert_allclose(outs[0]["loss_dist"], outs[0]["loss_local"], rtol=1e-12)
    assert outs[0]["max_param_diff"] < 1e-12
    assert outs[0]["loss_dist"] == outs[1]["loss_dist"]
    assert outs[0]["params_dist"] == outs[1]["params_dist"]


_TINY_RUN = [
    "sine",
    "model.hidden_size=8",
    "task.options={num_steps: 20, num_train: 16, num_test: 8}",
    "train.batch_size=8",
    "train.eval_every=3",
    "train.checkpoint_every=3",
    "train.steps_per_call=3",
    "train.dtype=float64",
    "optim.schedule=constant",  # sine.yaml's schedule depends on train.steps
]


def _two_process_cli(args: list[str], cwd: Path) -> None:
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rnnode", *args],
            env=_env(
                2,
                RNNODE_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                RNNODE_NUM_PROCESSES="2",
                RNNODE_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)


@pytest.mark.slow
def test_cli_two_processes_train_and_resume(tmp_path):
    """`rnnode train … devices=all distributed=true` on two processes (2 CPU
    devices each), stopped after 3 steps and resumed to 6 on both processes,
    ends where one device training 6 steps straight ends."""
    _two_process_cli(
        [
            "train",
            "-q",
            *_TINY_RUN,
            "train.steps=3",
            "devices=all",
            "distributed=true",
            "out_dir=multi",
        ],
        tmp_path,
    )
    assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()) == [
        "step-00000003.ckpt"
    ]
    _two_process_cli(["resume", "-q", "multi", "train.steps=6"], tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rnnode",
            "train",
            "-q",
            *_TINY_RUN,
            "train.steps=6",
            "out_dir=single",
        ],
        env=_env(1),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    multi = json.loads((tmp_path / "multi" / "summary.json").read_text())
    single = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert multi["steps"] == single["steps"] == 6
    assert (multi["environment"]["devices"], multi["environment"]["processes"]) == (
        4,
        2,
    )
    assert (single["environment"]["devices"], single["environment"]["processes"]) == (
        1,
        1,
    )
    np.testing.assert_allclose(multi["train_loss"], single["train_loss"], rtol=1e-12)
    np.testing.assert_allclose(multi["test_loss"], single["test_loss"], rtol=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi", "single"]
