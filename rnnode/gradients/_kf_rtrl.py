"""KF-RTRL: an unbiased Kronecker-factored estimate of the influence matrix."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from ._rtrl_structured import add_immediate, mask_gradient, structured_jacobians
from ._rule_helpers import (
    check_coverage,
    check_seed,
    dynamics_fields,
    dynamics_gradient,
    seed_array,
)
from ._trace import AbstractTraceGradient

_LAYER = ("W", "U", "b")


class KFRTRL(AbstractTraceGradient):
    """Kronecker-factored RTRL (Mujika, Meier & Steger, 2018, "Approximating
    real-time recurrent learning with random Kronecker factors", NeurIPS).

    `W`, `U` and `b` form one layer `z = [W U b] [v; x; 1]` whose immediate
    Jacobian factors as `u_t ⊗ D_t`: `∂h'_s/∂[W U b]_jl = D[s, j] u[l]` with
    `u = [v; x; 1]` and `D` diagonal (`ElmanRNN`: `v = h`, `D = diag(φ'(z))`;
    `CTRNN` with `Euler`: `v = φ(r)` and `D = diag(c)` in the current form,
    `v = r` and `D = diag(c φ'(z))` in the rate form, `c = dt/τ`). KF-RTRL keeps
    `P_t ≈ u_t ⊗ A_t` (`u ∈ R^{n+m+1}`, `A ∈ R^{n×n}`) and mixes the two
    Kronecker terms of `J P + u ⊗ D` with random signs `c₁, c₂ = ±1`:

        u ← c₁ ρ₁ u + c₂ ρ₂ u_t,        A ← (c₁/ρ₁) J A + (c₂/ρ₂) D,

    so that `E[u ⊗ A] = P_t` and the gradient `ĝ_t = (∂l_t/∂h_t A) ⊗ u + ∂l_t/∂θ` is
    unbiased. `ρ₁ = √((|J A| + ε)/(|u| + ε))`, `ρ₂ = √((|D| + ε)/(|u_t| + ε))`
    minimise the variance (`ε = 1e-7`). Time per step `O(n³)` (the product `J A`),
    memory `O(n²)`: less noisy than UORO, cheaper than RTRL's `O(n⁴)`.

    Other parameters of the dynamics (the `log_tau` of a `CTRNN` with
    `learn_tau=True`, `n` numbers) are tracked by exact RTRL (`P` of shape
    `(n, n)`, `O(n³)` per step). Defined for `ElmanRNN` and `CTRNN` with `Euler`;
    any other model raises a `ValueError` (use `UORO()`). The gradient of a
    masked `W` is zero off the mask.

    **Arguments:**

    - `seed`: the seed of the whole-sequence path's key (and of `init` without a
      key); default 0.
    """

    seed: int = eqx.field(default=0, converter=seed_array)
    stochastic = True

    def __check_init__(self):
        check_seed("KFRTRL", self.seed)

    def validate(self, model):
        check_coverage(
            "KFRTRL",
            "KFRTRL",
            model,
            "Its immediate Jacobian must factor as `u ⊗ D`; use `UORO()` or "
            "`SnAp(order=1)` for other cells.",
        )

    def init_trace(self, model, h, inputs):
        params = model
        _, imm = structured_jacobians(params, h, *inputs)
        n = h.shape[0]
        dtype = imm["W"].vals.dtype
        k = sum(_width(imm[name]) for name in _LAYER)
        exact = {
            name: jnp.zeros((n, *imm[name].vals.shape[1:]), dtype)
            for name in dynamics_fields(params)
            if name not in _LAYER
        }
        return jnp.zeros((k,), dtype), jnp.zeros((n, n), dtype), exact

    def advance(self, step, model, h, trace, key, inputs):
        params, inp = model, inputs
        u, A, exact = trace
        J, imm = structured_jacobians(params, h, *inp)
        J = J.astype(A.dtype)
        d = imm["W"].vals[0].astype(A.dtype)
        u_now = jnp.concatenate(
            [
                jnp.ones((1,), A.dtype) if imm[name].v is None else imm[name].v
                for name in _LAYER
            ]
        ).astype(A.dtype)
        JA = J @ A
        eps = 1e-7
        rho1 = jnp.sqrt((_norm(JA) + eps) / (_norm(u) + eps))
        rho2 = jnp.sqrt((_norm(d) + eps) / (_norm(u_now) + eps))
        c1, c2 = jr.rademacher(key, (2,), dtype=A.dtype)
        u = c1 * rho1 * u + c2 * rho2 * u_now
        A = (c1 / rho1) * JA + jnp.diag((c2 / rho2) * d)
        exact = {
            name: add_immediate(imm[name], jnp.tensordot(J, P, axes=1))
            for name, P in exact.items()
        }
        widths = [_width(imm[name]) for name in _LAYER]
        return step(params, h, inp), (u, A, exact), widths

    def gradient(self, model, trace, aux, dh, h, y, loss):
        del h, y, loss
        params = model
        u, A, exact = trace
        lam = dh.astype(A.dtype) @ A  # (n,): ∂l/∂h A
        out, start = {}, 0
        for name, w in zip(_LAYER, aux, strict=True):
            part = u[start : start + w]
            g = lam[:, None] * part[None, :]
            if name == "b":
                g = g[:, 0]
            out[name] = mask_gradient(params.dynamics, name, g)
            start += w
        for name, P in exact.items():
            out[name] = jnp.tensordot(dh.astype(P.dtype), P, axes=1)
        return dynamics_gradient(params, out)


def _width(rows) -> int:
    return 1 if rows.v is None else rows.v.shape[0]


def _norm(x):
    return jnp.sqrt(jnp.sum(jnp.square(x)))
