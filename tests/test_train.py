"""The training loop end to end: files, falling loss, compile-once, bit-identical
resume, corrupt checkpoints, NaN handling, and a short run of every task config."""

import contextlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jaxlib
import numpy as np
import optax
import pytest

import rnnode
from rnnode.cli import main
from rnnode.train import (
    CheckpointWarning,
    _checkpoint as ckpt,
    builtin_configs,
    load_config,
    load_run,
    train,
    validate_config,
)
from rnnode.train._environment import _git_state, environment
from rnnode.train._run import _fresh_dir
from rnnode.train._steps import _TRACES
from rnnode.train.config import GRADIENTS as NEEDS

# A few-second version of the quickstart (30 steps, checkpoints at 15 and 30).
TINY = [
    "task.options.num_steps=20",
    "task.options.num_train=8",
    "task.options.num_test=4",
    "model.hidden_size=8",
    "train.batch_size=4",
    "train.steps=30",
    "train.steps_per_call=4",
    "train.eval_every=10",
    "train.checkpoint_every=15",
    "optim.lr=0.02",
    "optim.schedule=cosine",
]


def _losses(run_dir):
    rows = (Path(run_dir) / "train_loss.csv").read_text().splitlines()[1:]
    return np.array([float(r.split(",")[1]) for r in rows])


def _params(run_dir):
    model, _, _ = load_run(run_dir)
    return jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))


def _metrics(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    for r in records:
        r.pop("time_s")
    return records


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """`rnnode train` (the quickstart, made tiny) run in a fresh directory:
    `(run_dir, stdout, stderr, exit code, how often the chunk was traced)`."""
    cwd = tmp_path_factory.mktemp("quickstart")
    out, err = io.StringIO(), io.StringIO()
    traces = _TRACES["chunk"]
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["train", *TINY])
    finally:
        os.chdir(old)
    run = cwd / "runs" / "quickstart"
    return run, out.getvalue(), err.getvalue(), rc, _TRACES["chunk"] - traces


