"""Running a sweep: the Optuna study, its trials (ordinary training runs), the
workers that share it, and resuming after a stop.

Counting: a sweep is done when `n_trials` trials are complete, pruned or failed
(a failed trial being a run that diverged or whose solve failed). A trial whose
process was killed stops sending its heartbeat; once `grace_period_s` has passed
the next worker marks it failed and queues a re-run with the same parameters
(Optuna's `RetryHeartbeatStaleTrialCallback`), and the killed one no longer
counts. A trial stopped by Ctrl-C is re-queued the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

from ..train import (
    ConfigError,
    StopTraining,
    TrainingDiverged,
    load_config,
    train,
)
from ..train.config import one_line
from ._spec import SweepSpec, metric_value

STUDY_DB = "study.db"


def sweep_dir(spec: SweepSpec) -> Path:
    """The sweep's directory: `out_dir`, default `runs/sweep-<name>`."""
    return Path(spec.out_dir or Path("runs") / f"sweep-{spec.name}")


def storage_url(spec: SweepSpec, storage: str | None = None) -> str:
    """`storage` (a command-line `--storage`), else the spec's, else a SQLite
    file in the sweep directory."""
    url = storage or spec.storage
    if url is None:
        url = f"sqlite:///{(sweep_dir(spec) / STUDY_DB).resolve()}"
    return url


def open_study(spec: SweepSpec, storage: str | None = None, *, create: bool = True):
    """The sweep's Optuna study (created if missing and `create`).

    **Raises:** `ConfigError` if the study exists but was made from a different
    search space, base config or metric; `FileNotFoundError` if it is missing
    and not `create`."""
    import optuna

    _quiet_optuna()
    url = storage_url(spec, storage)
    name = spec.study_name or spec.name
    missing = FileNotFoundError(
        f"no study {name!r} in {url}; run `rnnode sweep SPEC` first"
    )
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///") :])
        if not create and not db.is_file():
            raise missing
        db.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # heartbeats are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            url,
            # several processes on one SQLite file: wait for the lock, don't fail
            engine_kwargs={"connect_args": {"timeout": 60}}
            if url.startswith("sqlite")
            else None,
            heartbeat_interval=spec.heartbeat_s,
            grace_period=spec.grace_period_s or 3 * spec.heartbeat_s,
            heartbeat_stale_trial_callback=_retry(spec),
        )
    if not create:
        names = [s.study_name for s in optuna.get_all_study_summaries(rdb)]
        if name not in names:
            raise missing
    study = optuna.create_study(
        storage=rdb,
        study_name=name,
        direction=spec.direction,
        sampler=spec.make_sampler(),
        pruner=spec.make_pruner(),
        load_if_exists=True,
    )
    mine = json.dumps(spec.fingerprint(), sort_keys=True)
    theirs = study.user_attrs.get("rnnode_spec")
    if theirs is None:
        study.set_user_attr("rnnode_spec", mine)
    elif theirs != mine:
        raise ConfigError(
            [
                f"study: {name!r} in {url} was made from a different config, "
                "search space or metric; give the sweep another study_name or "
                "out_dir"
            ]
        )
    return study


