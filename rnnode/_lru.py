"""The Linear Recurrent Unit (Orvieto et al., 2023): a complex diagonal linear
recurrence, held as one flat real state, with a whole-sequence path that runs in
parallel over time by `jax.lax.associative_scan`."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from ._dynamics import AbstractSequenceCell, _check_size
from ._linear_scan import linear_scan


class LRU(AbstractSequenceCell):
    """Linear Recurrent Unit (Orvieto et al., 2023, "Resurrecting recurrent neural
    networks for long sequences"):

        h_t = λ ⊙ h_{t-1} + γ ⊙ (B x_t),        y_t = Re(C h_t) + D ⊙ x_t,

    with a complex diagonal `λ = exp(−exp(ν) + i exp(θ))` (so `|λ| < 1` for every
    value of the parameters), the normalisation `γ = exp(γ_log)`, initialised at
    `√(1 − |λ|²)`, complex `B` (`n × m`) and `C` (`m × n`) stored as real and
    imaginary parts, and a real diagonal skip `D` (`m`). Input and output have the
    same width `m`, as in the paper.

    **The state** is one flat real vector `[Re h; Im h; y]` of length `2n + m`.
    The output `y_t` depends on the current input (the `D ⊙ x_t` skip), which a
    `Model`'s readout (it sees `observe(state)` only) could not otherwise reach,
    so the cell keeps it in its state: `observe(state)` is `y_t`. The last `m`
    entries never feed back (the recurrence reads `h` only), so the Jacobian of
    the state is still diagonal in `h`: `RTRL()` on a `Model` of an `LRU` uses
    element-wise sensitivities (see `rnnode.RTRL`).

    **Initialisation** (the paper's ring initialisation): `|λ|² ~ U[r_min²,
    r_max²]` (uniform on the ring `r_min ≤ |λ| ≤ r_max` in the complex plane) via
    `ν = log(−½ log(u₁ (r_max² − r_min²) + r_min²))`, and the phase
    `arg λ ~ U[0, max_phase]` via `θ = log(max_phase u₂)`; `B ~ N(0, 1/(2m))` in
    each part, `C ~ N(0, 1/n)` in each part, `D ~ N(0, 1)`.

    **Arguments:**

    - `hidden_size`: the number `n` of complex units.
    - `input_size`: the width `m` of the input and of the output.
    - `r_min`, `r_max`: the ring of `|λ|` at initialisation; `0 ≤ r_min < r_max < 1`.
      Defaults `0` and `0.999` (the paper's appendix code with `r_max` just below
      1; its long-range-arena runs use `r_min = 0.9`).
    - `max_phase`: the largest initial phase, `> 0`; default `2π` (the paper's
      default; `π/10` for its long-range-arena image tasks).
    - `parallel`: if true, `Model.rollout` and `sequence_loss(...,
      gradient=Autodiff())` run the recurrence over the whole sequence by
      `jax.lax.associative_scan` (depth `O(log T)`) instead of a `lax.scan`.
    - `key`: a JAX PRNG key.
    """

    nu_log: Float[Array, " n"]
    theta_log: Float[Array, " n"]
    gamma_log: Float[Array, " n"]
    B_re: Float[Array, "n m"]
    B_im: Float[Array, "n m"]
    C_re: Float[Array, "m n"]
    C_im: Float[Array, "m n"]
    D: Float[Array, " m"]
    hidden_size: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    observe_size: int = eqx.field(static=True)
    parallel: bool = eqx.field(static=True)

    def __init__(
        self,
        hidden_size: int,
        input_size: int,
        *,
        r_min: float = 0.0,
        r_max: float = 0.999,
        max_phase: float = 2 * math.pi,
        parallel: bool = False,
        key: PRNGKeyArray,
    ):
        _check_size("hidden_size", hidden_size)
        _check_size("input_size", input_size)
        _check_ring(r_min, r_max, max_phase)
        n, m = hidden_size, input_size
        k1, k2, k3, k4, k5, k6, k7 = jr.split(key, 7)
        u1, u2 = jr.uniform(k1, (n,)), jr.uniform(k2, (n,))
        self.nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        self.theta_log = jnp.log(max_phase * u2)
        modulus = jnp.exp(-jnp.exp(self.nu_log))
        self.gamma_log = jnp.log(jnp.sqrt(1 - modulus**2))
        self.B_re = jr.normal(k3, (n, m)) / math.sqrt(2 * m)
        self.B_im = jr.normal(k4, (n, m)) / math.sqrt(2 * m)
        self.C_re = jr.normal(k5, (m, n)) / math.sqrt(n)
        self.C_im = jr.normal(k6, (m, n)) / math.sqrt(n)
        self.D = jr.normal(k7, (m,))
        self.hidden_size = n
        self.state_size = 2 * n + m
        self.input_size = m
        self.observe_size = m
        self.parallel = bool(parallel)

    def eigenvalues(self) -> Complex[Array, " n"]:
        """The diagonal `λ = exp(−exp(ν) + i exp(θ))`."""
        return jnp.exp(jax.lax.complex(-jnp.exp(self.nu_log), jnp.exp(self.theta_log)))

    def drive(self, x: Float[Array, "*time m"]) -> Complex[Array, "*time n"]:
        """The input term `γ ⊙ (B x)` of the recurrence."""
        gamma = jnp.exp(self.gamma_log)
        return jax.lax.complex(gamma * (x @ self.B_re.T), gamma * (x @ self.B_im.T))

    def hidden(self, state: Float[Array, "*time state"]) -> Complex[Array, "*time n"]:
        """The complex `h` held in a state."""
        n = self.hidden_size
        return jax.lax.complex(state[..., :n], state[..., n : 2 * n])

    def assemble(
        self, h: Complex[Array, "*time n"], x: Float[Array, "*time m"]
    ) -> Float[Array, "*time state"]:
        """The flat state `[Re h; Im h; Re(C h) + D ⊙ x]`."""
        y = h.real @ self.C_re.T - h.imag @ self.C_im.T + self.D * x
        return jnp.concatenate([h.real, h.imag, y], axis=-1)

    def __call__(self, state, x):
        h = self.eigenvalues() * self.hidden(state) + self.drive(x)
        return self.assemble(h, x)

    def observe(self, state):
        return state[2 * self.hidden_size :]

    def sequence(self, h0, xs):
        lam = self.eigenvalues()
        b = self.drive(xs)
        if self.parallel:  # depth O(log T): a diagonal associative scan
            hs = linear_scan(lam, b, self.hidden(h0))
        else:

            def body(h, b_t):
                h = lam * h + b_t
                return h, h

            _, hs = jax.lax.scan(body, self.hidden(h0), b)
        return self.assemble(hs, xs)


def _check_ring(r_min, r_max, max_phase) -> None:
    for name, v in (("r_min", r_min), ("r_max", r_max), ("max_phase", max_phase)):
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ValueError(f"`LRU({name}=...)` must be a finite number, got {v!r}")
    if r_min < 0:
        raise ValueError(f"`LRU(r_min={r_min})`: `r_min` must be >= 0 (a modulus)")
    if r_max >= 1:
        raise ValueError(
            f"`LRU(r_max={r_max})`: `r_max` must be < 1 for a stable recurrence "
            "(the paper uses 0.999 for long-range tasks)"
        )
    if r_min >= r_max:
        raise ValueError(
            f"`LRU(r_min={r_min}, r_max={r_max})`: `r_min` must be smaller than "
            "`r_max` (the ring r_min <= |λ| <= r_max)"
        )
    if max_phase <= 0:
        raise ValueError(
            f"`LRU(max_phase={max_phase})`: `max_phase` must be > 0 (e.g. 2π, or "
            "π/10 for image tasks)"
        )
