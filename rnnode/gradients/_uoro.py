"""UORO: an unbiased rank-one estimate of the influence matrix."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._integrate import Diffrax
from .._model import Model
from ._rule_helpers import check_coverage, check_seed, seed_array
from ._trace import AbstractTraceGradient


class UORO(AbstractTraceGradient):
    """Unbiased online recurrent optimisation (Tallec & Ollivier, 2018, "Unbiased
    online recurrent optimization", ICLR).

    Keeps `P_t ≈ h̃_t θ̃_tᵀ`, a state-sized vector `h̃` and a parameter-shaped `θ̃`.
    With fresh random signs `ν ∈ {±1}ⁿ` at every step,

        h̃ ← ρ₀ J h̃ + β₀ ν,        θ̃ ← θ̃ / ρ₀ + νᵀ (∂step/∂θ) / β₀,

    so that `E[h̃ θ̃ᵀ] = P_t` exactly (the cross terms vanish in mean), and the
    gradient estimate `ĝ_t = (∂l_t/∂h_t · h̃) θ̃ + ∂l_t/∂θ` is unbiased. The scale
    factors minimise the variance: `ρ₀ = √((|θ̃| + ε) / (|J h̃| + ε))`,
    `β₀ = √((|νᵀ ∂step/∂θ| + ε) / (|ν| + ε))` (`ε = 1e-7`; `ρ₀` does not depend on
    `ν`, and `β₀` is even in `ν`, so both keep the estimate unbiased).

    `J h̃` is one JVP and `νᵀ ∂step/∂θ` one VJP of the step, so UORO works for any
    cell and integrator and any parameters of the step: time about three steps'
    worth, memory `O(n + m)`. (A `Diffrax` solve has no JVP: there `J h̃` takes
    `n` VJPs.) The estimate is noisy (its
    variance grows with `n` and the sequence length).

    Its randomness comes from the key in the online state (`init(model, key=...)`);
    as `gradient=` of `sequence_loss`, every sequence starts from
    `jr.PRNGKey(seed)`.

    **Arguments:**

    - `seed`: the seed of the whole-sequence path's key (and of `init` without a
      key); default 0.
    """

    seed: int = eqx.field(default=0, converter=seed_array)
    stochastic = True

    def __check_init__(self):
        check_seed("UORO", self.seed)

    def validate(self, model):
        check_coverage("UORO", "UORO", model, "")  # any step

    def init_trace(self, model, h, inputs):
        del inputs
        params = model
        leaves = jax.tree_util.tree_leaves(params)
        theta = {i: jnp.zeros_like(leaves[i]) for i in _tracked(params)}
        return jnp.zeros_like(h), theta

    def advance(self, step, model, h, trace, key, inputs):
        params, inp = model, inputs
        h_tilde, theta = trace
        leaves, treedef = jax.tree_util.tree_flatten(params)
        idx = list(theta)

        def f(h, sub):
            return step(_rebuild(treedef, leaves, idx, sub), h, inp)

        sub = [leaves[i] for i in idx]
        h_tilde = h_tilde.astype(h.dtype)
        if isinstance(params, Model) and isinstance(params.integrator, Diffrax):
            # a diffrax solve has a custom VJP and no JVP: `J` row by row
            h_new, vjp_h = jax.vjp(lambda h: f(h, sub), h)
            eye = jnp.eye(h_new.shape[0], dtype=h_new.dtype)
            Jh = jax.vmap(lambda e: vjp_h(e)[0])(eye) @ h_tilde
        else:
            h_new, Jh = jax.jvp(lambda h: f(h, sub), (h,), (h_tilde,))
        _, vjp = jax.vjp(lambda s: f(h, s), sub)
        nu = jr.rademacher(key, h_new.shape, dtype=h_new.dtype)
        (dtheta,) = vjp(nu)
        eps = 1e-7
        rho = jnp.sqrt((_norm(list(theta.values())) + eps) / (_norm([Jh]) + eps))
        beta = jnp.sqrt((_norm(dtheta) + eps) / (_norm([nu]) + eps))
        h_tilde = rho * Jh + beta * nu
        theta = {
            i: (t / rho + d / beta).astype(t.dtype)
            for (i, t), d in zip(theta.items(), dtheta, strict=True)
        }
        return h_new, (h_tilde, theta), None

    def gradient(self, model, trace, aux, dh, h, y, loss):
        del aux, h, y, loss
        h_tilde, theta = trace
        s = jnp.dot(dh, h_tilde.astype(dh.dtype))
        leaves, treedef = jax.tree_util.tree_flatten(model)
        grads = [None] * len(leaves)
        for i, t in theta.items():
            grads[i] = s.astype(t.dtype) * t
        return jax.tree_util.tree_unflatten(treedef, grads)


def _tracked(params) -> list[int]:
    """The leaves the step depends on: a model's dynamics and integrator arrays
    (not its readout or initial state); every array of other parameters."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    arrays = [i for i, (_, v) in enumerate(flat) if eqx.is_inexact_array(v)]
    if not isinstance(params, Model):
        return arrays
    return [i for i in arrays if _field(flat[i][0]) in ("dynamics", "integrator")]


def _field(path):
    return getattr(path[0], "name", None) if path else None


def _rebuild(treedef, leaves, idx, sub):
    leaves = list(leaves)
    for i, v in zip(idx, sub, strict=True):
        leaves[i] = v
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _norm(xs) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in xs))
