"""RFLO: random-feedback local online learning."""

import equinox as eqx

from .._cells import ElmanRNN
from .._dynamics import CTRNN
from ._online import AbstractTraceGradient, check_cell, check_feedback, check_seed
from ._snap import eligibility_advance, eligibility_gradient, init_unit_traces


class RFLO(AbstractTraceGradient):
    """Random-feedback local online learning (Murray, 2019, "Local online learning
    in recurrent networks with random feedback", eLife).

    Each weight keeps an eligibility trace that drops every term of `J P` that
    passes through the recurrent weights and keeps only the unit's own leak: on the
    rate-form `CTRNN` (`r' = r + c (-r + φ(W r + U x + b))`, `c = dt/τ`)

        e_jk ← (1 - c_j) e_jk + c_j φ'(z_j) r_k,

    and likewise for `U` (`x_k`), `b` (1) and a learnt `log_tau`. On the current
    form (`r' = r + c (-r + W φ(r) + U x + b)`) the immediate term is `c_j φ(r_k)`;
    on an `ElmanRNN` there is no leak (`α = 1`) and `e_jk = φ'(z_j) h_k`. The
    gradient is `ĝ_t = L_t ⊙ e_t + ∂l_t/∂θ` with the learning signal

    - `feedback="symmetric"` (default): `L_t = ∂l_t/∂h_t = Vᵀ ∂l_t/∂o_t`, the
      true readout weights;
    - `feedback="random"`: `L_t = Bᵀ ∂l_t/∂o_t` with a fixed random `B` of the
      readout's shape, entries `N(0, 1/n)` (`n` observed units), drawn from
      `jr.PRNGKey(seed)` (Murray's random feedback).

    The readout's own gradient is exact. One number per parameter, time `O(m)` per
    step besides the step itself. Biased (it ignores the recurrent credit
    assignment). Defined for `CTRNN` with `Euler` and `ElmanRNN`; for `LSTM` and
    `GRU` use `EProp()`. On these cells RFLO and `EProp` compute the same thing.

    **Arguments:**

    - `feedback`: `"symmetric"` or `"random"`.
    - `seed`: the seed of the random feedback matrix; default 0.
    """

    feedback: str = eqx.field(static=True, default="symmetric")
    seed: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        check_feedback("RFLO", self.feedback)
        check_seed("RFLO", self.seed)

    def _validate(self, params):
        check_cell(
            "RFLO", params, (ElmanRNN, CTRNN), "Use `EProp()` for `LSTM` and `GRU`."
        )

    def _init_trace(self, params, h, inp):
        return init_unit_traces(params, h, inp, 1)

    def _advance(self, step, params, h, trace, key, inp):
        del key
        return eligibility_advance(step, params, h, trace, inp)

    def _gradient(self, params, trace, aux, dh, h, y, loss):
        return eligibility_gradient(
            self.feedback, self.seed, params, trace, aux, dh, h, y, loss
        )
