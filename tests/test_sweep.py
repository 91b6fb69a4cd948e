"""`rnnode sweep`: the sweep file's validation, a small sweep and its report,
pruning, a failing trial, two workers on one study, and resuming a killed sweep.

Every trial is a 10-step run of a tiny quickstart (a few seconds, mostly
compilation), so the sweeps here have two or three trials."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

import rnnode
from rnnode.cli import main
from rnnode.sweep import counts, load_spec, open_study, run_sweep, write_report

TINY = {
    "task.options.num_steps": 10,
    "task.options.num_train": 4,
    "task.options.num_test": 4,
    "model.hidden_size": 4,
    "train.batch_size": 4,
    "train.steps": 10,
    "train.steps_per_call": 5,
    "train.eval_every": 5,
    "train.checkpoint_every": 5,
}
ROOT = Path(rnnode.__file__).resolve().parents[1]


def _spec(tmp_path, **changes) -> Path:
    spec = {
        "config": "quickstart",
        "overrides": dict(TINY),
        "params": {
            "optim.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}
        },
        "n_trials": 2,
        "sampler": {"name": "random", "seed": 0},
        "pruner": "none",
        "out_dir": str(tmp_path / "sweep"),
        **changes,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _trials(path):
    return open_study(load_spec(path), create=False).get_trials()


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {
                "params": {
                    "optim.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}
                }
            },
            r"^params\.optim\.lr\.low: a log range must be > 0, got 0$",
        ),
        (
            {"params": {"optim.lr": {"type": "float", "low": 0.1, "high": 0.01}}},
            r"^params\.optim\.lr: empty range: low 0\.1 must be < high 0\.01$",
        ),
        (
            {"params": {"model.hidden_sise": {"type": "int", "low": 4, "high": 8}}},
            r"^params\.model\.hidden_sise: 4: model\.hidden_sise: unknown key "
            r"\(did you mean hidden_size\?\)",
        ),
        (
            {
                "params": {
                    "model.hidden_size": {"type": "categorical", "choices": [4, -1]}
                }
            },
            r"^params\.model\.hidden_size: -1: model\.hidden_size: must be > 0",
        ),
        (
            {
                "params": {
                    "gradient": {
                        "type": "categorical",
                        "choices": {
                            "bptt": {"gradient.name": "bptt"},
                            "rtrl": {"gradient.name": "rtrl", "gradient.blok": 8},
                        },
                    }
                }
            },
            r"^params\.gradient: 'rtrl': gradient\.blok: unknown option for rtrl "
            r"\(did you mean block\?\)",
        ),
        (
            {"params": {"optim.lr": {"type": "real", "low": 0.1, "high": 1.0}}},
            r"^params\.optim\.lr\.type: must be float, int or categorical, got 'real'$",
        ),
        ({"params": {}}, r"^params: empty"),
        ({"sampler": "cmaes"}, r"^sampler\.name: must be one of 'tpe', 'random' or"),
        ({"sampler": {"name": "tpe", "n_startup": 3}}, r"^sampler\.n_startup: unknown"),
        ({"pruner": {"name": "median", "warmup": 3}}, r"^pruner\.warmup: unknown"),
        ({"metric": "val.mae"}, r"^metric: unknown metric 'val\.mae' \(did you mean"),
        (
            {"metric": "test.mse"},
            r"^metric: test\.mse scores the test split, which a sweep must not see "
            r".*; use the validation one, val\.mse$",
        ),
        (
            {"metric": "test_loss"},
            r"^metric: test_loss scores the test split.*val_loss$",
        ),
        ({"n_trial": 3}, r"^n_trial: unknown key \(did you mean n_trials\?\)"),
        ({"overrides": {"train.step": 3}}, r"^overrides: train\.step: unknown key"),
        ({"config": "sinus"}, r"^config: no file 'sinus' .*did you mean sine"),
        (
            {"sampler": "grid", "n_trials": 7},
            r"^params\.optim\.lr: the grid sampler needs a `step`",
        ),
        (
            {
                "sampler": "grid",
                "n_trials": 7,
                "params": {"train.seed": {"type": "int", "low": 0, "high": 2}},
            },
            r"^n_trials: the grid has 3 points, got 7",
        ),
    ],
)
def test_spec_errors_exit_2_with_one_line(tmp_path, capsys, changes, message):
    rc = main(["sweep", str(_spec(tmp_path, **changes))])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    assert err[0].startswith("rnnode: error: ")
    assert re.search(message, err[0][len("rnnode: error: ") :]), err[0]
    assert not (tmp_path / "sweep").exists(), "nothing runs or is written"


def test_report_of_a_missing_study_is_a_clear_error(tmp_path, capsys):
    rc = main(["sweep", str(_spec(tmp_path)), "--report"])
    assert rc == 1
    assert "no study 'tiny'" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_small_sweep_runs_n_trials_and_writes_its_report(tmp_path):
    path = _spec(
        tmp_path,
        n_trials=2,
        params={
            "optim.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
            "size": {
                "type": "categorical",
                "choices": {
                    "small": {"model.hidden_size": 3},
                    "big": {"model.hidden_size": 6},
                },
            },
        },
    )
    spec = load_spec(path)
    final = run_sweep(spec, progress=False)
    assert final == {"done": 2, "running": 0, "waiting": 0}
    trials = _trials(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    out = tmp_path / "sweep"
    for t in trials:
        run = out / f"trial_{t.number}"
        assert t.user_attrs["run_dir"] == str(run)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 10
        assert t.value == pytest.approx(summary["val_loss"])  # not the test's
        assert summary["test_loss"] != summary["val_loss"]
        # reported at each evaluation (train.eval_every=5) through train(on_eval=)
        assert sorted(t.intermediate_values) == [5, 10]
        assert t.intermediate_values[10] == pytest.approx(t.value)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["optim"]["lr"] == pytest.approx(t.params["optim.lr"])
        assert cfg["model"]["hidden_size"] == {"small": 3, "big": 6}[t.params["size"]]
        assert cfg["train"]["steps"] == 10

    # a finished sweep started again runs nothing more
    run_sweep(spec, progress=False)
    assert len(_trials(path)) == 2

    report = write_report(open_study(spec), spec)
    best = min(trials, key=lambda t: t.value)
    assert report["best"]["trial"] == best.number
    assert (out / "best.yaml").read_text() == (
        out / f"trial_{best.number}" / "config.yaml"
    ).read_text()
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0] == "trial,state,val_loss,optim.lr,size,time_s,note,run_dir"
    assert len(rows) == 3 and all(",complete," in r for r in rows[1:])
    for png in ("history.png", "slice.png"):
        assert (out / png).stat().st_size > 1000
    assert "importances" in report["skipped"]  # 2 complete trials are too few


def test_pruned_trial_stops_at_once_and_keeps_what_it_wrote(tmp_path):
    # a threshold of 0 on the test loss prunes at the first evaluation (step 5)
    path = _spec(tmp_path, n_trials=1, pruner={"name": "threshold", "upper": 0.0})
    run_sweep(load_spec(path), progress=False)
    (t,) = _trials(path)
    assert t.state == TrialState.PRUNED
    assert list(t.intermediate_values) == [5]
    run = Path(t.user_attrs["run_dir"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["step"] == 5
    assert summary["val_loss"] == pytest.approx(t.intermediate_values[5])
    assert "test_loss" not in summary  # a stopped run never sees its test split
    records = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records] == [5]
    assert len((run / "train_loss.csv").read_text().splitlines()) == 1 + 5
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000005.ckpt"]


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # the grid runs both choices; "blowup" multiplies the learning rate by 1e30
    # at every step, so its loss stops being finite
    path = _spec(
        tmp_path,
        sampler="grid",
        n_trials=None,
        params={
            "optimiser": {
                "type": "categorical",
                "choices": {
                    "blowup": {
                        "optim.name": "sgd",
                        "optim.schedule": {
                            "name": "exponential",
                            "decay_rate": 1e30,
                            "decay_steps": 1,
                        },
                    },
                    "adam": {"optim.lr": 0.01},
                },
            }
        },
    )
    run_sweep(load_spec(path), progress=False)
    trials = {t.params["optimiser"]: t for t in _trials(path)}
    assert trials["blowup"].state == TrialState.FAIL
    assert "training stopped at step" in trials["blowup"].user_attrs["fail_reason"]
    assert trials["adam"].state == TrialState.COMPLETE
    assert counts(open_study(load_spec(path)))["done"] == 2


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    return env


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path, capsys):
    # each worker takes one trial; the first to finish must not start a third
    path = _spec(tmp_path, n_trials=2)
    assert main(["sweep", str(path), "--workers", "2", "-q"]) == 0
    trials = _trials(path)
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["optim.lr"] for t in trials}) == 2
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert sorted(p.name for p in (tmp_path / "sweep").glob("trial_*")) == [
        "trial_0",
        "trial_1",
    ]
    assert "best: trial" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_sweep_resumes_with_every_trial_done_once(tmp_path):
    path = _spec(tmp_path, n_trials=2, heartbeat_s=1, grace_period_s=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnode", "sweep", str(path), "-q"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    second = tmp_path / "sweep" / "trial_1" / "config.yaml"
    deadline = time.monotonic() + 300
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # during trial 1: it stays RUNNING
    proc.wait()
    assert [t.state for t in _trials(path)] == [TrialState.COMPLETE, TrialState.RUNNING]

    assert main(["sweep", str(path), "-q"]) == 0  # the same command
    trials = _trials(path)
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].system_attrs["failed_trial"] == 1  # the re-run of trial 1
    assert trials[2].params == trials[1].params
    assert counts(open_study(load_spec(path))) == {
        "done": 2,
        "running": 0,
        "waiting": 0,
    }
    table = (tmp_path / "sweep" / "trials.md").read_text()
    assert "| 1 | interrupted |" in table and "re-run as trial 2" in table


def test_a_study_is_not_reused_for_another_search_space(tmp_path, capsys):
    open_study(load_spec(_spec(tmp_path)))  # creates the study, runs nothing
    changed = {"params": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}}
    assert main(["sweep", str(_spec(tmp_path, **changed))]) == 2
    err = capsys.readouterr().err
    assert "study: 'tiny' in sqlite:///" in err and "different config, search" in err
    # the same spec opens it again; n_trials may grow
    assert open_study(load_spec(_spec(tmp_path, n_trials=5))).study_name == "tiny"


def test_trial_directories_of_another_study_are_refused(tmp_path, capsys):
    (tmp_path / "sweep" / "trial_0").mkdir(parents=True)
    assert main(["sweep", str(_spec(tmp_path))]) == 2
    assert "out_dir: " in capsys.readouterr().err
    assert not any((tmp_path / "sweep" / "trial_0").iterdir())


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")))
def test_example_sweep_files_are_valid(path):
    spec = load_spec(path)
    assert spec.n_trials >= 3 and spec.params
