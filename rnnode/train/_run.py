"""A training run's life: its directory, the loop of compiled chunks with its
checkpoints, metrics and progress, stopping on a non-finite loss or a failed
solve, resuming, the final evaluation, the plots and the summary."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import numpy as np

from . import _checkpoint as ckpt, _metrics as mt, _plots, _sharding
from ._build import (
    build_equilibrium,
    fitted_params,
    loss_name,
    num_params,
    prepare,
    split_arrays,
    x64_context,
)
from ._environment import environment, format_environment
from ._modes import training_for
from ._steps import _evaluate
from .config import Config, ConfigError, config_to_yaml, load_config, one_line


class TrainingDiverged(RuntimeError):
    """The loss or its gradient became NaN or infinite, or an iterative solve inside
    it (an equilibrium, its adjoint) did not converge; the run was stopped."""


class StopTraining(Exception):
    """Raised by a `train(..., on_eval=...)` hook to stop the run at once (a
    sweep's pruner, an early stop): what was written is kept, including the
    checkpoint of that evaluation's step, and `summary.json` gets `status`.

    **Arguments:**

    - `message`: why (stored in the summary).
    - `status`: the summary's status, e.g. `"pruned"` (default `"stopped"`).
    """

    def __init__(self, message: str = "stopped by on_eval", *, status: str = "stopped"):
        super().__init__(message)
        self.status = status


_CONFIG_HINT = (
    " In a config: the forward solve is the `equilibrium:` section "
    "(equilibrium.max_steps, equilibrium.damping, equilibrium.solver=anderson, "
    "equilibrium.step_size), the adjoint takes gradient.max_steps, gradient.damping "
    "and gradient.tol."
)
# a parallel-in-time solve (`DEER`, `ELK`; their messages start with the name)
_NEWTON_HINT = (
    " In a config: gradient.max_steps (null means T), gradient.rtol, "
    "gradient.atol, gradient.quasi, gradient.damping (deer) or gradient.penalty "
    "(elk), or gradient.name: bptt."
)


def _runtime_message(e: Exception) -> str:
    """The message of an `equinox.EquinoxRuntimeError` (a failed `eqx.error_if`
    check), without equinox's debugging advice."""
    text = str(e)
    tag = "EquinoxRuntimeError: "
    if tag in text:
        text = text[text.rindex(tag) + len(tag) :]
    return text.split("\n\n")[0].strip()


def _solve_failed(
    e: Exception, step: int, run_dir, main: bool, environment: dict
) -> TrainingDiverged:
    """A `TrainingDiverged` from an `equinox.EquinoxRuntimeError` (a failed
    `eqx.error_if` check, e.g. a non-converging equilibrium) raised near `step`;
    writes the run's summary."""
    text = _runtime_message(e)
    where = _last_checkpoint(run_dir)
    newton = text.startswith(("DEER:", "ELK:"))
    msg = (
        f"training stopped after step {step}: {text}"
        f"{_NEWTON_HINT if newton else _CONFIG_HINT} "
        f"{where[0].upper()}{where[1:]}."
    )
    return _stopped(run_dir, main, "failed", msg, step, environment)


def _last_checkpoint(run_dir) -> str:
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        return "no checkpoint had been written yet"
    return f"the last good checkpoint is {found[0][1]} (step {found[0][0]})"


def _stopped(run_dir, main: bool, status: str, msg: str, step: int, environment: dict):
    """Record a stopped run in its summary; the error to raise."""
    if main:
        mt.write_summary(
            run_dir,
            {
                "status": status,
                "message": msg,
                "step": step,
                "run_dir": str(run_dir),
                "environment": environment,
            },
        )
    return TrainingDiverged(msg)


def _fresh_dir(path: Path) -> Path:
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return path
    i = 2
    while True:
        p = path.with_name(f"{path.name}-{i}")
        if not p.exists() or (p.is_dir() and not any(p.iterdir())):
            return p
        i += 1


def _is_main() -> bool:
    return _sharding.is_main_process()


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------- train


def train(
    config: Config | str | Path | None,
    *,
    resume: bool = False,
    progress: bool = True,
    overrides: list[str] = (),
    on_eval: Callable[[int, dict], None] | None = None,
) -> dict:
    """Run (or resume) the experiment a config describes; returns the summary.

    **Arguments:**

    - `config`: a `Config`, or a path / built-in name passed to `load_config`
      (with `overrides`).
    - `resume`: continue the run in `config.out_dir` from its last valid
      checkpoint (a fresh start if it has none); otherwise a new run directory
      is used (`out_dir`, or `out_dir-2`, … if that one is taken).
    - `progress`: show a progress bar and messages on stderr.
    - `on_eval`: called as `on_eval(step, record)` after each evaluation (every
      `train.eval_every` steps and at the end) once that step's metrics and
      checkpoint are written; `record` is the line of `metrics.jsonl`
      (`train_loss`, `val_loss`, `val: {metric: value}`: the evaluations
      during training score the task's validation split; the test split is
      scored once, at the end, into the summary). Raising `StopTraining` from
      it stops the run there.

    **Raises:** `ConfigError` for an invalid config (before anything is
    written), `TrainingDiverged` if the loss stops being finite,
    `StopTraining` if `on_eval` raised it (after writing the summary).
    """
    if not isinstance(config, Config):
        config = load_config(config, list(overrides))
    if config.distributed.enabled:
        d = config.distributed
        _sharding.initialize_distributed(
            d.coordinator_address, d.num_processes, d.process_id
        )
    with x64_context(config):
        return _train(config, resume=resume, progress=progress, on_eval=on_eval)


def _train(config: Config, *, resume: bool, progress: bool, on_eval=None) -> dict:
    t_start = time.perf_counter()
    cfg, task, setup = prepare(config)
    mesh = _make_mesh(cfg)
    # ---- everything is validated: from here on files are written
    env = environment(dtype=cfg.train.dtype, seed=cfg.train.seed, mesh=mesh)
    _say(format_environment(env), progress and _is_main())
    run = _Run(cfg, task, setup, _open_run_dir(cfg, resume), mesh, env)
    if resume:
        run.restore(progress)
    elif run.main:
        for name in (mt.METRICS, mt.LOSSES, mt.SUMMARY):
            if (run.dir / name).exists():
                (run.dir / name).unlink()
    if mesh is not None:
        run.train_data = _sharding.replicate(mesh, run.train_data)
        run.params, run.opt_state = _sharding.replicate(
            mesh, (run.params, run.opt_state)
        )
    loop = _Loop(run, progress, on_eval)
    try:
        loop.train()
        # ---- final evaluation (inside: a failed solve is reported the same way):
        # the validation split as during training, the test split once, here
        val_loss, val_metrics, _, _ = run.evaluate_now("val")
        test_loss, metrics, hs, outs = run.evaluate_now("test")
    except eqx.EquinoxRuntimeError as e:
        raise _solve_failed(e, run.step, run.dir, run.main, run.environment) from None
    except StopTraining as e:
        if run.main:
            # a stopped run is not finished: its test split stays unseen
            last = {k: loop.last_record[k] for k in ("train_loss", "val_loss", "val")}
            mt.write_summary(
                run.dir,
                {
                    "status": e.status,
                    "message": str(e),
                    "step": run.step,
                    **last,
                    "run_dir": str(run.dir),
                    "environment": run.environment,
                },
            )
        raise
    finally:
        if loop.bar is not None:
            loop.bar.close()
    loop_s = time.perf_counter() - loop.t_loop
    elapsed = run.elapsed_before + loop_s

    # ---- plots, summary
    records = mt.read_metrics(run.dir) if run.main else []
    last_record = loop.last_record
    model = setup.model_from(run.params)
    summary = {
        "status": "finished",
        "name": Path(run.dir).name,
        "task": task.name,
        "steps": run.step,
        "train_loss": last_record["train_loss"]
        if last_record
        else (records[-1]["train_loss"] if records else None),
        "val_loss": val_loss,
        "val": val_metrics,
        "test_loss": test_loss,
        "test": metrics,
        "num_params": num_params(model),
        **_params_report(model, task),
        "wall_time_s": round(elapsed, 3),
        "session_time_s": round(time.perf_counter() - t_start, 3),
        "first_call_s": None
        if loop.first_call_s is None
        else round(loop.first_call_s, 3),
        # speed after the first call (which includes compilation)
        "steps_per_s": _rate(
            run.step - loop.start_step - loop.first_n,
            loop_s - (loop.first_call_s or 0),
        ),
        "run_dir": str(run.dir),
        "environment": run.environment,
        "files": {},
    }
    if run.main:
        summary["files"] = _plots.write_plots(cfg, task, run.dir, records, hs, outs)
        mt.write_summary(run.dir, summary)
    return summary


def _make_mesh(cfg: Config):
    """The device mesh of a data-parallel run (`None` for one device); checks
    that the batch splits evenly over the devices."""
    if cfg.devices == 1:
        return None
    try:
        mesh = _sharding.make_mesh(cfg.devices)
    except ValueError as e:
        raise ConfigError([f"devices: {one_line(e)}"]) from None
    n_dev = _sharding.num_devices(mesh)
    if cfg.train.batch_size % n_dev:
        raise ConfigError(
            [
                f"train.batch_size: must be a multiple of the {n_dev} devices, "
                f"got {cfg.train.batch_size}"
            ]
        )
    return mesh


def _open_run_dir(cfg: Config, resume: bool) -> Path:
    """The run's directory (a fresh one unless resuming), created with its
    `config.yaml` by the main process; sets `cfg.out_dir` to it."""
    run_dir = Path(cfg.out_dir)
    if not resume:
        run_dir = _fresh_dir(run_dir)
    cfg.out_dir = str(run_dir)
    if _is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "plots").mkdir(exist_ok=True)
        ckpt.atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    return run_dir


