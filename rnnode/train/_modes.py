"""Batch or online training, decided once when a run is built.

A run trains either in batches (each optimiser step differentiates a whole
sequence loss of a sampled batch) or online (each step consumes one time step of
parallel streams and updates with that step's gradient; `train.online: true`,
with an `AbstractOnlineGradient`). `training_for` picks the object for a
config; it carries the compiled chunk, the extra state the chunk carries
between calls (checkpointed with the parameters) and how to advance it, so the
loop, checkpoints and saved runs never ask which kind they hold.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import jax.numpy as jnp
import jax.random as jr

from ..gradients import AbstractOnlineGradient
from ._build import _cached, _config_key, loss_name, make_loss_fn, step_loss
from ._steps import make_chunk, make_online_chunk, states_key


class AbstractTraining(abc.ABC):
    """How a run's optimiser steps are taken: `chunk` is the compiled function,
    `start` the extra state it carries, `advance` one call of it."""

    chunk: Callable

    @abc.abstractmethod
    def start(self, params, key, data) -> tuple:
        """`(key, extra)`: the run's key after drawing what the extra state needs,
        and the extra state (a dict of arrays, `{}` if none) of a fresh run."""

    @abc.abstractmethod
    def advance(self, params, opt_state, key, extra: dict, n: int, data) -> tuple:
        """Run `n` optimiser steps (one call of the chunk): `(params, opt_state,
        key, extra, bad, losses, failed)`, the state left at the last good step."""


class BatchTraining(AbstractTraining):
    """Each step samples a batch of whole sequences and differentiates its loss
    with the configured gradient method (`make_chunk`); no extra state."""

    def __init__(self, chunk):
        self.chunk = chunk

    def start(self, params, key, data):
        del params, data
        return key, {}

    def advance(self, params, opt_state, key, extra, n, data):
        del extra
        (params, opt_state, key, bad), (losses, failed) = self.chunk(
            params, opt_state, key, jnp.asarray(n, jnp.int32), data
        )
        return params, opt_state, key, {}, bad, losses, failed


class OnlineTraining(AbstractTraining):
    """Each step consumes one time step of `train.batch_size` streams and applies
    that step's gradient (`make_online_chunk`). The extra state is the streams'
    position: the current sequences (`stream`), the online method's state per
    stream (`rstate`) and the time index (`t`)."""

    EXTRA = ("stream", "rstate", "t")

    def __init__(self, chunk, draw, init_states):
        self.chunk, self.draw, self.init_states = chunk, draw, init_states

    def start(self, params, key, data):
        key, stream_key = jr.split(key)
        stream = self.draw(data, stream_key)
        extra = {
            "stream": stream,
            "rstate": self.init_states(params, stream, states_key(stream_key)),
            "t": jnp.asarray(0, jnp.int32),
        }
        return key, extra

    def advance(self, params, opt_state, key, extra, n, data):
        carry, (losses, failed) = self.chunk(
            params,
            opt_state,
            key,
            jnp.asarray(n, jnp.int32),
            data,
            *(extra[k] for k in self.EXTRA),
        )
        params, opt_state, key, bad, *rest = carry
        return (
            params,
            opt_state,
            key,
            dict(zip(self.EXTRA, rest, strict=True)),
            bad,
            losses,
            failed,
        )


def training_for(cfg, task, setup, mesh) -> AbstractTraining:
    """The training of a run, compiled once per config in this process: online
    if `train.online` (the gradient is then an `AbstractOnlineGradient`, checked
    when the config was built), batch otherwise."""
    tc = cfg.train
    common = dict(
        steps_per_call=tc.steps_per_call,
        batch_size=tc.batch_size,
        dtype=setup.dtype,
        mesh=mesh,
    )
    key = {**_config_key(cfg), "mesh": mesh is not None}
    if tc.online:
        method = setup.gradient
        assert isinstance(method, AbstractOnlineGradient)
        per_step = step_loss(loss_name(cfg, task))
        return _cached(
            "online",
            key,
            lambda: OnlineTraining(
                *make_online_chunk(
                    setup.static,
                    setup.optimiser,
                    method,
                    per_step,
                    reset_every=tc.reset_every,
                    **common,
                )
            ),
        )
    return _cached(
        "chunk",
        key,
        lambda: BatchTraining(
            make_chunk(
                setup.static,
                setup.optimiser,
                make_loss_fn(cfg, task, setup.gradient),
                **common,
            )
        ),
    )
