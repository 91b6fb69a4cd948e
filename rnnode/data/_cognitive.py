"""The machinery of the cognitive tasks (NeuroGym's conventions): per-period
timing in milliseconds, fixed or drawn; trials laid out step by step and built
for a whole batch at once; the cost mask of Yang et al. (2019); and the scoring
of choices (NeuroGym's decision accuracy, psychometric data).

The tasks themselves are in `_cognitive_tasks.py`.

Conventions (NeuroGym; Molano-Mazón et al. 2022, and Yang et al. 2019):

- time is in milliseconds; a period's duration is floored to a multiple of the
  task's `dt` (NeuroGym's `(t // dt) * dt`); periods follow one another from
  `t = 0` in a fixed order; trials shorter than `num_steps` are padded with
  zero input, the label "fixate" and weight 0;
- input channel 0 is fixation: 1 until the response period begins, 0 in it
  (its offset is the go cue);
- the output is a set of logits trained by cross-entropy on integer labels:
  label 0 is "fixate", labels `1..k` the choices; the label is 0 outside the
  response period;
- stimuli are coded on a ring (`cos(θ_i - θ) · coh/200 + 0.5` on `dim_ring`
  channels) or signed (one channel, `±coh/100`), and carry input noise of
  standard deviation `σ_in/√dt` per step (white noise of intensity `σ_in`);
- the first `grace` ms (100) are not scored, the response period is weighted
  `response_weight` (5) times the rest, and each trial's weights sum to 1.
"""

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from ._base import (
    Count,
    NonNegativeFloat,
    PositiveFloat,
    Split,
    TaskOptions,
    default_num_val,
    integer,
)

_DRAWS = ("uniform", "choice", "truncated_exponential")


