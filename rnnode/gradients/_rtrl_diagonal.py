"""Element-wise forward sensitivities of diagonal linear recurrences (the `LRU`).

For `h_t = λ ⊙ h_{t-1} + γ ⊙ (B u_t)` with a diagonal `λ`, the sensitivity of
unit `j` depends only on the parameters of row `j`, and each obeys its own
scalar recursion (Zucchet et al., 2023, "Online learning of long-range
dependencies"):

    s_t = λ ⊙ s_{t-1} + h_{t-1}          (∂h_t/∂λ, complex, n numbers)
    g_t = λ ⊙ g_{t-1} + γ ⊙ (B u_t)      (∂h_t/∂γ_log, n numbers)
    e_t = λ ⊙ e_{t-1} + γ ⊗ u_t          (∂h_t/∂B_re, an (n, m) array; ∂h_t/∂B_im = i e_t)

and `∂h/∂ν = s λ (−e^ν)`, `∂h/∂θ = s λ (i e^θ)` by the chain rule through λ. The
gradient of a loss term with learning signal `δ = ∂l_t/∂Re h_t + i ∂l_t/∂Im h_t`
is `Re(conj(δ_j) ∂h_j/∂p)`. Cost and memory are `O(n m)` per layer, the order of
the forward pass, and independent of `T`.

One layer (a `Model` of an `LRU`): this is exact RTRL. In a `Stack` of LRUs the
same traces are carried in every layer and the learning signal `δ^l` of each
layer is the gradient of the current loss term through the layers above at the
current step only: no sensitivity is carried across layers (the layer-local
approximation of Zucchet et al.; `rnnode.LayerLocalRTRL`).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, PyTree

from .._lru import LRU
from .._model import Model
from .._stack import Stack
from .._step_inputs import step_at

_RECURRENCE = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im")

Traces = tuple[tuple[Complex[Array, " n"], Complex[Array, " n"], Complex[Array, "n m"]]]
"""Per LRU layer: `(∂h/∂λ, ∂h/∂γ_log, ∂h/∂B_re)`."""


def is_diagonal(model) -> bool:
    """Whether `model` is a `Model` of one `LRU` (exact element-wise RTRL)."""
    return isinstance(model, Model) and isinstance(model.dynamics, LRU)


def lru_layers(model, what: str) -> list[Callable]:
    """Accessors of the LRU layers of a `Model` of an `LRU` or of a `Stack` of
    LRUs (each works on the model and on any pytree shaped like it)."""
    dyn = model.dynamics if isinstance(model, Model) else None
    if isinstance(dyn, LRU):
        return [lambda m: m.dynamics]
    if isinstance(dyn, Stack) and all(isinstance(ly.core, LRU) for ly in dyn.layers):
        return [
            lambda m, i=i: m.dynamics.layers[i].core for i in range(len(dyn.layers))
        ]
    raise ValueError(
        f"`{what}` needs a `Model` of an `LRU` or of a `Stack` whose layers are all "
        f"`LRU`s, got {_describe(model)}; use `RTRL()` or `BPTT()` for other models"
    )


def init_traces(model, layers) -> Traces:
    """Zero traces (`P_0 = 0`) for every LRU layer."""
    out = []
    for get in layers:
        lru = get(model)
        lam = lru.eigenvalues()
        zero = jnp.zeros_like(lam)
        out.append((zero, zero, jnp.zeros(lru.B_re.shape, lam.dtype)))
    return tuple(out)


def traced_step(
    model: Model,
    layers: list[Callable],
    h: Array,
    traces: Traces,
    x: Array,
    y: PyTree,
    loss: Callable,
) -> tuple[Array, Traces, Array, PyTree]:
    """One step: the new state, the advanced traces, the loss term
    `loss(model, h_t, y)` and its gradient (traces for the LRU recurrences,
    backpropagation through the current step for everything else).

    **Returns:** `(h_t, traces, l_t, grads)` with `grads` shaped like
    `eqx.filter(model, eqx.is_inexact_array)`.
    """
    diff, static = eqx.partition(model, eqx.is_inexact_array)
    cores = [get(model) for get in layers]
    eps = [(jnp.zeros(c.hidden_size, h.dtype),) * 2 for c in cores]

    def f(diff, eps):
        m = _stop_recurrence(eqx.combine(diff, static), layers)
        perturb = [jax.lax.complex(re, im) for re, im in eps]
        state, seen = _perturbed_step(m, h, x, perturb)
        return loss(m, state, y), (state, seen)

    (value, (h_new, seen)), (grads, g_eps) = jax.value_and_grad(
        f, argnums=(0, 1), has_aux=True
    )(diff, eps)
    new_traces, replace = [], []
    for lru, h_prev, u, tr, (d_re, d_im) in zip(
        cores, _hidden_before(model, h), seen, traces, g_eps, strict=True
    ):
        tr = _advance(lru, h_prev, u, tr)
        new_traces.append(tr)
        replace.extend(_trace_grads(lru, tr, jax.lax.complex(d_re, d_im)))
    where = lambda g: [getattr(get(g), k) for get in layers for k in _RECURRENCE]
    grads = eqx.tree_at(where, grads, replace)
    return h_new, tuple(new_traces), value, grads


def traced_loss_fwd(model, layers, h0, inputs, targets, weights, loss):
    """The whole-sequence forward pass of a traced method: the loss and its
    gradient in one `lax.scan` (memory independent of `T`)."""

    def body(carry, xs):
        h, traces, g, total, i = carry
        y, a = xs
        _, x, _ = step_at(inputs, i)  # `Model.step_inputs`: (t, x, x_next)
        h, traces, value, dg = traced_step(model, layers, h, traces, x, y, loss)
        g = jax.tree.map(lambda g, d: g + a * d, g, dg)
        return (h, traces, g, total + a * value, i + 1), None

    g0 = jax.tree.map(jnp.zeros_like, eqx.filter(model, eqx.is_inexact_array))
    total = jnp.zeros((), jnp.result_type(weights))
    carry = (h0, init_traces(model, layers), g0, total, 0)
    (_, _, grads, total, _), _ = jax.lax.scan(body, carry, (targets, weights))
    return total, grads


# ----------------------------------------------------------------------------------


def _advance(lru: LRU, h_prev, u, traces):
    s, g, e = traces
    lam = lru.eigenvalues()
    gamma = jnp.exp(lru.gamma_log)
    gu = gamma[:, None] * u[None, :]
    gu = jax.lax.complex(gu, jnp.zeros_like(gu))
    return lam * s + h_prev, lam * g + lru.drive(u), lam[:, None] * e + gu


def _trace_grads(lru: LRU, traces, delta):
    s, g, e = traces
    lam = lru.eigenvalues()
    dc = jnp.conj(delta)
    ds = dc * s * lam
    d_nu = jnp.real(ds) * -jnp.exp(lru.nu_log)
    d_theta = -jnp.imag(ds) * jnp.exp(lru.theta_log)  # Re(i z) = -Im z
    de = dc[:, None] * e
    return [d_nu, d_theta, jnp.real(dc * g), jnp.real(de), -jnp.imag(de)]


def _stop_recurrence(model, layers):
    where = lambda m: [getattr(get(m), k) for get in layers for k in _RECURRENCE]
    return eqx.tree_at(where, model, replace_fn=jax.lax.stop_gradient)


def _perturbed_step(model, h, x, perturb):
    dyn = model.dynamics
    if isinstance(dyn, LRU):
        new = dyn.eigenvalues() * dyn.hidden(h) + dyn.drive(x) + perturb[0]
        return dyn.assemble(new, x), [x]
    return dyn.layer_step(h, x, perturb=perturb)


def _hidden_before(model, h):
    dyn = model.dynamics
    if isinstance(dyn, LRU):
        return [dyn.hidden(h)]
    return [
        ly.core.hidden(s) for ly, s in zip(dyn.layers, dyn.split(h)[:-1], strict=True)
    ]


def _describe(model) -> str:
    if isinstance(model, Model):
        dyn = model.dynamics
        if isinstance(dyn, Stack):
            kinds = ", ".join(type(ly.core).__name__ for ly in dyn.layers)
            return f"a `Stack` of [{kinds}]"
        return f"a `Model` of `{type(dyn).__name__}`"
    return f"`{type(model).__name__}`"
