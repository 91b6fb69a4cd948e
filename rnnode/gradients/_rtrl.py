"""Real-time recurrent learning: the gradient of a sequence loss by forward
sensitivities, in memory independent of the sequence length, and online."""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from .._dynamics import is_noisy
from .._integrate import Diffrax
from .._model import Model
from ._base import AbstractStepwiseGradient
from ._online import AbstractOnlineGradient
from ._rtrl_diagonal import init_traces, is_diagonal, lru_layers, traced_step
from ._rtrl_sequence import (
    Plan,
    _rebuild,
    advance_blocks,
    in_dynamics,
    in_integrator,
    is_initial_state,
    mask_sparse,
    rtrl_sequence,
)
from ._rtrl_structured import has_structure


class RTRL(AbstractOnlineGradient, AbstractStepwiseGradient):
    """Real-time recurrent learning (Williams & Zipser, 1989): forward sensitivities.

    Along with the state it carries `P_t = ∂h_t/∂θ` for every parameter,

        P_t = J_t P_{t-1} + ∂step_t/∂θ,        J_t = ∂h_t/∂h_{t-1},   P_0 = 0,

    and accumulates the gradient `g = Σ_t a_t (∂l_t/∂h_t · P_t + ∂l_t/∂θ)` during the
    forward `lax.scan`. Its custom VJP only scales `g` by the incoming cotangent, so
    memory does not depend on the sequence length `T`; time is `O(T n² m)` for `n`
    states and `m` parameters, dominated by the matrix product `J_t P_{t-1}`.

    - **Structured path** (`ElmanRNN`, `LSTM`, `GRU`, `CTRNN` with `Euler`): `J_t` and
      the immediate Jacobian `∂step/∂θ` come in closed form. A weight `W_jk` touches
      only the units its row drives (`∂h_i/∂W_jk = φ'(z_i) δ_ij h_k` for Elman), so
      the immediate term is scattered into `J P` and no one-hot tangent is pushed
      through a dense product. The readout and a fixed initial state carry no
      sensitivity at all. Both forms of the `CTRNN` are covered; for a sparse
      `W` (`density < 1`) the sensitivities of the missing connections ride along
      (they never feed `J_t`) and their gradient is set to zero.
    - **Generic path** (any step): `J_t` and `∂step/∂θ` from `n` vector-Jacobian
      products of the step (`jax.vmap(jax.vjp)` over the state basis), then one
      dense `J P` product. `n` VJPs are cheaper than `m` JVPs since `m ≫ n`.
    - **Element-wise path** (a `Model` of an `LRU`, fixed initial state): the
      Jacobian is diagonal, so each unit's sensitivities follow their own scalar
      recursions, `O(n m)` numbers and work per step (see
      `rnnode/gradients/_rtrl_diagonal.py`); the online state's `trace` then holds
      the complex traces `(∂h/∂λ, ∂h/∂γ_log, ∂h/∂B_re)` per layer.
    - **`Diffrax` integrator**: the sensitivity ODE `dP/dt = (∂F/∂r) P + ∂F/∂θ` is
      integrated alongside `r` with the model's own solver, step-size controller and
      `dt0` over each interval, not differentiated through the solver.

    **Initial state.** If `h0` is differentiated (a model with
    `learn_initial_state=True`, or an `h0` that depends on parameters), RTRL also
    carries `S_t = ∂h_t/∂h_0` with `S_0 = I` (`n²` more numbers, `O(n³)` per step)
    and returns `Σ_t a_t ∂l_t/∂h_t · S_t` as the cotangent of `h0`. Online,
    `RTRL.init` starts the sensitivity of a learnt `Model.initial_state` at the
    identity, so its gradient comes out with the others.

    **Arguments:**

    - `structured`: `"auto"` (default) uses the structured path where rnnode has one
      and the generic path elsewhere; `True` requires it (`ValueError` otherwise);
      `False` forces the generic path. It assumes the step is `Model.step`, which is
      how `sequence_loss` and `RTRL.step` call it.
    - `block`: propagate the sensitivities once every `block` steps instead of at
      every step (structured path only; default 1, the textbook recursion). Within
      a block of `k` steps a local reverse pass gives the in-block loss terms and
      the products `M_s = J_k ⋯ J_{s+1}` of the block's Jacobians, and then

          P_k = M_0 P_0 + Σ_s M_s ∂step_s/∂θ,

      where each immediate term is the structured outer product, so that
      `Σ_s M_s ∂step_s/∂θ` is one `(n q) × k × (k_l)` matrix product. The dense
      `(n, n) @ (n, m)` product happens once a block: time per step
      `O(n³ + n m + n² m / k)` instead of `O(n² m)`, extra memory `O(k n²)` (the
      block's Jacobians), still independent of `T`. The gradient is the same (up
      to rounding). `block ≈ n` balances the terms. This is Schmidhuber's (1992)
      fixed-size-storage `O(n³)` hybrid of RTRL and BPTT. `RTRL.step` (online)
      always works step by step.

    Online (`init` / `step` / `reset`, `rnnode.AbstractOnlineGradient`), the
    state's `trace` is `P`: a pytree shaped like
    `eqx.filter(model, eqx.is_inexact_array)` whose leaf for a parameter of shape
    `s` has shape `(state_size, *s)`, e.g. `trace.dynamics.W[i, j, k] = ∂h_i/∂W_jk`
    (`None` for parameters the step does not depend on).

    Only the parameters and the initial state are differentiated: gradients with
    respect to inputs, targets or weights need a reverse pass (use `Autodiff()` or
    `BPTT()`). Higher-order derivatives are not available (a custom VJP).
    """

    structured: bool | Literal["auto"] = eqx.field(static=True, default="auto")
    block: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if not (isinstance(self.block, int) and not isinstance(self.block, bool)) or (
            self.block < 1
        ):
            raise ValueError(
                f"`RTRL(block={self.block!r})`: `block` must be a positive integer "
                "(1: update the sensitivities at every step)"
            )
        if self.block > 1 and self.structured is False:
            raise ValueError(
                "`RTRL(block=...)` needs the structured path; drop "
                "`structured=False` or use `block=1`"
            )
        if not (self.structured is True or self.structured is False) and (
            self.structured != "auto"
        ):
            raise ValueError(
                f"`RTRL(structured={self.structured!r})`: choose `True`, `False` "
                "or `'auto'`"
            )

    learns_initial_state = True

    def validate(self, model):
        _method(self.structured, model)

    def init_trace(self, model, h, inputs):
        """Zero sensitivities, and the identity for a learnt initial state."""
        del inputs
        method = _method(self.structured, model)
        if method == "diagonal":
            return init_traces(model, lru_layers(model, "RTRL"))
        n = model.state_size
        flat, treedef = jax.tree_util.tree_flatten_with_path(model)
        blocks = []
        for path, leaf in flat:
            if not eqx.is_inexact_array(leaf):
                blocks.append(None)
            elif is_initial_state(path):
                eye = jnp.eye(n, dtype=leaf.dtype)
                blocks.append(eye if model.learn_initial_state else None)
            elif in_dynamics(path) or (method == "generic" and in_integrator(path)):
                blocks.append(jnp.zeros((n, *leaf.shape), dtype=leaf.dtype))
            else:
                blocks.append(None)
        return jax.tree_util.tree_unflatten(treedef, blocks)

    def _update(self, step, loss, params, h, trace, key, inp, y):
        del key
        method = _method(self.structured, params)
        if method == "diagonal":
            _, x, _ = inp
            layers = lru_layers(params, "RTRL")
            return traced_step(params, layers, h, trace, x, y, loss)
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        paths = [p for p, _ in flat]
        leaves = [v for _, v in flat]
        try:
            all_blocks = treedef.flatten_up_to(trace)
        except (ValueError, TypeError):
            raise ValueError(
                "`RTRL.step`: `state` was made for a different model; call "
                "`RTRL.init(model)` again"
            ) from None
        tracked = [i for i, b in enumerate(all_blocks) if b is not None]
        plan = Plan(method, treedef, tuple(paths), tuple(tracked))
        blocks = [all_blocks[i] for i in tracked]
        h, blocks = advance_blocks(plan, step, params, leaves, h, blocks, inp)
        direct = [i for i, v in enumerate(leaves) if eqx.is_inexact_array(v)]

        def step_loss(sub, h):
            return loss(_rebuild(treedef, leaves, direct, sub), h, y)

        value, (dsub, dh) = jax.value_and_grad(step_loss, argnums=(0, 1))(
            [leaves[i] for i in direct], h
        )
        grads = [None] * len(leaves)
        for i, g in zip(direct, dsub, strict=True):
            grads[i] = g
        new_blocks = [None] * len(leaves)
        for i, P in zip(tracked, blocks, strict=True):
            grads[i] = grads[i] + jnp.tensordot(dh, P, axes=1)
            new_blocks[i] = P
        grads = mask_sparse(params, paths, grads, method)
        unflatten = jax.tree_util.tree_unflatten
        return h, unflatten(treedef, new_blocks), value, unflatten(treedef, grads)

    def _sequence(
        self, step, loss, params, h0, inputs, targets, weights, p_params, learn_h0
    ):
        method = _method(self.structured, params)
        return rtrl_sequence(
            self,
            method,
            step,
            loss,
            params,
            h0,
            inputs,
            targets,
            weights,
            p_params,
            learn_h0,
        )


