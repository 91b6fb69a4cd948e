"""The `rnnode` command (also `python -m rnnode`)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import warnings
from pathlib import Path

from ._analyse_flags import (
    fixed_point_flags_problem,
    fixed_point_input,
    search_options,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_DIVERGED = 3

_EPILOG = textwrap.dedent(
    """\
    examples:
      rnnode train                              the built-in quickstart (~20 s on 2 CPU cores)
      rnnode train configs/sine.yaml            a config file
      rnnode train sine optim.lr=3e-3 train.steps=500
                                                a built-in config, with dotted overrides
      rnnode eval runs/sine                     test metrics of a saved run
      rnnode resume runs/sine                   continue a stopped run
      rnnode list                               the built-in configs and the tasks
      rnnode analyse runs/sine --what fixed_points
      rnnode config sine model.hidden_size=64   print the resolved config, run nothing
      rnnode sweep configs/sweeps/sine.yaml --workers 2
                                                search hyperparameters with Optuna

    exit status: 0 success, 1 error, 2 invalid config or usage, 3 loss became NaN/inf or a solve did not converge
    """
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rnnode",
        description=(
            "Train recurrent networks as differentiable dynamical systems from YAML "
            "configs: CTRNNs, Elman, LSTM and GRU cells, damped oscillators; "
            "gradients by autodiff, BPTT, RTRL or implicit differentiation."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from importlib.metadata import version

    __version__ = version("rnnode")

    p.add_argument("--version", action="version", version=f"rnnode {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    overrides_help = (
        "dotted KEY=VALUE overrides of the config, values read as YAML "
        "(e.g. optim.lr=1e-3 model.hidden_size=128 train.steps=200)"
    )

    t = sub.add_parser(
        "train",
        help="train a model from a config (default: the built-in quickstart)",
        description=(
            "Train from a YAML config: a file path or the name of a built-in config "
            "(see `rnnode list`); with none, the built-in quickstart. Results go to "
            "the config's out_dir (default runs/<config name>; -2, -3, … if taken): "
            "config.yaml, metrics.jsonl, train_loss.csv, summary.json, "
            "checkpoints/, plots/. Config keys: task, model, gradient, loss, optim, "
            "train, out_dir, devices, distributed; `rnnode config NAME` prints a "
            "config with every key and its value."
        ),
        epilog=(
            "examples:\n  rnnode train\n  rnnode train configs/adding.yaml\n"
            "  rnnode train sine optim.lr=3e-3 model.hidden_size=64\n"
            "  rnnode train configs/sine.yaml --resume"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "args",
        nargs="*",
        metavar="CONFIG | KEY=VALUE",
        help="a config file or built-in name (optional, first), then " + overrides_help,
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the config's out_dir from its last checkpoint",
    )
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser(
        "resume",
        help="continue a stopped run from its last valid checkpoint",
        description=(
            "Continue the run in RUN_DIR from its newest valid checkpoint (a corrupt "
            "or truncated one is skipped with a warning). The run's saved "
            "config.yaml is used; overrides may change it, e.g. train.steps=2000 to "
            "train longer. An uninterrupted run and a stopped-and-resumed one reach "
            "bit-identical parameters."
        ),
    )
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser(
        "eval",
        help="evaluate a saved run on its test split",
        description=(
            "Load RUN_DIR's newest valid checkpoint, compute the test loss and the "
            "task's metrics (with baselines), print them and write RUN_DIR/eval.json."
        ),
    )
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--json", action="store_true", help="print JSON only")

    sub.add_parser(
        "list",
        help="list the built-in configs and the tasks",
        description="List the built-in configs (usable by name) and the tasks.",
    )

    a = sub.add_parser(
        "analyse",
        aliases=["analyze"],
        help="analyse a trained model's dynamics (fixed points, Lyapunov, …)",
        description=(
            "Run one analysis of rnnode.analysis on RUN_DIR's model and some of its "
            "test inputs; writes RUN_DIR/analysis/<what>.json and <what>.png. "
            "fixed_points prints a table (counts by stability; per point its "
            "speed, largest eigenvalue and readout) and draws a 3-D PCA of the "
            "visited states."
        ),
    )
    a.add_argument("run_dir", metavar="RUN_DIR")
    a.add_argument(
        "--what",
        required=True,
        metavar="NAME",
        help="which analysis (see `rnnode analyse RUN_DIR --what list`)",
    )
    a.add_argument(
        "--sequences",
        type=int,
        default=16,
        metavar="N",
        help="how many test sequences to pass to the analysis (default 16)",
    )
    a.add_argument(
        "--input",
        metavar="X1,X2,…",
        help="fixed_points: the constant input to analyse, comma-separated (default: "
        "the task's resting input, e.g. 0,0,0 for the flip-flop; zeros if it has none)",
    )
    a.add_argument(
        "--tol",
        type=float,
        metavar="TOL",
        help="fixed_points: the largest speed ||F|| kept as a fixed point; raise it "
        "to keep slow points too (default 1e-8 in float64, ~1e-5 in float32)",
    )
    a.add_argument(
        "--starts",
        type=int,
        metavar="N",
        help="fixed_points: how many starts, drawn from the visited states plus "
        "noise (default 64)",
    )
    a.add_argument(
        "--tols",
        metavar="T1,T2,…",
        help="fixed_points, line_attractor: several largest speeds; points up to "
        "the largest are kept (slow points), the search goes on to the smallest",
    )
    a.add_argument(
        "--starts-from",
        choices=("states", "noise"),
        help="fixed_points: starts from the visited states plus noise (default) "
        "or from noise around 0",
    )
    a.add_argument(
        "--noise",
        type=float,
        metavar="STD",
        help="fixed_points, line_attractor: the std of the noise added to the "
        "starts (default 10%% of the states' std; 1 from noise)",
    )
    a.add_argument(
        "--method",
        choices=("optimise", "newton"),
        help="fixed_points: Adam then Newton (default) or Levenberg-Marquardt",
    )
    a.add_argument(
        "--per-context",
        action="store_true",
        help="fixed_points: search under each context's input (tasks with a "
        "`context` condition, e.g. context), from that context's states",
    )
    a.add_argument(
        "--selection",
        metavar="I,J",
        help="fixed_points, line_attractor: the stimulus inputs (0-based) on "
        "which to project the slow mode's selection vector (default for the "
        "context task: its two streams)",
    )

    from .sweep import add_sweep_parser

    add_sweep_parser(sub, overrides_help)

    c = sub.add_parser(
        "config",
        help="validate a config and print it fully resolved (runs nothing)",
        description="Validate a config with overrides and print the resolved YAML.",
    )
    c.add_argument("args", nargs="*", metavar="CONFIG | KEY=VALUE")
    return p


def _err(msg: str) -> None:
    for line in str(msg).splitlines() or [""]:
        print(f"rnnode: error: {line}", file=sys.stderr)


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    from .train.config import ConfigError

    config = None
    overrides = []
    for i, a in enumerate(args):
        if "=" in a:
            overrides.append(a)
        elif i == 0:
            config = a
        else:
            raise ConfigError(
                [f"argument {a!r}: expected KEY=VALUE (the config must come first)"]
            )
    return config, overrides


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _metrics_line(test: dict) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in test.items())


def _cmd_train(args) -> int:
    from .train import load_config, load_run_config, train

    if args.command == "resume":
        run_dir = Path(args.run_dir)
        if not (run_dir / "config.yaml").is_file():
            _err(f"{run_dir} is not an rnnode run (no config.yaml)")
            return EXIT_ERROR
        cfg = load_run_config(run_dir)
        if args.overrides:
            from .train.config import apply_overrides, dump_config, validate_config

            raw = apply_overrides(dump_config(cfg), list(args.overrides))
            cfg = validate_config(raw)
            cfg.out_dir = str(run_dir)
        resume = True
    else:
        config, overrides = _split_args(args.args)
        cfg = load_config(config, overrides)
        resume = args.resume
    summary = train(cfg, resume=resume, progress=not args.quiet)
    run_dir = summary["run_dir"]
    rate = summary.get("steps_per_s")
    print(
        f"Finished {summary['steps']} steps in {summary['wall_time_s']:.1f} s"
        + (f" ({rate:.0f} steps/s)" if rate else "")
        + f"; test loss {summary['test_loss']:.4g}"
    )
    if summary.get("test"):
        print(f"Test metrics: {_metrics_line(summary['test'])}")
    if summary.get("fitted_params"):
        print(
            f"Fitted parameters: {summary['fitted_params']} "
            f"(true: {summary.get('true_params')})"
        )
    print(f"Results in {run_dir}/")
    print("  summary.json  metrics.jsonl  train_loss.csv  config.yaml  checkpoints/")
    for _, path in summary.get("files", {}).items():
        print(f"  {path}")
    print(f"Next: rnnode eval {run_dir}   |   rnnode resume {run_dir} train.steps=N")
    return EXIT_OK


def _cmd_eval(args) -> int:
    from .train import evaluate, format_environment

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        _err(f"{run_dir} is not an rnnode run (no config.yaml)")
        return EXIT_ERROR
    result = evaluate(run_dir)
    if args.json:
        from .train import to_json

        print(to_json(result, indent=2))
        return EXIT_OK
    print(f"{run_dir} (task {result['task']}, step {result['step']}):")
    print(f"  test loss {result['test_loss']:.6g}")
    for k, v in result["test"].items():
        print(f"  {k} {_fmt(v)}")
    if result.get("fitted_params"):
        print(f"  fitted parameters {result['fitted_params']}")
        print(f"  true parameters   {result.get('true_params')}")
    for what, key in (("trained", "trained_environment"), ("evaluated", "environment")):
        env = result.get(key)
        text = format_environment(env) if env else "not recorded"
        print(f"  {what} with " + text.replace("\n", "\n    "))
    print(f"(written to {run_dir / 'eval.json'})")
    return EXIT_OK


def _cmd_list(args) -> int:
    from .train.config import builtin_config_dir, builtin_configs, parse_yaml

    print("Built-in configs (rnnode train NAME, or a copy from configs/):")
    for name, path in builtin_configs().items():
        try:
            desc = (parse_yaml(path.read_text()) or {}).get("description", "")
        except Exception:  # noqa: BLE001
            desc = ""
        print(f"  {name:<18} {desc}")
    print(f"  (in {builtin_config_dir()})")
    print()
    print("Tasks (task.name):")
    from . import data

    tasks = data.list_tasks()
    for name, desc in tasks:
        print(f"  {name:<18} {desc}")
    return EXIT_OK


def _cmd_config(args) -> int:
    from .train.config import config_to_yaml, load_config

    config, overrides = _split_args(args.args)
    cfg = load_config(config, overrides)
    sys.stdout.write(config_to_yaml(cfg))
    return EXIT_OK


def _cmd_analyse(args) -> int:
    from . import analysis

    choices = list(getattr(analysis, "ANALYSES", []))
    if args.what == "list":
        print("Analyses: " + ", ".join(choices))
        return EXIT_OK
    if choices and args.what not in choices:
        _err(
            f"--what: unknown analysis {args.what!r}; choose one of {', '.join(choices)}"
        )
        return EXIT_CONFIG
    if args.sequences < 1:
        _err(f"--sequences: must be >= 1, got {args.sequences}")
        return EXIT_CONFIG
    problem = fixed_point_flags_problem(args)
    if problem:
        _err(problem)
        return EXIT_CONFIG
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        _err(f"{run_dir} is not an rnnode run (no config.yaml)")
        return EXIT_ERROR
    from .train import load_run, run_dtype, step_loss, x64_context

    model, cfg, task = load_run(run_dir)
    options = {}
    if args.what in ("fixed_points", "line_attractor"):
        extra, problem = search_options(args, task)
        if problem:
            _err(problem)
            return EXIT_CONFIG
        options |= extra
    if args.what == "line_attractor":
        options["num_starts"] = args.starts
    if args.what == "fixed_points":
        x, source = fixed_point_input(args.input, task)
        if len(x) != task.input_size:
            _err(
                f"--input: the model takes {task.input_size} input(s), got {len(x)} "
                f"value(s) {args.input!r}; give {task.input_size} comma-separated numbers"
            )
            return EXIT_CONFIG
        options |= {"x": x, "num_starts": args.starts}
        options["tol"] = options.get("tol") or args.tol
    with x64_context(cfg):
        import jax.numpy as jnp

        xs = jnp.asarray(task.test.xs[:, : args.sequences], dtype=run_dtype(cfg))
        ys = task.test.ys[:, : args.sequences]
        ys = jnp.asarray(ys) if ys.dtype.kind in "iu" else jnp.asarray(ys, xs.dtype)
        loss = step_loss(task.loss)
        out_dir = run_dir / "analysis"
        out_dir.mkdir(exist_ok=True)
        weights = task.test.weights
        weights = weights if weights.ndim == 1 else weights[:, : args.sequences]
        result = analysis.run_analysis(
            model,
            xs,
            what=args.what,
            out_dir=out_dir,
            ys=ys,
            loss=loss,
            weights=jnp.asarray(weights, xs.dtype),
            **options,
        )
    if args.what == "alignment":
        print(analysis.GradientAlignment.from_dict(result))
    elif args.what == "fixed_points":
        where = (
            "per context" if args.per_context else f"at input ({args.input or source})"
        )
        print(f"{run_dir}: fixed points {where}")
        print(analysis.fixed_point_table(result))
    elif args.what == "line_attractor":
        print(f"{run_dir}: slow points per context")
        print(analysis.line_attractor_table(result))
    else:
        from .train import to_json

        text = to_json(result, indent=2, default=lambda o: repr(o))
        lines = text.splitlines()
        print("\n".join(lines[:40] + (["  …"] if len(lines) > 40 else [])))
    print(f"Results in {out_dir}/ ({args.what}.json, {args.what}.png)")
    return EXIT_OK


def _cmd_sweep(args) -> int:
    from .sweep import sweep_command

    return sweep_command(args)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    # overrides may come after options (`train cfg -q a.b=1`): argparse's `*`
    # positionals take only the first run of them, so collect the rest here
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [a for a in extra if a.startswith("-")]
        target = {
            "train": "args",
            "config": "args",
            "resume": "overrides",
            "sweep": "overrides",
        }.get(args.command)
        if bad or target is None:
            parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
        setattr(args, target, [*getattr(args, target), *extra])
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    from .train import EvaluationFailed, TrainingDiverged
    from .train.config import ConfigError

    handlers = {
        "train": _cmd_train,
        "resume": _cmd_train,
        "eval": _cmd_eval,
        "list": _cmd_list,
        "analyse": _cmd_analyse,
        "analyze": _cmd_analyse,
        "config": _cmd_config,
        "sweep": _cmd_sweep,
    }
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*jax_enable_x64.*")
            return handlers[args.command](args)
    except ConfigError as e:
        for line in e.errors:
            _err(line)
        return EXIT_CONFIG
    except (TrainingDiverged, EvaluationFailed) as e:
        _err(str(e))
        return EXIT_DIVERGED
    except FileNotFoundError as e:
        _err(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(
            "\nrnnode: interrupted; `rnnode resume RUN_DIR` continues from the last "
            "checkpoint",
            file=sys.stderr,
        )
        return 130


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


_unused = json