def test_quickstart_end_to_end(quickstart):
    run, out, err, rc, traces = quickstart
    assert rc == 0, err
    assert traces == 1, "the training chunk must compile once"
    assert f"Results in {Path('runs') / 'quickstart'}/" in out
    assert "step/s" in err and "loss=" in err  # the progress bar
    for name in [
        "config.yaml",
        "metrics.jsonl",
        "train_loss.csv",
        "summary.json",
        "plots/loss.png",
        "plots/predictions.png",
    ]:
        assert (run / name).is_file(), name
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [30, 15]
    losses = _losses(run)
    assert len(losses) == 30 and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < losses[:5].mean(), "the loss must fall"
    records = _metrics(run)
    assert [r["step"] for r in records] == [10, 20, 30]
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert {"mse", "baseline_mse"} <= set(records[-1]["val"])
    # evaluations during training score the validation split; the test split
    # is scored once, into the summary
    assert not any("test" in r or "test_loss" in r for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 30
    assert summary["val_loss"] == pytest.approx(records[-1]["val_loss"])
    assert summary["test_loss"] != summary["val_loss"] and summary["test"]["mse"] > 0
    env = summary["environment"]
    assert env["versions"] == {
        "rnnode": rnnode.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "equinox": eqx.__version__,
        "diffrax": diffrax.__version__,
        "optax": optax.__version__,
    }
    assert env["backend"] == jax.default_backend()
    assert env["device_kind"] == jax.devices()[0].device_kind
    assert (env["devices"], env["processes"]) == (1, 1)
    assert (env["dtype"], env["seed"]) == ("float32", 0)
    assert env["git_commit"] is None  # the run's working directory is no checkout
    # ... and `rnnode train` says so first
    first, second = err.splitlines()[:2]
    assert first == ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    assert second.endswith("1 device, 1 process; float32, seed 0; not a git checkout")
    # the saved config is the resolved one, and validates again
    saved = load_config(run / "config.yaml")
    assert saved.model.integrator.dt == 0.1 and saved.train.steps == 30
    assert saved.out_dir == str(Path("runs") / "quickstart")


def test_run_dirs_are_not_overwritten(tmp_path):
    base = tmp_path / "run"
    assert _fresh_dir(base) == base
    base.mkdir()
    assert _fresh_dir(base) == base  # empty: reused
    (base / "x").write_text("")
    assert _fresh_dir(base) == tmp_path / "run-2"


def _kill_and_resume(cfg, at: int, monkeypatch) -> Path:
    """Train `cfg`, killed right after its checkpoint at step `at`, then resume it
    from the command line; the run directory."""
    out = Path(cfg.out_dir)
    real_save = ckpt.save_checkpoint

    def save_then_die(run_dir, step, *args, **kwargs):
        path = real_save(run_dir, step, *args, **kwargs)
        if step == at:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [at]
    assert main(["resume", str(out), "-q"]) == 0
    return out


def _assert_same_run(out, reference):
    for a, b in zip(_params(out), _params(reference), strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(_losses(out), _losses(reference))
    assert _metrics(out) == _metrics(reference)


def test_killed_run_resumes_bit_identically(quickstart, tmp_path, monkeypatch):
    cfg = load_config(None, [*TINY, f"out_dir={tmp_path / 'run'}"])
    out = _kill_and_resume(cfg, 15, monkeypatch)
    _assert_same_run(out, quickstart[0])


# An online run of a sparse rate-form CTRNN on short sine streams (a restart of
# the streams every 5 steps), with adamw's weight decay.
ONLINE_SPARSE = [
    "task.options.num_steps=5",
    "task.options.num_train=4",
    "task.options.num_test=2",
    "model.hidden_size=6",
    "model.form=rate",
    "model.density=0.5",
    "train.online=true",
    "train.batch_size=2",
    "train.steps=12",
    "train.steps_per_call=3",
    "train.eval_every=6",
    "train.checkpoint_every=6",
    "optim.name=adamw",
    "optim.weight_decay=0.1",
]


def test_online_sparse_rate_network_resumes_bit_identically(tmp_path, monkeypatch):
    """An online method other than RTRL trains through `train.online`; a stochastic
    one (UORO) keeps its keys in the checkpointed online state, so a killed and
    resumed run is bit-identical to an uninterrupted one. The network stays
    sparse."""
    args = [*ONLINE_SPARSE, "gradient.name=uoro"]
    ref = tmp_path / "ref"
    summary = train(load_config(None, [*args, f"out_dir={ref}"]), progress=False)
    assert summary["status"] == "finished" and summary["steps"] == 12
    model, cfg, _ = load_run(ref)
    dyn = model.dynamics
    assert cfg.model.form == dyn.form == "rate" and dyn.mask is not None
    assert dyn.mask.density == 0.5
    W = np.asarray(dyn.W)
    assert np.all(W[~dyn.mask.array] == 0) and np.all(W[dyn.mask.array] != 0)
    cfg = load_config(None, [*args, f"out_dir={tmp_path / 'run'}"])
    _assert_same_run(_kill_and_resume(cfg, 6, monkeypatch), ref)


def test_online_layer_local_on_one_lru_trains_like_rtrl(tmp_path):
    """`gradient.name: layer_local` trains online through `train.online`; on one
    LRU it is exact, so the run ends with the parameters of online exact RTRL."""
    runs = {}
    for name in ("rtrl", "layer_local"):
        raw = {
            "task": {
                "name": "sine",
                "options": {"num_steps": 5, "num_train": 4, "num_test": 2},
            },
            "model": {"dynamics": "lru", "hidden_size": 4},
            "gradient": {"name": name},
            "train": {
                "online": True,
                "batch_size": 2,
                "steps": 6,
                "steps_per_call": 3,
                "eval_every": 6,
                "checkpoint_every": 6,
            },
            "out_dir": str(tmp_path / name),
        }
        assert train(validate_config(raw), progress=False)["status"] == "finished"
        runs[name] = tmp_path / name
    first = _params(runs["rtrl"])
    for a, b in zip(first, _params(runs["layer_local"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert max(float(np.max(np.abs(np.asarray(a)))) for a in first) > 0


def test_eval_falls_back_from_a_corrupt_checkpoint(quickstart, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(quickstart[0], run)
    (step30, last), (step15, _) = ckpt.list_checkpoints(run)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) - 100])  # truncated, as by a crash
    with pytest.warns(CheckpointWarning, match="truncated.*using the previous one"):
        assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "step 15" in out and "mse" in out and "baseline_mse" in out
    assert "trained with rnnode " in out and "evaluated with rnnode " in out
    result = json.loads((run / "eval.json").read_text())
    assert result["step"] == 15
    trained = json.loads((run / "summary.json").read_text())["environment"]
    assert result["trained_environment"] == trained
    assert result["environment"]["versions"] == trained["versions"]


def test_environment_records_the_git_commit(tmp_path):
    """The commit of the working directory's checkout, and whether tracked files
    changed since; `None` outside a checkout."""
    assert environment(dtype="float64", seed=3)["git_commit"] in (None, _git_head())
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("1")
    for args in (["init", "-q"], ["add", "a.txt"], ["commit", "-q", "-m", "one"]):
        _git(repo, *args)
    head = _git(repo, "rev-parse", "HEAD")
    assert len(head) == 40
    assert _git_state(str(repo)) == (head, False)
    (repo / "a.txt").write_text("2")
    assert _git_state(str(repo)) == (head, True)
    (repo / "sub").mkdir()
    assert _git_state(str(repo / "sub")) == (head, True)
    assert _git_state(str(tmp_path)) == (None, None)


def _git(repo, *args):
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _git_head():
    try:
        return _git(os.getcwd(), "rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return None


def test_checkpoint_files_detect_damage(tmp_path):
    state = {"a": np.arange(5.0), "b": np.ones((2, 3), np.float32)}
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {k: v * step for k, v in state.items()})
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 2]  # keep 2
    path = ckpt.checkpoint_path(tmp_path, 3)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.read_header(path)
    with pytest.warns(CheckpointWarning, match="corrupt.*step-00000002"):
        header, loaded = ckpt.load_latest(tmp_path, state)
    assert header["step"] == 2
    np.testing.assert_array_equal(loaded["a"], state["a"] * 2)
    path.write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="not an rnnode checkpoint"):
        ckpt.read_header(path)
    assert not list(tmp_path.glob("checkpoints/.*tmp*")), "no temporary files left"


def test_nan_loss_stops_with_message_and_keeps_checkpoint(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    # the learning rate grows 1e30-fold per step: step 1 is fine, then it blows up
    rc = main(
        [
            "train",
            *TINY,
            "optim.name=sgd",
            "optim.lr=1e-3",
            "optim.schedule.name=exponential",
            "optim.schedule.decay_rate=1e30",
            "optim.schedule.decay_steps=1",
            "train.checkpoint_every=1",
            "train.eval_every=100",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 3
    assert "Traceback" not in err
    assert "rnnode: error: training stopped at step" in err
    assert "the last good checkpoint is" in err
    run = tmp_path / "runs" / "quickstart"
    found = ckpt.list_checkpoints(run)
    assert found, "the checkpoints before the failure are kept"
    header, _ = ckpt.read_header(found[0][1])
    assert header["step"] >= 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["environment"]["dtype"] == "float32"


def test_analyse_command_writes_into_the_run(quickstart, capsys):
    analysis = pytest.importorskip("rnnode.analysis")
    if not hasattr(analysis, "run_analysis"):
        pytest.skip("rnnode.analysis.run_analysis is not available yet")
    run = quickstart[0]
    what = "jacobian_spectrum"
    assert main(["analyse", str(run), "--what", what, "--sequences", "1"]) == 0
    assert f"Results in {run / 'analysis'}/" in capsys.readouterr().out
    assert (run / "analysis" / f"{what}.json").is_file()
    assert (run / "analysis" / f"{what}.png").is_file()
    assert main(["analyse", str(run), "--what", "nonsense"]) == 2
    assert "unknown analysis 'nonsense'" in capsys.readouterr().err


# Tiny versions of each task config: (overrides, whether the loss must fall).
COMMON = [
    "train.steps=6",
    "train.eval_every=3",
    "train.checkpoint_every=6",
    "train.steps_per_call=3",
]
SMALL = {
    "oscillator_fit": [
        "task.options.num_steps=20",
        "task.options.num_train=4",
        "task.options.num_test=2",
        "train.batch_size=4",
    ],
    "oscillator_online": [
        "task.options.num_steps=4",
        "task.options.num_train=2",
        "task.options.num_test=2",
        "train.batch_size=2",
    ],
    "oscillator_ctrnn": [
        "task.options.num_steps=20",
        "task.options.num_train=4",
        "task.options.num_test=2",
        "train.batch_size=4",
        "model.hidden_size=8",
    ],
    "linear_example": [
        "task.options.num_steps=10",
        "task.options.num_train=4",
        "task.options.num_test=2",
        "train.batch_size=4",
    ],
    "sine": [
        "task.options.num_steps=20",
        "task.options.num_train=4",
        "task.options.num_test=2",
        "train.batch_size=4",
        "model.hidden_size=8",
    ],
    "adding": [
        "task.options.num_steps=10",
        "task.options.num_train=8",
        "task.options.num_test=4",
        "train.batch_size=8",
        "model.hidden_size=8",
    ],
    "copy": [
        "task.options.length=2",
        "task.options.delay=2",
        "task.options.num_train=8",
        "task.options.num_test=4",
        "train.batch_size=8",
        "model.hidden_size=8",
    ],
    "digits": [
        "task.options.num_train=32",
        "task.options.num_test=16",
        "train.batch_size=32",
        "model.hidden_size=8",
    ],
    "copy_lru": [
        "task.options.length=2",
        "task.options.delay=2",
        "task.options.num_train=8",
        "task.options.num_test=4",
        "train.batch_size=8",
        "model.width=8",
        "model.layers=[{dynamics: lru, hidden_size: 4, options: {parallel: true}}]",
        "optim.lr=0.01",
    ],
    "copy_lstm": [
        "task.options.length=2",
        "task.options.delay=2",
        "task.options.num_train=8",
        "task.options.num_test=4",
        "train.batch_size=8",
        "model.hidden_size=8",
        "optim.lr=0.01",
    ],
    "digits_lru": [
        "task.options.num_train=32",
        "task.options.num_test=16",
        "train.batch_size=32",
        "model.width=8",
        "model.layers=[{dynamics: lru, hidden_size: 4}, {dynamics: lru, hidden_size: 4}]",
        "gradient.name=layer_local",
        "optim.lr=0.01",
    ],
    "digits_lstm": [
        "task.options.num_train=32",
        "task.options.num_test=16",
        "train.batch_size=32",
        "model.hidden_size=8",
        "optim.lr=0.01",
    ],
    "sunspots": [
        "task.options.num_steps=10",
        "task.options.warmup=2",
        "task.options.stride=4",
        "train.batch_size=64",
        "model.hidden_size=8",
    ],
    "add_online": [
        "task.options.t1=1",
        "task.options.t2=2",
        "task.options.num_steps=40",
        "task.options.num_train=2",
        "task.options.num_test=2",
        "train.batch_size=2",
        "model.hidden_size=8",
        "optim.lr=0.1",
    ],
    "steady_state": [
        "task.options.num_train=16",
        "task.options.num_test=8",
        "train.batch_size=16",
        "model.hidden_size=8",
    ],
    "flipflop": [
        "task.options.num_steps=20",
        "task.options.num_train=8",
        "task.options.num_test=4",
        "train.batch_size=8",
        "model.hidden_size=8",
    ],
    "decision": [
        "task.options.num_train=8",
        "task.options.num_test=4",
        "train.batch_size=8",
        "model.hidden_size=8",
    ],
    "context": [
        "task.options.num_train=8",
        "task.options.num_test=4",
        "train.batch_size=8",
        "model.hidden_size=8",
    ],
    "context_ei": [
        # quieter trials and network, so that six steps surely lower the loss
        "task.options.sigma_in=0.1",
        "model.options.noise_std=0.01",
        "task.options.num_train=8",
        "task.options.num_test=4",
        "train.batch_size=8",
        "model.hidden_size=8",
    ],
    "delay_match": [
        "task.options.num_train=8",
        "task.options.num_test=4",
        "train.batch_size=8",
        "model.hidden_size=8",
    ],
    "go_nogo": [
        "task.options.num_train=8",
        "task.options.num_test=4",
        "train.batch_size=8",
        "model.hidden_size=8",
    ],
    "ready_set_go": [
        "task.options.num_train=8",
        "task.options.num_test=4",
        "train.batch_size=8",
        "model.hidden_size=8",
    ],
    "context_rflo": [
        "task.options.num_train=4",
        "task.options.num_test=4",
        "train.batch_size=2",
        "model.hidden_size=8",
    ],
}


def test_every_task_config_has_a_short_version():
    names = set(builtin_configs()) - {"quickstart"}
    assert names <= set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_task_config_short_run(name, tmp_path):
    if name not in builtin_configs():
        pytest.skip(f"no config {name}")
    out = tmp_path / name
    cfg = load_config(name, [*COMMON, *SMALL[name], f"out_dir={out}"])
    needed = NEEDS.get(cfg.gradient.name)
    if needed and not hasattr(rnnode, needed):
        pytest.skip(f"rnnode.{needed} is not available yet")
    summary = train(cfg, progress=False)
    assert summary["status"] == "finished" and summary["steps"] == 6
    if cfg.train.online:  # 6 updates over streams of 4 steps: a restart included
        assert _TRACES["online"] >= 1
    for f in [
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "train_loss.csv",
        "plots/loss.png",
        "plots/predictions.png",
    ]:
        assert (out / f).is_file(), f
    if name.startswith("oscillator"):
        assert (out / "plots" / "phase.png").is_file()
    assert ckpt.list_checkpoints(out)[0][0] == 6
    losses = _losses(out)
    assert np.all(np.isfinite(losses))
    if cfg.train.online:  # per-time-step losses: compare the test losses instead
        first, last = (r["val_loss"] for r in _metrics(out))
        assert last < first, f"validation loss did not fall: {first} -> {last}"
    else:
        assert losses[-1] < losses[0], f"loss did not fall: {losses}"
    assert np.isfinite(summary["test_loss"]) and summary["test"]


STEADY = [
    *SMALL["steady_state"],
    "train.steps=6",
    "train.steps_per_call=3",
    "train.eval_every=3",
    "train.checkpoint_every=3",
]


def test_equilibrium_section_chooses_the_forward_solver(tmp_path):
    out = tmp_path / "anderson"
    cfg = load_config(
        "steady_state",
        [
            *STEADY,
            "equilibrium.solver=anderson",
            "equilibrium.memory=3",
            f"out_dir={out}",
        ],
    )
    summary = train(cfg, progress=False)
    assert summary["status"] == "finished"
    losses = _losses(out)
    assert losses[-1] < losses[0], losses
    saved = (out / "config.yaml").read_text()
    assert "solver: anderson" in saved and "memory: 3" in saved
    # the resolved config validates again, section and all
    assert load_config(out / "config.yaml").equilibrium.memory == 3


@pytest.mark.parametrize(
    "override, message",
    [
        # the forward solve gets 2 iterations
        (
            "equilibrium.max_steps=2",
            "the fixed-point solve did not reach its tolerance",
        ),
        # the forward solve converges; the implicit adjoint gets one iteration
        ("gradient.max_steps=1", "the adjoint solve `V = V J + a`"),
    ],
    ids=["forward", "adjoint"],
)
def test_non_converging_solve_is_an_error_not_a_wrong_gradient(
    override, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "steady_state", *STEADY, override, "-q"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "Traceback" not in err
    assert "training stopped after step 0" in err and message in err, err
    assert override.split("=")[0] in err  # the key to change is named
    run = tmp_path / "runs" / "steady_state"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "No checkpoint had been written yet" in summary["message"]
    assert (run / "config.yaml").is_file()


def test_non_converging_deer_stops_training_with_exit_3(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", *TINY, "gradient.name=deer", "gradient.max_steps=1", "-q"])
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err, err
    assert "training stopped after step 0: DEER: Newton on the trajectory" in err
    assert "gradient.max_steps" in err and "gradient.damping" in err  # keys named


def test_eval_of_a_non_converging_equilibrium_is_one_line_and_writes_nothing(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "steady_state", *STEADY, "-q"]) == 0
    run = tmp_path / "runs" / "steady_state"
    assert main(["eval", str(run)]) == 0
    before = (run / "eval.json").read_bytes()
    capsys.readouterr()
    # the same saved model, evaluated with a forward solve of 2 iterations
    config = run / "config.yaml"
    text = config.read_text()
    assert "max_steps: 1000" in text
    config.write_text(text.replace("max_steps: 1000", "max_steps: 2", 1))
    rc = main(["eval", str(run)])
    err = capsys.readouterr().err
    assert rc == 3
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "did not reach its tolerance" in err and "equilibrium.max_steps" in err
    assert (run / "eval.json").read_bytes() == before


def test_online_checkpoint_of_the_old_layout_still_loads(tmp_path, capsys):
    """An online run written before every online state carried a key (RTRL's
    state was `(h, P, t)`) still gives its model to `load_run` / `evaluate`, and
    `resume` keeps its weights, optimiser state and key, restarting the streams
    with a warning (no data lost, no step 0)."""
    from rnnode.train import _checkpoint as ckpt

    args = [*ONLINE_SPARSE, "gradient.name=rtrl", f"out_dir={tmp_path / 'run'}"]
    run = tmp_path / "run"
    train(load_config(None, args), progress=False)
    ref_model, _, _ = load_run(run)
    # rewrite every checkpoint as the old code wrote it: the online state
    # without its key
    for step, path in ckpt.list_checkpoints(run):
        header, _ = ckpt.read_header(path)
        _, state = ckpt.load_checkpoint(path, _full_like(run))
        rs = state["rstate"]
        state["rstate"] = (rs.h, rs.trace, rs.t)
        ckpt.save_checkpoint(run, step, state, meta=header["meta"])
    model, _, _ = load_run(run)
    flat = lambda m: np.concatenate(
        [np.ravel(a) for a in jax.tree.leaves(eqx.filter(m, eqx.is_inexact_array))]
    )
    np.testing.assert_array_equal(flat(model), flat(ref_model))
    capsys.readouterr()
    assert main(["resume", str(run), "train.steps=16", "-q"]) == 0
    out = capsys.readouterr()
    assert "older layout" in out.out + out.err
    assert json.loads((run / "summary.json").read_text())["steps"] == 16


def _full_like(run):
    from rnnode.train._build import prepare, split_arrays
    from rnnode.train._modes import training_for

    cfg = rnnode.train.load_run_config(run)
    cfg, task, setup = prepare(cfg)
    data = split_arrays(cfg, task, task.train, setup.dtype)
    _, extra = training_for(cfg, task, setup, None).start(
        setup.params, setup.train_key, data
    )
    return {**setup.state(), **extra}
