"""The shared machinery of the eligibility-trace methods (`RFLO`, `EProp`)."""

import abc

import equinox as eqx

from ._rule_helpers import check_feedback, check_seed
from ._snap import eligibility_advance, eligibility_gradient, init_unit_traces
from ._trace import AbstractTraceGradient


class AbstractEligibilityGradient(AbstractTraceGradient):
    """An online method whose trace is one eligibility per parameter that follows
    each unit's own state and drops every path through the recurrent weights, and
    whose learning signal is the true readout (`feedback="symmetric"`) or a fixed
    random matrix (`feedback="random"`, drawn from `jr.PRNGKey(seed)`).

    A subclass declares the fields `feedback` and `seed`, says which cells it
    covers (`validate`) and the decay of its traces (`decay`).
    """

    feedback: eqx.AbstractVar[str]
    seed: eqx.AbstractVar[int]

    def __check_init__(self):
        check_feedback(type(self).__name__, self.feedback)
        check_seed(type(self).__name__, self.seed)

    @abc.abstractmethod
    def decay(self, model):
        """`None`: the traces follow the local Jacobian (each unit's own leak,
        cell state or update gate); a number `α`: the local Jacobian is `α I`."""

    def init_trace(self, model, h, inputs):
        return init_unit_traces(model, h, inputs, 1)

    def advance(self, step, model, h, trace, key, inputs):
        del key
        return eligibility_advance(step, model, h, trace, inputs, self.decay(model))

    def gradient(self, model, trace, aux, dh, h, y, loss):
        return eligibility_gradient(
            self.feedback, self.seed, model, trace, aux, dh, h, y, loss
        )
