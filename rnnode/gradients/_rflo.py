"""RFLO: random-feedback local online learning."""

import equinox as eqx

from .._cells import ElmanRNN
from .._dynamics import CTRNN
from ._eligibility import AbstractEligibilityGradient
from ._online import check_cell


class RFLO(AbstractEligibilityGradient):
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
      readout's shape, entries uniform on `±√(3/n)` (variance `1/n`, `n` observed units), drawn from
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

    def _validate(self, params):
        check_cell(
            "RFLO", params, (ElmanRNN, CTRNN), "Use `EProp()` for `LSTM` and `GRU`."
        )
