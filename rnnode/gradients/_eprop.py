"""e-prop: eligibility propagation."""

import equinox as eqx

from ._eligibility import AbstractEligibilityGradient
from ._rule_helpers import check_coverage, seed_array


class EProp(AbstractEligibilityGradient):
    """Eligibility propagation (Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein
    & Maass, 2020, "A solution to the learning dilemma for recurrent networks of
    spiking neurons", Nature Communications).

    The gradient is `ĝ_t = Σ_j L_j^t e_jk^t + ∂l_t/∂θ`, with eligibility traces that
    follow each unit's *own* hidden state and drop every path through the
    recurrent weights: with `ε` the derivative of unit `j`'s internal state,

        ε_t = D_t ε_{t-1} + ∂s_t/∂θ_jk,        e_t = ∂h_t/∂s_t ε_t,

    where `D_t` is the part of `∂s_t/∂s_{t-1}` not mediated by `W`:

    - `CTRNN` with `Euler` (both forms): `D = 1 - c` (the leak; identical to
      `RFLO` on this cell);
    - `ElmanRNN`: `D = 0`, `e_jk = φ'(z_j) h_k` (identical to `RFLO`);
    - `LSTM`: Bellec et al.'s LSTM eligibility, through the cell state:
      `ε ← f ε + ∂C'/∂θ`, `e = o tanh'(C') ε + ∂h'/∂θ` (the gates' own paths);
    - `GRU`: the same construction with `D = z` (the update gate's `z ⊙ h`
      carry); well defined, though not in the paper.

    The learning signal is `L_t = ∂l_t/∂h_t` (`feedback="symmetric"`, the true
    readout weights) or `Bᵀ ∂l_t/∂o_t` with a fixed random `B` of the readout's
    shape, entries uniform on `±√(3/n)` (variance `1/n`, `n` observed units), drawn from
    `jr.PRNGKey(seed)` (`feedback="random"`). The readout's own gradient is exact.
    One (LSTM: two) numbers per parameter, time `O(m)` per step besides the step.
    Biased.

    **Arguments:**

    - `feedback`: `"symmetric"` or `"random"`.
    - `seed`: the seed of the random feedback matrix; default 0.
    """

    feedback: str = eqx.field(static=True, default="symmetric")
    seed: int = eqx.field(default=0, converter=seed_array)

    def validate(self, model):
        check_coverage("EProp", "EProp", model, "Use `UORO()` for any other step.")

    def decay(self, model):
        return None
