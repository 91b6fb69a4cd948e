"""The cognitive tasks, after NeuroGym's (Molano-Mazón et al. 2022): perceptual
decision making, context-dependent integration, delayed match to sample,
go/no-go and ready-set-go. The conventions (timing in ms, fixation channel 0,
label 0 = fixate, ring or signed coding, input noise, cost mask) are those of
`_cognitive.py`."""

import functools

import numpy as np
from pydantic import Field

from ._base import (
    NonNegativeFloat,
    PositiveFloat,
    Split,
    Task,
    classification_metrics,
    rngs,
)
from ._cognitive import (
    Coding,
    Layout,
    choice_metrics,
    choice_slopes,
    cognitive_options,
    coherences,
    labels,
    responses,
    ring_angles,
    stimulus,
    timing_bounds,
)

# decision


class DecisionOptions(
    cognitive_options(
        periods={
            "fixation": 100.0,
            "stimulus": 2000.0,
            "delay": 0.0,
            "decision": 100.0,
        },
        optional=("delay",),
    )
):
    """Options of `decision` (timing defaults: NeuroGym's
    `PerceptualDecisionMaking`)."""

    cohs: coherences([0.0, 6.4, 12.8, 25.6, 51.2])
    """Motion coherences (percent), one drawn per trial."""
    coding: Coding = "ring"
    """`ring`: two stimulus channels `cos(θ_i - θ) coh/200 + 0.5`; `signed`: one
    channel `±coh/100`."""


def decision(o: DecisionOptions, *, seed: int) -> Task:
    """Perceptual decision making (random dots; Britten et al. 1992, NeuroGym's
    `PerceptualDecisionMaking`): report the direction of a noisy stimulus.

    Periods `fixation`, `stimulus`, `delay`, `decision`. Inputs: fixation (1
    until the decision period), the stimulus (ring: 2 channels; signed: 1) with
    input noise in the stimulus period. Labels: 0 (fixate) until the decision
    period, then the direction, 1 or 2. The signed coherence is positive for
    direction 1.

    **Metrics:** NeuroGym's `accuracy` (the first non-fixation action in the
    decision period is the direction, no fixation broken before),
    `accuracy_coherence_<c>` per coherence, `fixation_break_rate`,
    `no_response_rate`, `chance_accuracy` (0.5), and `psychometric_monotone`
    (1 when `P(choice 1)` does not decrease with the signed coherence).
    """
    T = o.steps()

    def split(n, rng):
        lay = Layout(o, n, rng)
        truth = rng.integers(0, 2, n)
        coh = rng.choice(np.asarray(o.cohs), n)
        mean = stimulus(o.coding, ring_angles(2)[truth], coh)
        xs = np.zeros((T, n, 1 + mean.shape[1]))
        xs[..., 0] = lay.before("decision")
        xs[..., 1:] = mean * lay.mask("stimulus")[..., None]
        xs[..., 1:] += lay.noise(o, rng, mean.shape[1], "stimulus")
        return Split(
            xs=xs,
            ys=labels(lay, "decision", truth + 1),
            weights=lay.weights(o, "decision"),
            conditions=lay.conditions(
                "decision",
                ground_truth=truth + 1,
                coherence=coh,
                signed_coherence=np.where(truth == 0, coh, -coh),
                num_choices=np.full(n, 2),
            ),
        )

    return _task(
        "decision",
        o,
        split,
        seed=seed,
        outputs=3,
        metrics=decision_metrics,
        info={
            "inputs": ["fixation"]
            + (["stimulus_1", "stimulus_2"] if o.coding == "ring" else ["stimulus"]),
            "outputs": ["fixate", "choice_1", "choice_2"],
            "cohs": list(o.cohs),
        },
    )


def decision_metrics(outputs, split: Split) -> dict[str, float]:
    """The metrics of `decision` (see there)."""
    m = choice_metrics(outputs, split, by="coherence")
    first = responses(outputs, split)["choice"] == 1
    x = split.conditions["signed_coherence"]
    p = [np.mean(first[x == v]) for v in np.unique(x)]
    m["psychometric_monotone"] = float(np.all(np.diff(p) >= 0))
    return m


# context


