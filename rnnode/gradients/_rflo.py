"""RFLO: random-feedback local online learning."""

import equinox as eqx

from ._eligibility import AbstractEligibilityGradient
from ._rule_helpers import check_coverage, seed_array


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

    With `trace_tau`, the traces decay with a time constant of their own,
    independent of the network's leak (as in some studies of RFLO):
    `e ← (1 - dt/trace_tau) e + I_t` with `I_t` the immediate term above (`dt = 1`
    for an `ElmanRNN`); `trace_tau = τ` on a `CTRNN` of one time constant `τ` is
    the default rule.

    The readout's own gradient is exact. One number per parameter, time `O(m)` per
    step besides the step itself. Biased (it ignores the recurrent credit
    assignment). Defined for `CTRNN` with `Euler` and `ElmanRNN`; for `LSTM` and
    `GRU` use `EProp()`. On these cells RFLO and `EProp` compute the same thing.

    **Arguments:**

    - `feedback`: `"symmetric"` or `"random"`.
    - `seed`: the seed of the random feedback matrix; default 0.
    - `trace_tau`: the traces' own time constant (in the model's time units), or
      `None` (default) for the network's leak.
    """

    feedback: str = eqx.field(static=True, default="symmetric")
    seed: int = eqx.field(default=0, converter=seed_array)
    trace_tau: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        tau = self.trace_tau
        if tau is not None and (
            isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau <= 0
        ):
            raise ValueError(
                f"`RFLO(trace_tau={tau!r})`: `trace_tau` must be a positive number "
                "(or `None` for the network's own leak)"
            )

    def validate(self, model):
        check_coverage("RFLO", "RFLO", model, "Use `EProp()` for `LSTM` and `GRU`.")
        if self.trace_tau is not None and self.trace_tau < model.dt:
            raise ValueError(
                f"`RFLO(trace_tau={self.trace_tau})` must be at least the step "
                f"`dt = {model.dt}` (the traces would change sign)"
            )

    def decay(self, model):
        return None if self.trace_tau is None else 1.0 - model.dt / self.trace_tau
