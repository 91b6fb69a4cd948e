"""The shared machinery of the eligibility-trace methods (`RFLO`, `EProp`)."""

import equinox as eqx

from ._online import AbstractTraceGradient, check_feedback, check_seed
from ._snap import eligibility_advance, eligibility_gradient, init_unit_traces


class AbstractEligibilityGradient(AbstractTraceGradient):
    """An online method whose trace is one eligibility per parameter that follows
    each unit's own state and drops every path through the recurrent weights, and
    whose learning signal is the true readout (`feedback="symmetric"`) or a fixed
    random matrix (`feedback="random"`, drawn from `jr.PRNGKey(seed)`).

    A subclass declares the fields `feedback` and `seed` and says which cells it
    covers (`_validate`).
    """

    feedback: eqx.AbstractVar[str]
    seed: eqx.AbstractVar[int]

    def __check_init__(self):
        check_feedback(type(self).__name__, self.feedback)
        check_seed(type(self).__name__, self.seed)

    def _init_trace(self, params, h, inp):
        return init_unit_traces(params, h, inp, 1)

    def _advance(self, step, params, h, trace, key, inp):
        del key
        return eligibility_advance(step, params, h, trace, inp)

    def _gradient(self, params, trace, aux, dh, h, y, loss):
        return eligibility_gradient(
            self.feedback, self.seed, params, trace, aux, dh, h, y, loss
        )
