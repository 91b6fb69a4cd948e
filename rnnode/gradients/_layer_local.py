"""Layer-local online learning for deep stacks of diagonal linear recurrences
(Zucchet et al., 2023)."""

from .._model import Model
from ._online import AbstractOnlineGradient
from ._rtrl_diagonal import init_traces, lru_layers, traced_loss_fwd, traced_step


class LayerLocalRTRL(AbstractOnlineGradient):
    """Online learning of a stack of LRUs with layer-local eligibility traces
    (Zucchet, Meier, Schug, Mujika & Sacramento, 2023, "Online learning of
    long-range dependencies").

    Every `LRU` layer carries the element-wise sensitivities of its own state to
    its own recurrence parameters (`ν`, `θ`, `γ_log`, `B`; `O(n m)` numbers per
    layer, the cost of its forward pass). At each step the loss term is
    backpropagated through the current step only, from the readout down through
    the layers; the learning signal `δ^l = ∂l_t/∂h^l_t` it leaves at layer `l`
    meets that layer's traces, and every other parameter (the encoder, the
    LRU's `C` and `D`, the mixing and normalisation, the readout) gets its
    gradient through the current step. No sensitivity is carried across layers,
    so for a deeper stack the gradient is an approximation; for a `Model` of one
    `LRU` it is exact (and equal to `RTRL()`, which uses the same traces there).
    In a `Stack` with one LRU layer, the recurrence and everything above it are
    exact; the encoder and a pre-norm below the recurrence get the one-step
    gradient.

    Use it as `gradient=LayerLocalRTRL()` in `sequence_loss` (a forward
    `lax.scan` that accumulates the gradient, memory independent of `T`), or
    online with `init`, `step` and `reset` like every online method (the online
    state's `trace` holds, per LRU layer, the complex traces
    `(∂h/∂λ, ∂h/∂γ_log, ∂h/∂B_re)`).

    Works on a `Model` whose dynamics are an `LRU` or a `Stack` of `LRU`s (a
    `ValueError` otherwise), with a fixed initial state. Only the parameters are
    differentiated.
    """

    def validate(self, model):
        if isinstance(model, Model) and model.learn_initial_state:
            raise ValueError(
                "`LayerLocalRTRL` does not train an initial state; use "
                "`learn_initial_state=False` or `RTRL()`"
            )
        lru_layers(model, "LayerLocalRTRL")

    def init_trace(self, model, h, inputs):
        del h, inputs
        return init_traces(model, lru_layers(model, "LayerLocalRTRL"))

    def _update(self, step, loss, params, h, trace, key, inp, y):
        del step, key
        _, x, _ = inp  # the LRU and the stack are discrete cells
        layers = lru_layers(params, "LayerLocalRTRL")
        return traced_step(params, layers, h, trace, x, y, loss)

    def _sequence(
        self, step, loss, params, h0, inputs, targets, weights, p_params, learn_h0
    ):
        del step, p_params, learn_h0
        layers = lru_layers(params, "LayerLocalRTRL")
        total, grads = traced_loss_fwd(
            params, layers, h0, inputs, targets, weights, loss
        )
        return total, grads, None