class ContextOptions(
    cognitive_options(
        periods={
            "fixation": 300.0,
            "stimulus": 750.0,
            "delay": {"truncated_exponential": [600.0, 300.0, 3000.0]},
            "decision": 100.0,
        },
        optional=("delay",),
    )
):
    """Options of `context` (timing defaults: NeuroGym's
    `ContextDecisionMaking`)."""

    cohs: coherences([5.0, 15.0, 50.0])
    """Coherences (percent) of each stream, drawn independently per trial."""
    coding: Coding = "signed"
    """`signed` (default, Mante et al.'s model): one channel per stream,
    `±coh/100`; `ring`: two per stream (NeuroGym)."""


def context(o: ContextOptions, *, seed: int) -> Task:
    """Context-dependent integration (Mante, Sussillo, Shenoy & Newsome 2013;
    NeuroGym's `ContextDecisionMaking` with an explicit context): two noisy
    streams (motion and colour), a context cue; report the sign of the
    relevant stream, ignoring the other.

    Periods `fixation`, `stimulus`, `delay`, `decision`. Inputs: fixation (1
    until the decision period), stream 1 and stream 2 (signed: one channel
    each; ring: two each) with input noise in the stimulus period, and two
    context channels, one-hot for the whole trial (context 1: stream 1 is
    relevant). Labels: 0 until the decision period, then the relevant stream's
    direction (1: positive, 2: negative).

    Conditions: `context` (1 or 2), `coherence_1`, `coherence_2` (signed,
    percent), `relevant_coherence`, `irrelevant_coherence` (signed) and
    `coherence` (the relevant one, unsigned).

    **Metrics:** NeuroGym's `accuracy` and `accuracy_coherence_<c>` by the
    relevant coherence, `fixation_break_rate`, `no_response_rate`,
    `chance_accuracy`; per context `k`, `slope_relevant_context<k>` and
    `slope_irrelevant_context<k>`, the least-squares slopes of `P(choice 1)`
    on both signed coherences together (per percent), and their ratio
    `slope_ratio_context<k>` = |relevant| / |irrelevant|.
    """
    T = o.steps()

    def split(n, rng):
        lay = Layout(o, n, rng)
        ctx = rng.integers(0, 2, n)
        truth = rng.integers(0, 2, n)
        other = rng.integers(0, 2, n)
        coh = rng.choice(np.asarray(o.cohs), (2, n))
        dirs = np.where(ctx == 0, [truth, other], [other, truth])
        signed = np.where(dirs == 0, coh, -coh)
        streams = [
            stimulus(o.coding, ring_angles(2)[d], c)
            for d, c in zip(dirs, coh, strict=True)
        ]
        ch = streams[0].shape[1]
        xs = np.zeros((T, n, 1 + 2 * ch + 2))
        xs[..., 0] = lay.before("decision")
        stim = lay.mask("stimulus")[..., None]
        for k, mean in enumerate(streams):
            sl = slice(1 + k * ch, 1 + (k + 1) * ch)
            xs[..., sl] = mean * stim + lay.noise(o, rng, ch, "stimulus")
        in_trial = np.arange(T)[:, None] < lay.end
        xs[..., -2] = in_trial & (ctx == 0)
        xs[..., -1] = in_trial & (ctx == 1)
        rel = np.where(ctx == 0, signed[0], signed[1])
        irr = np.where(ctx == 0, signed[1], signed[0])
        return Split(
            xs=xs,
            ys=labels(lay, "decision", truth + 1),
            weights=lay.weights(o, "decision"),
            conditions=lay.conditions(
                "decision",
                ground_truth=truth + 1,
                context=ctx + 1,
                coherence_1=signed[0],
                coherence_2=signed[1],
                relevant_coherence=rel,
                irrelevant_coherence=irr,
                coherence=np.abs(rel),
                num_choices=np.full(n, 2),
            ),
        )

    stream = ["stream_1"] if o.coding == "signed" else ["stream_1a", "stream_1b"]
    stream2 = [s.replace("1", "2") for s in stream]
    return _task(
        "context",
        o,
        split,
        seed=seed,
        outputs=3,
        metrics=context_metrics,
        info={
            "inputs": ["fixation", *stream, *stream2, "context_1", "context_2"],
            "outputs": ["fixate", "choice_1", "choice_2"],
            "cohs": list(o.cohs),
        },
        # fixation on, no evidence, context 1 (analyses set the cue they want)
        rest=(1.0,) + (0.0,) * (2 * len(stream)) + (1.0, 0.0),
    )