def counts(study) -> dict[str, int]:
    """`done` (complete, pruned and failed trials that count), `running`,
    `waiting` (queued re-runs)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    rerun = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    c = {"done": 0, "running": 0, "waiting": 0}
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            c["done"] += 1
        elif t.state == TrialState.FAIL:
            if t.number not in rerun and not t.user_attrs.get("interrupted"):
                c["done"] += 1
        elif t.state == TrialState.RUNNING:
            c["running"] += 1
        elif t.state == TrialState.WAITING:
            c["waiting"] += 1
    return c


def run_sweep(
    spec: SweepSpec,
    *,
    workers: int = 1,
    storage: str | None = None,
    progress: bool = True,
    worker_index: int = 0,
) -> dict[str, int]:
    """Run the sweep until `spec.n_trials` trials are done (resuming a study
    that exists); returns the final `counts`.

    **Arguments:**

    - `spec`: a validated `SweepSpec` (`load_spec`).
    - `workers`: how many processes to run trials in on this machine (each an
      `rnnode sweep` of the spec copied to the sweep directory, all on the same
      storage). With `1`, trials run in this process.
    - `storage`: a database URL overriding the spec's `storage`.
    - `progress`: progress bars and one line per trial on stderr.
    - `worker_index`: offsets the sampler's seed, so that workers sample
      differently.
    """
    out = sweep_dir(spec)
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(spec, storage)
    # (directories first: a trial is in the database before its directory)
    if any(out.glob("trial_*")) and not study.get_trials(deepcopy=False):
        raise ConfigError(
            [
                f"out_dir: {out} holds trial_* directories but the study "
                f"{study.study_name!r} has no trials (was its database removed?); "
                "move them away or choose another out_dir"
            ]
        )
    if workers > 1:
        return _spawn(spec, study, workers, storage_url(spec, storage), progress)
    seed_offset = 1000 * worker_index + len(study.get_trials(deepcopy=False))
    study.sampler = spec.make_sampler(seed_offset=seed_offset)
    lock = _FileLock(out / ".lock")
    while True:
        with lock:
            _requeue_interrupted(study, spec)
            _fail_stale(study)
            c = counts(study)
            if c["done"] >= spec.n_trials:
                return c
            start = c["waiting"] > 0 or c["done"] + c["running"] < spec.n_trials
            if start:
                # the objective releases the lock once its trial exists, so
                # that workers of this machine never start one trial too many
                _optimize_one(study, spec, out, lock, progress)
                continue
        # every remaining trial runs elsewhere (or stopped without a word: it
        # is re-queued once its heartbeat is older than the grace period)
        time.sleep(min(2.0, spec.heartbeat_s))


def _optimize_one(study, spec, out, lock, progress) -> None:
    def objective(trial):
        lock.release()
        return _objective(trial, spec, out, progress)

    try:
        study.optimize(objective, n_trials=1, catch=())
    except KeyboardInterrupt:
        _requeue_interrupted(study, spec)
        raise


def _objective(trial, spec: SweepSpec, out: Path, progress: bool) -> float:
    import optuna

    params = spec.suggest(trial)
    overrides = spec.overrides_for(params)
    run_dir = out / f"trial_{trial.number}"
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    label = " ".join(f"{k}={_short(v)}" for k, v in params.items())
    # a re-run inherits the user attributes of the trial it repeats
    trial.set_user_attr("interrupted", False)
    frozen = next(
        t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number
    )
    retry = frozen.system_attrs.get("failed_trial")
    _say(
        f"[sweep {spec.name}] trial {trial.number}: {label}"
        + (f" (re-run of trial {retry})" if retry is not None else ""),
        progress,
    )

    def on_eval(step: int, record: dict) -> None:
        value = metric_value(record, spec.metric)
        trial.report(value, step)
        if trial.should_prune():
            trial.set_user_attr("pruned_at", step)
            raise StopTraining(
                f"pruned at step {step} ({spec.metric} {value:.4g})", status="pruned"
            )

    try:
        cfg = load_config(
            spec.config_path,
            [*spec.fixed_overrides(), *overrides, f"out_dir={run_dir}"],
        )
        summary = train(cfg, progress=progress, on_eval=on_eval)
    except StopTraining as e:
        _say(f"[sweep {spec.name}] trial {trial.number}: {e}", True)
        raise optuna.TrialPruned(str(e)) from None
    except (TrainingDiverged, ConfigError) as e:
        return _failed(trial, spec, one_line(e), progress)
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        raise
    value = metric_value(summary, spec.metric)
    if not math.isfinite(value):
        return _failed(trial, spec, f"{spec.metric} is {value}", progress)
    _say(f"[sweep {spec.name}] trial {trial.number}: {spec.metric} {value:.4g}", True)
    return value


def _failed(trial, spec, reason: str, progress: bool) -> float:
    trial.set_user_attr("fail_reason", reason)
    _say(f"[sweep {spec.name}] trial {trial.number} failed: {reason}", True)
    return float("nan")  # Optuna records a NaN objective as a failed trial


def _retry(spec: SweepSpec):
    """Optuna's callback that queues a re-run of a failed trial."""
    import optuna

    cls = getattr(
        optuna.storages,
        "RetryHeartbeatStaleTrialCallback",  # its name from Optuna 4.9
        optuna.storages.RetryFailedTrialCallback,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(max_retry=spec.max_retries)


def _requeue_interrupted(study, spec: SweepSpec) -> None:
    """Queue a re-run of each trial stopped by Ctrl-C that has none yet."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    rerun = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    callback = _retry(spec)
    for t in trials:
        if (
            t.state == TrialState.FAIL
            and t.user_attrs.get("interrupted")
            and t.number not in rerun
        ):
            callback(study, t)


def _fail_stale(study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _spawn(spec, study, workers: int, url: str, progress: bool) -> dict[str, int]:
    """Run `workers` processes of `rnnode sweep` on the spec's copy."""
    out = sweep_dir(spec)
    copy = out / f"{spec.name}.yaml"
    data = spec.model_dump(mode="json", exclude_none=True)
    data["config"] = spec.config_path
    data["out_dir"] = str(out.resolve())
    data["study_name"] = study.study_name
    copy.write_text(json.dumps(data, indent=1))
    # the workers import this very `rnnode` (not another one on the path)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    procs = []
    for i in range(workers):
        cmd = [
            sys.executable,
            "-m",
            "rnnode",
            "sweep",
            str(copy),
            "--storage",
            url,
            "--no-report",
            "--worker-index",
            str(i + 1),
        ]
        if not progress or workers > 1:
            cmd.append("-q")
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        codes = [p.wait() for p in procs]
        raise
    bad = [c for c in codes if c]
    if bad:
        raise WorkerFailed(bad[0])
    return counts(study)


class WorkerFailed(RuntimeError):
    """A worker process of `run_sweep(..., workers=N)` exited with an error."""

    def __init__(self, code: int):
        self.code = code
        super().__init__(f"a sweep worker exited with status {code}")


class _FileLock:
    """An exclusive lock on a file (for the workers of one machine); `release`
    may be called inside the `with` block."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def __enter__(self):
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None

    def __exit__(self, *exc):
        self.release()


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)