def _timing(value):
    """A period's timing: a number (fixed, ms), a list of numbers (one drawn
    at random per trial, NeuroGym's convention) or a one-key mapping
    `{uniform: [low, high]}`, `{choice: [...]}`,
    `{truncated_exponential: [mean, low, high]}`."""
    if isinstance(value, bool):
        raise ValueError(f"a timing must be a number of ms, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return {"choice": [float(v) for v in value]}
    if isinstance(value, Mapping) and len(value) == 1:
        ((kind, args),) = value.items()
        args = [float(v) for v in args]
        sizes = {"uniform": (2,), "choice": None, "truncated_exponential": (3,)}
        if kind not in sizes:
            raise ValueError(
                f"unknown timing distribution {kind!r}; use one of {', '.join(_DRAWS)}"
            )
        if sizes[kind] is not None and len(args) not in sizes[kind]:
            raise ValueError(f"`{kind}` takes {sizes[kind][0]} numbers, got {args}")
        if not args:
            raise ValueError(f"`{kind}` needs at least one value")
        return {kind: args}
    raise ValueError(
        "a timing must be a number of ms, a list of them (drawn), or "
        "{uniform: [low, high]} / {choice: [...]} / "
        f"{{truncated_exponential: [mean, low, high]}}, got {value!r}"
    )


Timing = Annotated[float | dict[str, list[float]], BeforeValidator(_timing)]


def timing_bounds(t) -> tuple[float, float]:
    """The shortest and the longest duration (ms) a timing can give."""
    if isinstance(t, float):
        return t, t
    ((kind, args),) = t.items()
    if kind == "uniform":
        return min(args), max(args)
    if kind == "choice":
        return min(args), max(args)
    mean, lo, hi = args
    return lo, hi


def draw_timing(t, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` durations (ms) drawn from a timing."""
    if isinstance(t, float):
        return np.full(n, t)
    ((kind, args),) = t.items()
    if kind == "uniform":
        return rng.uniform(args[0], args[1], n)
    if kind == "choice":
        return rng.choice(np.asarray(args), n)
    mean, lo, hi = args
    if lo >= hi:
        return np.full(n, hi)
    # an exponential of mean `mean` restricted to [lo, hi), by inversion
    a, b = np.exp(-lo / mean), np.exp(-hi / mean)
    return -mean * np.log(a - rng.uniform(0.0, 1.0, n) * (a - b))


def cognitive_options(
    *, periods: dict[str, Any], optional: Sequence[str] = (), train_trials: int = 2048
):
    """A `TaskOptions` base for a cognitive task whose periods, in order, have
    the default timings `periods` (ms); `optional` names the periods that may
    last 0 ms (absent)."""

    class CognitiveOptions(TaskOptions):
        dt: PositiveFloat = 20.0
        """The step (ms): the model's integrator step, against its `τ` in ms."""
        num_steps: integer(ge=1) | None = None
        """Steps per trial sequence; `None`: the longest trial the timing allows.
        Shorter trials are padded (weight 0)."""
        num_train: Count = train_trials
        """Training trials."""
        num_val: Count | None = None
        """Validation trials, drawn like the training ones from a generator of
        their own (what evaluations during training and sweeps score); `None`:
        as many as `num_test`."""
        num_test: Count = 512
        """Test trials (scored once, at the end of a run)."""
        timing: dict[str, Timing] = Field(default_factory=lambda: dict(periods))
        """Each period's duration (ms): a number, a list to draw from, or
        `{uniform: [lo, hi]}` / `{choice: [...]}` /
        `{truncated_exponential: [mean, lo, hi]}`; the periods not named keep
        their defaults."""
        sigma_in: NonNegativeFloat = 1.0
        """Input noise: each stimulus channel gets `N(0, σ_in²/dt)` per step."""
        grace: NonNegativeFloat = 100.0
        """The first ms of each trial, not scored."""
        response_weight: PositiveFloat = 5.0
        """The response period's weight relative to the other scored steps."""

        @field_validator("timing", mode="before")
        @classmethod
        def _merge(cls, value):
            if not isinstance(value, Mapping):
                raise ValueError(f"must map period names to timings, got {value!r}")
            unknown = sorted(set(value) - set(periods))
            if unknown:
                raise ValueError(
                    f"unknown period {', '.join(map(repr, unknown))}; the periods "
                    f"are {', '.join(periods)}"
                )
            return {**periods, **value}

        @model_validator(mode="after")
        def _num_val(self):
            return default_num_val(self)

        @model_validator(mode="after")
        def _fits(self):
            for name, t in self.timing.items():
                lo, hi = timing_bounds(t)
                if lo < 0 or (lo < self.dt and not (name in optional and hi == 0)):
                    least = "0 or at least" if name in optional else "at least"
                    raise ValueError(
                        f"timing.{name}: {lo:g} ms is shorter than the step "
                        f"dt = {self.dt:g} ms; a period lasts {least} dt"
                    )
            need = self.max_steps()
            if self.num_steps is not None and self.num_steps < need:
                raise ValueError(
                    f"num_steps: {self.num_steps} steps of {self.dt:g} ms do not "
                    f"fit the longest trial ({need} steps); raise num_steps, or "
                    "leave it out to fit it"
                )
            return self

        def derived(self, durations: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            """Periods after those of `timing` whose durations (ms) follow from
            theirs (`ready_set_go`'s production); none by default."""
            del durations
            return {}

        def derived_max(self) -> dict[str, float]:
            """The longest duration (ms) of each of the `derived` periods."""
            return {}

        def max_steps(self) -> int:
            """The longest trial, in steps."""
            spans = [timing_bounds(t)[1] for t in self.timing.values()]
            spans += list(self.derived_max().values())
            return sum(_steps(ms, self.dt) for ms in spans)

        def steps(self) -> int:
            """`num_steps`, or the longest trial."""
            return self.max_steps() if self.num_steps is None else self.num_steps

    return CognitiveOptions


def coherences(default: Sequence[float]):
    """The type of a `cohs` option: coherences in percent, in [0, 100]."""

    def check(value):
        value = [float(v) for v in value]
        if not value:
            raise ValueError("needs at least one coherence")
        bad = [v for v in value if not 0 <= v <= 100]
        if bad:
            raise ValueError(f"coherences are percentages in [0, 100], got {bad}")
        return value

    return Annotated[list[float], BeforeValidator(check), Field(default=list(default))]


Coding = Literal["ring", "signed"]


class Layout:
    """The periods of a batch of `n` trials: `start[p]`, `stop[p]` (step
    indices, `(n,)`) and the boolean masks `(T, n)` of each period."""

    def __init__(self, o, n: int, rng: np.random.Generator, durations=None):
        T = o.steps()
        durations = dict(durations or {})
        self.T, self.n, self.dt = T, n, o.dt
        self.start, self.stop = {}, {}
        t = np.zeros(n, dtype=np.int64)
        self.ms = {}  # each period's duration in ms, floored to whole steps
        for name, timing in o.timing.items():
            ms = durations.get(name)
            if ms is None:
                ms = draw_timing(timing, n, rng)
            self.ms[name] = _steps(np.broadcast_to(ms, (n,)), o.dt) * o.dt
        self.ms.update(o.derived(dict(self.ms)))
        for name, ms in self.ms.items():
            self.start[name] = t
            t = t + _steps(ms, o.dt)
            self.stop[name] = t
        self.end = t
        self._steps = np.arange(T)[:, None]

    def mask(self, *names: str) -> np.ndarray:
        """`(T, n)`: true in the periods `names`."""
        m = np.zeros((self.T, self.n), dtype=bool)
        for p in names:
            m |= (self._steps >= self.start[p]) & (self._steps < self.stop[p])
        return m

    def before(self, name: str) -> np.ndarray:
        """`(T, n)`: true from the trial's start until period `name` begins."""
        return self._steps < self.start[name]

    def weights(self, o, response: str) -> np.ndarray:
        """Yang et al.'s cost mask: 0 in the first `grace` ms and after the
        trial's end, `response_weight` in the period `response`, 1 elsewhere;
        each trial's weights summing to 1."""
        w = (self._steps < self.end).astype(float)
        w[: _steps(o.grace, o.dt)] = 0.0
        w[self.mask(response)] *= o.response_weight
        return w / np.maximum(w.sum(axis=0, keepdims=True), 1e-300)

    def conditions(self, response: str, **facts) -> dict[str, np.ndarray]:
        """The per-trial facts of a split: the given ones, the response period
        (`response_start`, `response_stop`), the end, and each period's start."""
        out = {k: np.asarray(v) for k, v in facts.items()}
        out["response_start"] = self.start[response]
        out["response_stop"] = self.stop[response]
        out["end"] = self.end
        out["dt"] = np.full(self.n, self.dt)
        for p in self.start:
            out[f"start_{p}"] = self.start[p]
        return out

    def noise(self, o, rng, channels: int, *names: str) -> np.ndarray:
        """`(T, n, channels)`: the input noise, `N(0, σ_in²/dt)` in the periods
        `names`, 0 elsewhere."""
        z = rng.standard_normal((self.T, self.n, channels)) * (
            o.sigma_in / math.sqrt(o.dt)
        )
        return z * self.mask(*names)[..., None]


def stimulus(coding: str, theta, coh, dim_ring: int = 2) -> np.ndarray:
    """The mean stimulus of trials with directions `theta` (radians, `(n,)`)
    and coherences `coh` (percent, `(n,)`): `(n, dim_ring)` ring coding
    `cos(θ_i - θ) · coh/200 + 0.5`, or `(n, 1)` signed coding `cos(θ) · coh/100`
    (`+coh/100` for the first choice, `-coh/100` for the second)."""
    theta = np.asarray(theta, dtype=float)[:, None]
    coh = np.asarray(coh, dtype=float)[:, None]
    if coding == "signed":
        return np.cos(theta) * coh / 100.0
    ring = np.linspace(0, 2 * np.pi, dim_ring, endpoint=False)[None, :]
    return np.cos(ring - theta) * coh / 200.0 + 0.5


def ring_angles(dim_ring: int) -> np.ndarray:
    """The directions of the ring's channels (and of the choices)."""
    return np.linspace(0, 2 * np.pi, dim_ring, endpoint=False)


def labels(layout: Layout, response: str, choice) -> np.ndarray:
    """`(T, n)` integer labels: 0 ("fixate") everywhere but the response
    period, where it is `choice` (`(n,)`)."""
    ys = np.zeros((layout.T, layout.n), dtype=np.int64)
    return np.where(layout.mask(response), np.asarray(choice)[None, :], ys)


# scoring


def responses(outputs, split: Split) -> dict[str, np.ndarray]:
    """NeuroGym's reading of a network's actions (the argmax of its logits at
    each step), per trial:

    - `response`: the first non-fixation action in the response period (the
      one that ends a NeuroGym trial), 0 if the network kept fixating;
    - `broke_fixation`: a non-fixation action at a scored step before the
      response period;
    - `choice`: the preferred choice, `1..k`, by the logits summed over the
      response period (always defined; for psychometric curves).
    """
    out = np.asarray(outputs, dtype=np.float64)
    c = split.conditions
    T, n = out.shape[:2]
    steps = np.arange(T)[:, None]
    action = np.argmax(out, axis=-1)
    in_resp = (steps >= c["response_start"]) & (steps < c["response_stop"])
    w = split.weights
    w = np.broadcast_to(w[:, None] if w.ndim == 1 else w, (T, n))
    early = (steps < c["response_start"]) & (w > 0)
    acting = in_resp & (action != 0)
    first = np.argmax(acting, axis=0)
    response = np.where(acting.any(axis=0), action[first, np.arange(n)], 0)
    summed = np.sum(out[..., 1:] * in_resp[..., None], axis=0)
    return {
        "response": response,
        "broke_fixation": np.any(early & (action != 0), axis=0),
        "choice": 1 + np.argmax(summed, axis=-1),
    }


def choice_metrics(outputs, split: Split, *, by: str | None = None) -> dict[str, float]:
    """NeuroGym's decision accuracy: a trial is correct when its `response`
    (see `responses`) is its ground truth and it did not break fixation.
    Also `fixation_break_rate`, `no_response_rate`, `chance_accuracy` and,
    with `by` (a condition, e.g. the unsigned coherence), `accuracy_<by>_<v>`
    for each of its values."""
    r = responses(outputs, split)
    c = split.conditions
    truth = c["ground_truth"]
    correct = (r["response"] == truth) & ~r["broke_fixation"]
    choices = int(c["num_choices"][0])
    m = {
        "accuracy": float(np.mean(correct)),
        "fixation_break_rate": float(np.mean(r["broke_fixation"])),
        "no_response_rate": float(np.mean((r["response"] == 0) & (truth != 0))),
        "chance_accuracy": 1.0 / choices,
    }
    if by is not None:
        for v in np.unique(c[by]):
            m[f"accuracy_{by}_{v:g}"] = float(np.mean(correct[c[by] == v]))
    return m


def choice_slopes(choice_first, regressors: dict[str, np.ndarray]) -> dict[str, float]:
    """The least-squares slopes of `P(choice = 1)` (a 0/1 array) on the given
    regressors together (a linear probability model with an intercept), per
    percent of coherence."""
    names = list(regressors)
    X = np.column_stack([np.ones(len(choice_first))] + [regressors[k] for k in names])
    beta, *_ = np.linalg.lstsq(X, np.asarray(choice_first, dtype=float), rcond=None)
    return dict(zip(names, (float(b) for b in beta[1:]), strict=True))


def psychometric(x, choice_first) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(values, p, n)`: for each distinct value of `x` (a signed coherence),
    the fraction of trials choosing the first option and the trial count."""
    x = np.asarray(x, dtype=float)
    values = np.unique(x)
    p = np.array([np.mean(choice_first[x == v]) for v in values])
    n = np.array([np.sum(x == v) for v in values])
    return values, p, n


def _steps(ms, dt: float):
    """Whole steps of `dt` in `ms` (floored, with a little slack for rounding)."""
    s = np.floor(np.asarray(ms, dtype=float) / dt + 1e-9).astype(np.int64)
    return int(s) if s.ndim == 0 else s