def context_metrics(outputs, split: Split) -> dict[str, float]:
    """The metrics of `context` (see there)."""
    m = choice_metrics(outputs, split, by="coherence")
    c = split.conditions
    first = responses(outputs, split)["choice"] == 1
    for k in (1, 2):
        sel = c["context"] == k
        s = choice_slopes(
            first[sel],
            {
                "relevant": c["relevant_coherence"][sel],
                "irrelevant": c["irrelevant_coherence"][sel],
            },
        )
        m[f"slope_relevant_context{k}"] = s["relevant"]
        m[f"slope_irrelevant_context{k}"] = s["irrelevant"]
        m[f"slope_ratio_context{k}"] = abs(s["relevant"]) / max(
            abs(s["irrelevant"]), 1e-9
        )
    return m


# delay_match


class DelayMatchOptions(
    cognitive_options(
        periods={
            "fixation": 300.0,
            "sample": 500.0,
            "delay": 1000.0,
            "test": 500.0,
            "decision": 900.0,
        },
        optional=("delay",),
    )
):
    """Options of `delay_match` (timing defaults: NeuroGym's
    `DelayMatchSample`)."""

    coding: Coding = "ring"
    """`ring`: two stimulus channels `cos(θ_i - θ)/2 + 1/2`; `signed`: one, `±1`."""


def delay_match(o: DelayMatchOptions, *, seed: int) -> Task:
    """Delayed match to sample (Miller, Erickson & Desimone 1996; NeuroGym's
    `DelayMatchSample`): a sample, a delay, a test; report whether the test
    matches the sample.

    Periods `fixation`, `sample`, `delay`, `test`, `decision`. Inputs:
    fixation (1 until the decision period), the stimulus (one of two
    directions; ring or signed) in the sample and test periods, with input
    noise there. Labels: 0 until the decision period, then 1 (match) or 2
    (non-match: the test is the opposite direction).

    **Metrics:** NeuroGym's `accuracy`, `fixation_break_rate`,
    `no_response_rate`, `chance_accuracy` (0.5).
    """
    T = o.steps()

    def split(n, rng):
        lay = Layout(o, n, rng)
        truth = rng.integers(1, 3, n)  # 1: match, 2: non-match
        sample = rng.integers(0, 2, n)
        test = np.where(truth == 1, sample, 1 - sample)
        angles = ring_angles(2)
        full = np.full(n, 100.0)
        s_mean = stimulus(o.coding, angles[sample], full)
        t_mean = stimulus(o.coding, angles[test], full)
        ch = s_mean.shape[1]
        xs = np.zeros((T, n, 1 + ch))
        xs[..., 0] = lay.before("decision")
        xs[..., 1:] = s_mean * lay.mask("sample")[..., None]
        xs[..., 1:] += t_mean * lay.mask("test")[..., None]
        xs[..., 1:] += lay.noise(o, rng, ch, "sample", "test")
        return Split(
            xs=xs,
            ys=labels(lay, "decision", truth),
            weights=lay.weights(o, "decision"),
            conditions=lay.conditions(
                "decision",
                ground_truth=truth,
                sample=sample + 1,
                test=test + 1,
                num_choices=np.full(n, 2),
            ),
        )

    return _task(
        "delay_match",
        o,
        split,
        seed=seed,
        outputs=3,
        metrics=choice_metrics,
        info={"outputs": ["fixate", "match", "non_match"]},
    )


# go_nogo


class GoNoGoOptions(
    cognitive_options(
        periods={"fixation": 0.0, "stimulus": 500.0, "delay": 500.0, "decision": 500.0},
        optional=("fixation", "delay"),
    )
):
    """Options of `go_nogo` (timing defaults: NeuroGym's `GoNogo`)."""

    sigma_in: NonNegativeFloat = 0.0
    """Input noise on the two cue channels (NeuroGym's task has none)."""