class _Run:
    """A run's data, environment, training (batch or online, `training`) and
    training state (`params`, `opt_state`, `key`, the training's `extra` state,
    `step`); saving, restoring and evaluating that state."""

    def __init__(
        self, cfg: Config, task, setup, run_dir: Path, mesh, environment: dict
    ):
        self.cfg, self.task, self.setup = cfg, task, setup
        self.dir, self.mesh = run_dir, mesh
        self.main, self.environment = _is_main(), environment
        dtype = setup.dtype
        self.train_data = split_arrays(cfg, task, task.train, dtype)
        # a task defined without a validation split (`Task.val` None) is
        # evaluated on its test split during training, as before there was one
        self.val_split = task.val if task.val is not None else task.test
        self.eval_data = {
            "val": split_arrays(cfg, task, self.val_split, dtype),
            "test": split_arrays(cfg, task, task.test, dtype),
        }
        self.lname = loss_name(cfg, task)
        self.params, self.opt_state = setup.params, setup.opt_state
        # batch or online: decided here, once
        self.training = training_for(cfg, task, setup, mesh)
        key, self.extra = self.training.start(
            self.params, setup.train_key, self.train_data
        )
        self.key = key
        self.step, self.elapsed_before = 0, 0.0

    def restore(self, progress: bool) -> None:
        """Continue from the newest valid checkpoint (if any); drop the lines
        of the run's files written after it."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ckpt.CheckpointWarning)
            loaded = ckpt.load_latest(
                self.dir,
                {
                    **self.setup.state(self.params, self.opt_state, self.key),
                    **self.extra,
                },
            )
        if loaded is None and self.extra and ckpt.list_checkpoints(self.dir):
            # an online run written before its online state changed layout
            # (issue 22: every state carries a key): keep its weights, optimiser
            # state and key, and start the streams afresh
            caught = []
            loaded = ckpt.load_latest(self.dir, self.setup.state())
            if loaded is not None:
                header, state = loaded
                loaded = header, {**state, **self.extra}
                _say(
                    "warning: the newest checkpoint's online state has an older "
                    "layout; resuming its weights with the streams started afresh "
                    "(not bit-identical to an uninterrupted run)",
                    True,
                )
        for w in caught:
            _say(f"warning: {w.message}", True)
        if loaded is None:
            _say(f"no usable checkpoint in {self.dir}: starting from step 0", progress)
        else:
            header, state = loaded
            self.params, self.opt_state = state["params"], state["opt_state"]
            self.key = state["key"]
            self.extra = {k: state[k] for k in self.extra}
            self.step = int(header["step"])
            self.elapsed_before = float(header.get("meta", {}).get("elapsed_s", 0.0))
            _say(f"resuming {self.dir} from step {self.step}", progress)
        if self.main:
            mt.truncate_after(self.dir, self.step)

    def advance(self, n: int):
        """Run `n` optimiser steps (one call of the chunk): `(bad, losses,
        failed)`, the state left at the last good step."""
        (
            self.params,
            self.opt_state,
            self.key,
            self.extra,
            bad,
            losses,
            failed,
        ) = self.training.advance(
            self.params, self.opt_state, self.key, self.extra, n, self.train_data
        )
        return bad, losses, failed

    def evaluate_now(self, split: str):
        """`(loss, metrics, hs, outs)` of the current parameters on the split
        `"val"` or `"test"`."""
        model = self.setup.model_from(self.params)
        hs, outs, loss = _evaluate(
            model,
            *self.eval_data[split],
            self.task.kind,
            self.lname,
            build_equilibrium(self.cfg),
        )
        outs_np = np.asarray(outs, dtype=np.float64)
        scored = self.val_split if split == "val" else self.task.test
        metrics = self.task.metrics(outs_np, scored)
        return float(loss), metrics, np.asarray(hs), outs_np

    def save(self, elapsed: float):
        # Gathering sharded arrays is a collective: every process takes part,
        # then only the main process writes.
        state = {
            **self.setup.state(self.params, self.opt_state, self.key),
            **self.extra,
        }
        if self.mesh is not None:
            state = _sharding.to_numpy(state)
        if not self.main:
            return None
        return ckpt.save_checkpoint(
            self.dir,
            self.step,
            state,
            keep=self.cfg.train.keep_checkpoints,
            meta={"elapsed_s": elapsed, "config": self.cfg.model_dump(mode="json")},
        )

    def diverged(self, losses: np.ndarray, failed, n: int) -> TrainingDiverged:
        """Record the good steps of a chunk in which a step was not finite; the
        error to raise."""
        i = int(np.argmax(np.asarray(failed)[:n]))
        good = losses[:i]
        if self.main and len(good):
            mt.write_losses(self.dir, self.step + 1, good)
        bad_step = self.step + i + 1
        self.step += i
        what = (
            f"the loss became {losses[i]}"
            if not np.isfinite(losses[i])
            else "the gradient or the updated parameters stopped being "
            f"finite (loss {losses[i]:.4g})"
        )
        msg = (
            f"training stopped at step {bad_step}: {what}; "
            f"{_last_checkpoint(self.dir)}. Try a smaller optim.lr, "
            "optim.clip_norm, or a smaller model.integrator.dt"
        )
        return _stopped(
            self.dir, self.main, "diverged", msg, bad_step, self.environment
        )


class _Loop:
    """The training loop: chunks of steps up to the next evaluation or
    checkpoint, with the progress bar, the loss and metrics files."""

    def __init__(self, run: _Run, progress: bool, on_eval=None):
        self.run = run
        self.on_eval = on_eval
        tc = run.cfg.train
        self.bar = None
        if progress and run.main:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=tc.steps,
                initial=run.step,
                unit="step",
                desc=Path(run.dir).name,
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=0.25,
                smoothing=0.1,
            )
        self.losses_since_eval: list[float] = []
        self.postfix: dict[str, str] = {}
        if run.step and run.main:
            # a resumed run's first record averages over the steps since the last
            # evaluation, some of which ran before the stop
            since = run.step - run.step % tc.eval_every
            steps_done, losses_done = mt.read_losses(run.dir)
            self.losses_since_eval = losses_done[steps_done > since].tolist()
        self.t_loop = time.perf_counter()
        self.first_call_s = None
        self.first_n, self.start_step = 0, run.step
        self.last_record = None

    def train(self) -> None:
        run, tc = self.run, self.run.cfg.train
        total, bar, postfix = tc.steps, self.bar, self.postfix
        while run.step < total:
            step = run.step
            n = min(
                tc.steps_per_call,
                total - step,
                tc.eval_every - step % tc.eval_every,
                tc.checkpoint_every - step % tc.checkpoint_every,
            )
            t0 = time.perf_counter()
            bad, losses, failed = run.advance(n)
            losses = np.asarray(losses)[:n].astype(np.float64)
            if self.first_call_s is None:
                self.first_call_s, self.first_n = time.perf_counter() - t0, n
            if bool(bad):
                raise run.diverged(losses, failed, n)
            if run.main:
                mt.write_losses(run.dir, step + 1, losses)
            self.losses_since_eval.extend(losses.tolist())
            run.step = step = step + n
            if bar is not None:
                postfix["loss"] = f"{losses[-1]:.4g}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(n)
            elapsed = run.elapsed_before + time.perf_counter() - self.t_loop
            evaluated = step % tc.eval_every == 0 or step == total
            if evaluated:
                self.evaluate(elapsed)
            if step % tc.checkpoint_every == 0 or step == total:
                run.save(elapsed)
            if evaluated and self.on_eval is not None:
                self.on_eval(step, self.last_record)

    def evaluate(self, elapsed: float) -> None:
        """Evaluate on the validation split; append the record to
        `metrics.jsonl`."""
        run = self.run
        val_loss, metrics, _, _ = run.evaluate_now("val")
        record = {
            "step": run.step,
            "train_loss": float(np.mean(self.losses_since_eval)),
            "val_loss": val_loss,
            "val": metrics,
            "time_s": round(elapsed, 3),
        }
        self.losses_since_eval = []
        self.last_record = record
        if run.main:
            mt.write_metrics(run.dir, record)
        if self.bar is not None:
            self.postfix["val"] = f"{val_loss:.4g}"
            self.bar.set_postfix(self.postfix)


def _rate(steps: int, seconds: float) -> float | None:
    if steps <= 0 or seconds <= 0:
        return None
    return round(steps / seconds, 2)


def _params_report(model, task) -> dict:
    fitted = fitted_params(model)
    if fitted is None:
        return {}
    return {"fitted_params": fitted, "true_params": task.info.get("true_params")}