# --------------------------------------------------------------------------------------
# Helpers


def _method(structured, params) -> str:
    if isinstance(params, Model) and isinstance(params.integrator, Diffrax):
        if structured is True:
            raise ValueError(
                "`RTRL(structured=True)` has no structured form for a `Diffrax` "
                "integrator (it integrates the sensitivity ODE); use "
                "`RTRL(structured='auto')`"
            )
        # the sensitivity ODE is not the SDE's: a noisy field goes through the
        # VJPs of its (stochastic) step instead
        return "generic" if is_noisy(params.dynamics) else "diffrax"
    if structured is False:
        return "generic"
    if is_diagonal(params) and not params.learn_initial_state:
        return "diagonal"  # an `LRU`: element-wise sensitivities, `_rtrl_diagonal.py`
    if has_structure(params):
        return "structured"
    if structured is True:
        what = (
            f"`{type(params.dynamics).__name__}` with "
            f"`{type(params.integrator).__name__}`"
            if isinstance(params, Model)
            else f"parameters of type `{type(params).__name__}`"
        )
        raise ValueError(
            f"`RTRL(structured=True)`: no structured Jacobian for {what}; it exists "
            "for `ElmanRNN`, `LSTM`, `GRU` and `CTRNN` with `Euler`. Use "
            "`RTRL(structured='auto')` for the generic path"
        )
    return "generic"