def go_nogo(o: GoNoGoOptions, *, seed: int) -> Task:
    """Go/no-go (NeuroGym's `GoNogo`): a cue says whether to act; after a
    delay, act ("go") or keep fixating ("no-go").

    Periods `fixation`, `stimulus`, `delay`, `decision`. Inputs: fixation (1
    until the decision period), a no-go and a go channel (one of them 1 in the
    stimulus period). Labels: 0 until the decision period, then 0 (no-go: keep
    fixating) or 1 (go).

    **Metrics:** NeuroGym's `accuracy` (a go trial is correct when the network
    acts in the decision period, a no-go trial when it does not; a broken
    fixation is wrong), `fixation_break_rate`, `no_response_rate` (missed
    go trials), `chance_accuracy` (0.5).
    """
    T = o.steps()

    def split(n, rng):
        lay = Layout(o, n, rng)
        truth = rng.integers(0, 2, n)  # 0: no-go, 1: go
        xs = np.zeros((T, n, 3))
        xs[..., 0] = lay.before("decision")
        stim = lay.mask("stimulus")
        xs[..., 1] = stim & (truth == 0)
        xs[..., 2] = stim & (truth == 1)
        xs[..., 1:] += lay.noise(o, rng, 2, "stimulus")
        return Split(
            xs=xs,
            ys=labels(lay, "decision", truth),
            weights=lay.weights(o, "decision"),
            conditions=lay.conditions(
                "decision", ground_truth=truth, num_choices=np.full(n, 2)
            ),
        )

    return _task(
        "go_nogo",
        o,
        split,
        seed=seed,
        outputs=2,
        metrics=choice_metrics,
        info={"inputs": ["fixation", "nogo", "go"], "outputs": ["fixate", "go"]},
    )


# ready_set_go


class ReadySetGoOptions(
    cognitive_options(
        periods={
            "fixation": 100.0,
            "ready": 83.0,
            "measure": {"uniform": [800.0, 1500.0]},
            "set": 83.0,
        },
    )
):
    """Options of `ready_set_go` (timing defaults: NeuroGym's `ReadySetGo`;
    the `production` period lasts `2 × gain × measure`)."""

    gain: PositiveFloat = 1.0
    """The produced interval is `gain` times the measured one."""
    sigma_in: NonNegativeFloat = 0.0
    """Input noise on the ready and set channels (NeuroGym's task has none)."""
    margin: NonNegativeFloat = Field(0.2)
    """A produced interval is correct within `margin × target + 25 ms`
    (NeuroGym's `prod_margin`)."""

    def derived(self, durations):
        return {"production": 2 * self.gain * durations["measure"]}

    def derived_max(self):
        return {"production": 2 * self.gain * timing_bounds(self.timing["measure"])[1]}


def ready_set_go(o: ReadySetGoOptions, *, seed: int) -> Task:
    """Ready-set-go interval reproduction (Jazayeri & Shadlen 2015; NeuroGym's
    `ReadySetGo`): measure the interval between "ready" and "set", then "go"
    `gain` times that interval after "set".

    Periods `fixation`, `ready`, `measure`, `set`, `production` (`2 × gain ×
    measure`). Inputs: fixation (1 until production), a ready and a set
    channel (1 in their periods). Labels: 0 (fixate) until the target time
    `gain × measure` after production begins (the end of "set"), then 1 ("go")
    to the end of production (NeuroGym marks the one step; a held "go" gives
    the first action the same meaning and is easier to learn).

    **Metrics:** `accuracy` (the first "go" in production within `margin ×
    target + 25 ms` of the target, NeuroGym's rule, fixation not broken),
    `interval_error` (the mean `|produced - target| / target` over trials
    with a "go"), `interval_slope` (the least-squares slope of produced on
    target intervals: 1 is exact, below 1 is regression to the mean),
    `fixation_break_rate`, `no_response_rate`.
    """
    T = o.steps()

    def split(n, rng):
        lay = Layout(o, n, rng)
        target = o.gain * lay.ms["measure"]
        go = lay.start["production"] + np.floor(target / o.dt + 1e-9).astype(int)
        xs = np.zeros((T, n, 3))
        xs[..., 0] = lay.before("production")
        xs[..., 1] = lay.mask("ready")
        xs[..., 2] = lay.mask("set")
        xs[..., 1:] += lay.noise(o, rng, 2, "ready", "set")
        steps = np.arange(T)[:, None]
        ys = (lay.mask("production") & (steps >= go)).astype(np.int64)
        return Split(
            xs=xs,
            ys=ys,
            weights=lay.weights(o, "production"),
            conditions=lay.conditions(
                "production",
                ground_truth=np.ones(n, dtype=np.int64),
                measure_ms=lay.ms["measure"],
                target_ms=target,
                go_step=go,
                margin=np.full(n, o.margin),
                num_choices=np.ones(n, dtype=np.int64),
            ),
        )

    task = _task(
        "ready_set_go",
        o,
        split,
        seed=seed,
        outputs=2,
        metrics=interval_metrics,
        info={"inputs": ["fixation", "ready", "set"], "outputs": ["fixate", "go"]},
    )
    return task


