"""The tables of names a config may use (dynamics, gradient methods, diffrax
solvers, tasks of known kind) and the look-ups behind them: the class of a
gradient name, the signatures of a dynamics' and an optax optimiser's
constructor, and the check of a section's options against them."""

from __future__ import annotations

import difflib
import inspect

from ... import gradients as _gradients
from ..._cells import GRU, LSTM, ElmanRNN
from ..._dynamics import CTRNN, DampedOscillator, LinearExample
from ..._lru import LRU
from ._errors import _PathError

DYNAMICS = ("ctrnn", "linear", "oscillator", "elman", "lstm", "gru", "lru", "stack")
VECTOR_FIELDS = ("ctrnn", "linear", "oscillator")
CELLS = ("elman", "lstm", "gru", "lru", "stack")
LAYERS = ("lru", "gru", "lstm", "elman", "ctrnn")  # the cores a `stack` takes
# gradient names → rnnode class names, from the one table of methods
# (`rnnode.gradients.GRADIENTS`); a class's keyword arguments are the
# `gradient:` section's options
GRADIENTS = {name: cls.__name__ for name, cls in _gradients.GRADIENTS.items()}
# the methods with an online `init` / `step` (for `train.online: true`): the
# subclasses of `AbstractOnlineGradient`
ONLINE_GRADIENTS = _gradients.ONLINE_GRADIENTS
# the methods that differentiate an equilibrium (the rest differentiate a sequence)
EQUILIBRIUM_GRADIENTS = ("autodiff", "implicit")
DIFFRAX_SOLVERS = {
    "euler": "Euler",
    "heun": "Heun",
    "midpoint": "Midpoint",
    "ralston": "Ralston",
    "bosh3": "Bosh3",
    "tsit5": "Tsit5",
    "dopri5": "Dopri5",
    "dopri8": "Dopri8",
    "kvaerno3": "Kvaerno3",
    "kvaerno4": "Kvaerno4",
    "kvaerno5": "Kvaerno5",
}
# keyword arguments of a dynamics' constructor that the config sets itself
_DYNAMICS_OWN_ARGS = {
    "hidden_size",
    "input_size",
    "key",
    "activation",
    "tau",
    "size",
    "density",
    "form",
}


# Tasks whose kind is known without building them (the data helper's names);
# `check_against_task` checks every task's real kind after it is built.
EQUILIBRIUM_TASKS = {"steady_state"}
SEQUENCE_TASKS = {
    "oscillator_fit",
    "oscillator_ctrnn",
    "linear_example",
    "sine",
    "adding",
    "copy",
    "digits",
    "sunspots",
}


def gradient_class(name: str):
    """The rnnode class behind a gradient name, or None if not available."""
    return _gradients.GRADIENTS.get(name)


def optimiser_signature(name: str) -> inspect.Signature:
    import optax

    fn = getattr(optax, name, None) if not name.startswith("_") else None
    sig = None
    if callable(fn) and not inspect.isclass(fn):
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
    if sig is None or "learning_rate" not in sig.parameters:
        choices = [
            n
            for n in (
                "adam",
                "adamw",
                "sgd",
                "rmsprop",
                "adagrad",
                "lion",
                "lamb",
                "nadam",
                "adabelief",
                "radam",
                "yogi",
                "novograd",
            )
            if hasattr(optax, n)
        ]
        close = difflib.get_close_matches(name, _optax_optimisers(), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(
            f"unknown optax optimiser {name!r}{hint}; e.g. " + ", ".join(choices)
        )
    return sig


def _optax_optimisers() -> list[str]:
    import optax

    names = []
    for n in dir(optax):
        fn = getattr(optax, n, None)
        if n.startswith("_") or not callable(fn) or inspect.isclass(fn):
            continue
        try:
            if "learning_rate" in inspect.signature(fn).parameters:
                names.append(n)
        except (TypeError, ValueError):
            pass
    return names


def _dynamics_signature(name: str) -> inspect.Signature:
    cls = {
        "ctrnn": CTRNN,
        "linear": LinearExample,
        "oscillator": DampedOscillator,
        "elman": ElmanRNN,
        "lstm": LSTM,
        "gru": GRU,
        "lru": LRU,
    }[name]
    return inspect.signature(cls.__init__)


def _check_kwargs(kwargs, sig, path, what, *, exclude=()):
    params = {
        k: p
        for k, p in sig.parameters.items()
        if k != "self"
        and k not in exclude
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    for k in kwargs:
        if k in params or accepts_any:
            continue
        close = difflib.get_close_matches(k, list(params), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        choices = ", ".join(params) or "none"
        key = k if path is None else f"{path}.{k}"
        raise _PathError(key, f"unknown option for {what}{hint}; options: {choices}")
