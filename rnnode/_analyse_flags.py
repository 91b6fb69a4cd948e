"""The fixed-point and line-attractor flags of `rnnode analyse`: their checks
(a problem is one line, exit status 2) and the `run_analysis` options they
become."""

import math

SEARCH_FLAGS = {
    "input": ("fixed_points",),
    "tol": ("fixed_points",),
    "starts": ("fixed_points", "line_attractor"),
    "tols": ("fixed_points", "line_attractor"),
    "starts_from": ("fixed_points",),
    "noise": ("fixed_points", "line_attractor"),
    "method": ("fixed_points",),
    "per_context": ("fixed_points",),
    "selection": ("fixed_points", "line_attractor"),
}


def fixed_point_flags_problem(args) -> str | None:
    """What is wrong with the fixed-point flags, or `None`."""
    for name, owners in SEARCH_FLAGS.items():
        value = getattr(args, name, None)
        if value not in (None, False) and args.what not in owners:
            flag = "--" + name.replace("_", "-")
            return (
                f"{flag}: only used by --what {' or '.join(owners)}, not "
                f"{args.what}; leave it out"
            )
    if args.tol is not None and args.tols is not None:
        return "--tols: give either --tol or --tols, not both"
    if args.tols is not None:
        try:
            tols = [float(v) for v in args.tols.split(",")]
        except ValueError:
            return f"--tols: expected comma-separated numbers such as 1e-8,1e-6, got {args.tols!r}"
        if not all(t > 0 and math.isfinite(t) for t in tols):
            return f"--tols: each must be a finite number > 0, got {args.tols!r}"
    if args.noise is not None and not (args.noise >= 0 and math.isfinite(args.noise)):
        return f"--noise: must be a finite number >= 0, got {args.noise}"
    if args.selection is not None:
        try:
            [int(v) for v in args.selection.split(",")]
        except ValueError:
            return f"--selection: expected comma-separated input indices such as 1,2, got {args.selection!r}"
    if args.tol is not None and not args.tol > 0:  # also NaN
        return f"--tol: must be > 0, got {args.tol}"
    if args.starts is not None and args.starts < 1:
        return f"--starts: must be >= 1, got {args.starts}"
    if args.input is not None:
        try:
            values = [float(v) for v in args.input.split(",")]
        except ValueError:
            return (
                f"--input: expected comma-separated numbers such as 0,0,0, got "
                f"{args.input!r}"
            )
        if not all(math.isfinite(v) for v in values):
            return f"--input: the values must be finite, got {args.input!r}"
    return None


def search_options(args, task) -> tuple[dict, str | None]:
    """The options of `run_analysis` for the fixed-point flags, or a problem."""
    out = {"noise": args.noise, "method": args.method, "starts_from": args.starts_from}
    if args.tols is not None:
        out["tol"] = [float(v) for v in args.tols.split(",")]
    if args.what == "line_attractor":
        out.pop("starts_from")
        out.pop("method")
    if args.per_context or args.what == "line_attractor":
        contexts = task.test.conditions.get("context")
        if contexts is None:
            flag = "--per-context" if args.per_context else "--what line_attractor"
            return out, (
                f"{flag}: task {task.name} has no `context` condition; use a task "
                "with contexts (e.g. context)"
            )
        out["contexts"] = contexts[: args.sequences]
    if args.selection is not None:
        sel = [int(v) for v in args.selection.split(",")]
        if not all(0 <= j < task.input_size for j in sel):
            return out, (
                f"--selection: input indices must be in [0, {task.input_size}), "
                f"got {args.selection!r}"
            )
        out["stimulus"] = sel
    elif args.what == "line_attractor":
        if task.name != "context":
            return out, "--selection: give the stimulus inputs, e.g. --selection 1,2"
        out["stimulus"] = list(range(1, task.input_size - 2))  # the two streams
    return out, None


def fixed_point_input(text: str | None, task) -> tuple[list[float], str]:
    """The constant input of `--input` (checked), else the task's resting input,
    else zeros; and words for where it came from."""
    if text is not None:
        return [float(v) for v in text.split(",")], "given"
    if task.rest_input is not None:
        label = ", ".join(f"{v:g}" for v in task.rest_input)
        return list(task.rest_input), f"{label}: the task's resting input"
    zeros = [0.0] * task.input_size
    label = ", ".join("0" for _ in zeros)
    return zeros, f"{label}: zeros, task {task.name} defines no resting input"