def produced_intervals(outputs, split: Split) -> np.ndarray:
    """The produced interval (ms) of each trial: from the start of production
    to the first "go" there (NaN when there is none)."""
    out = np.asarray(outputs, dtype=np.float64)
    c = split.conditions
    steps = np.arange(out.shape[0])[:, None]
    in_prod = (steps >= c["response_start"]) & (steps < c["response_stop"])
    going = in_prod & (np.argmax(out, axis=-1) == 1)
    first = np.argmax(going, axis=0)
    dt = c["dt"]
    return np.where(going.any(axis=0), (first - c["response_start"]) * dt, np.nan)


def interval_metrics(outputs, split: Split) -> dict[str, float]:
    """The metrics of `ready_set_go` (see there)."""
    c = split.conditions
    produced = produced_intervals(outputs, split)
    target = c["target_ms"]
    broke = responses(outputs, split)["broke_fixation"]
    went = ~np.isnan(produced)
    err = np.abs(produced - target)
    margin = c["margin"]
    correct = went & ~broke & (np.where(went, err, np.inf) <= margin * target + 25)
    m = {
        "accuracy": float(np.mean(correct)),
        "fixation_break_rate": float(np.mean(broke)),
        "no_response_rate": float(np.mean(~went)),
        "interval_error": float(np.mean(err[went] / target[went]))
        if went.any()
        else np.nan,
    }
    if went.sum() >= 2 and np.ptp(target[went]) > 0:
        m["interval_slope"] = float(np.polyfit(target[went], produced[went], 1)[0])
    else:
        m["interval_slope"] = np.nan
    return m


def _scored(metrics, num_classes, outputs, split) -> dict[str, float]:
    """A task's own metrics over `classification_metrics` (the shape check, the
    cross-entropy and its chance level; the per-step accuracy kept as
    `step_accuracy`): `accuracy` is the task's (NeuroGym's), per trial."""
    base = classification_metrics(outputs, split, num_classes=num_classes)
    base["step_accuracy"] = base.pop("accuracy")
    base.pop("chance_accuracy")
    return {**base, **metrics(outputs, split)}


def _task(name, o, split, *, seed, outputs, metrics, info, rest=None) -> Task:
    """The task whose train, validation and test splits are `split(n, rng)` with
    the option's counts, each from its own generator of `seed`."""
    # the validation generator is spawned last: train and test are as they were
    # before tasks had a validation split
    train_rng, test_rng, val_rng = rngs(seed, 3)
    train = split(o.num_train, train_rng)
    test = split(o.num_test, test_rng)
    val = split(o.num_val, val_rng)
    # the input of the fixation period (fixation on, no stimulus): where the
    # network waits, the input that fixed-point analyses look at by default
    m = train.xs.shape[-1]
    rest = (1.0,) + (0.0,) * (m - 1) if rest is None else rest
    return Task(
        name=name,
        train=train,
        val=val,
        test=test,
        input_size=train.xs.shape[-1],
        output_size=outputs,
        loss="cross_entropy",
        kind="sequence",
        dt=o.dt,
        metrics=functools.partial(_scored, metrics, outputs),
        info={**info, "dt_ms": o.dt, "num_steps": o.steps(), "timing": o.timing},
        rest_input=rest,
    )
