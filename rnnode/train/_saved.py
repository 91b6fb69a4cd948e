"""Saved runs: the config, the model of the newest valid checkpoint, and its
evaluation on the test set (`eval.json`)."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import numpy as np

from .._model import Model
from . import _checkpoint as ckpt, _metrics as mt
from ._build import (
    build_equilibrium,
    loss_name,
    prepare,
    run_dtype,
    split_arrays,
    x64_context,
)
from ._environment import environment
from ._modes import training_for
from ._run import _is_main, _params_report, _runtime_message
from ._steps import _evaluate
from .config import Config, parse_yaml, read_config_text, validate_config


class EvaluationFailed(RuntimeError):
    """`evaluate` could not compute a saved run's metrics: an iterative solve (an
    equilibrium) did not converge on the test set. Nothing was written."""


def load_run_config(run_dir: str | Path) -> Config:
    """The validated config of a saved run (its `config.yaml`), with `out_dir` set
    to `run_dir`. Raises `FileNotFoundError` if `run_dir` is not a run."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not an rnnode run (no config.yaml)")
    raw = parse_yaml(read_config_text(path), source=str(path))
    cfg = validate_config(raw, name=run_dir.name)
    cfg.out_dir = str(run_dir)
    return cfg


def _load_run(run_dir):
    cfg = load_run_config(run_dir)
    with x64_context(cfg):
        cfg, task, setup = prepare(cfg)
        loaded = ckpt.load_latest(run_dir, _checkpoint_like(cfg, task, setup))
        if loaded is None:
            raise FileNotFoundError(f"{run_dir} has no usable checkpoint")
        header, state = loaded
        model = setup.model_from(state["params"])
    return model, cfg, task, int(header["step"])


def _checkpoint_like(cfg, task, setup) -> dict:
    """The shapes of a run's checkpointed state: the parameters, optimiser state
    and key, and the training's extra state (an online run's streams), from
    starting that training afresh."""
    train_data = split_arrays(cfg, task, task.train, setup.dtype)
    _, extra = training_for(cfg, task, setup, None).start(
        setup.params, setup.train_key, train_data
    )
    return {**setup.state(), **extra}


def load_run(run_dir: str | Path):
    """`(model, config, task)` of a saved run, the model from its newest valid
    checkpoint.

    **Raises:** `FileNotFoundError` if there is no run or no usable checkpoint.
    """
    model, cfg, task, _ = _load_run(run_dir)
    return model, cfg, task


def load_checkpoints(run_dir: str | Path) -> list[tuple[int, Model]]:
    """`(step, model)` for every valid checkpoint of a saved run, oldest first
    (e.g. for `rnnode.analysis.track_fixed_points`). Checkpoints that cannot
    be read are skipped.

    **Raises:** `FileNotFoundError` if there is no run or no usable checkpoint.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    out = []
    with x64_context(cfg):
        cfg, task, setup = prepare(cfg)
        like = _checkpoint_like(cfg, task, setup)
        for step, path in sorted(ckpt.list_checkpoints(run_dir)):
            try:
                _, state = ckpt.load_checkpoint(path, like)
            except Exception:  # a torn or foreign file: skip it
                continue
            out.append((int(step), setup.model_from(state["params"])))
    if not out:
        raise FileNotFoundError(f"{run_dir} has no usable checkpoint")
    return out


def evaluate(run_dir: str | Path) -> dict:
    """The test metrics of a saved run's newest valid checkpoint; also written
    to `RUN_DIR/eval.json`.

    **Raises:** `FileNotFoundError` if there is no run or no usable checkpoint;
    `EvaluationFailed` if the model's equilibrium does not converge on the test
    set under the run's `equilibrium:` settings (then nothing is written, and an
    earlier `eval.json` is left as it was).
    """
    run_dir = Path(run_dir)
    model, cfg, task, step = _load_run(run_dir)
    with x64_context(cfg):
        dtype = run_dtype(cfg)
        xs, ys, ws = split_arrays(cfg, task, task.test, dtype)
        try:
            _, outs, test_loss = _evaluate(
                model,
                xs,
                ys,
                ws,
                task.kind,
                loss_name(cfg, task),
                build_equilibrium(cfg),
            )
            test_loss = float(test_loss)  # errors surface here at the latest
        except eqx.EquinoxRuntimeError as e:
            raise EvaluationFailed(
                f"evaluating {run_dir} (step {step}) failed: {_runtime_message(e)} "
                "The forward solve is the run's `equilibrium:` section in "
                f"{run_dir / 'config.yaml'} (equilibrium.max_steps, "
                "equilibrium.damping, equilibrium.solver=anderson, "
                "equilibrium.step_size). Nothing was written."
            ) from None
        result = {
            "run_dir": str(run_dir),
            "step": step,
            "task": task.name,
            "test_loss": test_loss,
            "test": task.metrics(np.asarray(outs, dtype=np.float64), task.test),
            **_params_report(model, task),
            # where this evaluation ran, and where the run was trained
            "environment": environment(dtype=cfg.train.dtype, seed=cfg.train.seed),
            "trained_environment": (mt.read_summary(run_dir) or {}).get("environment"),
        }
    if _is_main():
        ckpt.atomic_write_text(
            run_dir / "eval.json", mt.to_json(result, indent=2) + "\n"
        )
    return result
