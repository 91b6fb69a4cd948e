"""Deep stacks of recurrent layers with position-wise mixing (the architecture of
the LRU and S4/S5 models), as one cell with one flat state."""

from collections.abc import Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Complex, Float, PRNGKeyArray

from ._dynamics import AbstractDynamics, AbstractSequenceCell, AbstractVectorField
from ._integrate import AbstractIntegrator
from ._linear import Linear
from ._lru import LRU

_MIXINGS = ("glu", "mlp")
_NORMS = ("pre", "post", "none")


class Stack(AbstractSequenceCell):
    """Several recurrent layers, each followed by position-wise mixing, a residual
    connection and layer normalisation.

    With `u⁰_t = E x_t` (a linear encoder to the model width `d`), layer `l` is

        pre-norm (default):  v = LN(u), s_t = core(s_{t-1}, v), u' = u + mix(o(s_t))
        post-norm:           s_t = core(s_{t-1}, u), u' = LN(u + mix(o(s_t)))

    where `o` is the core's `observe` (for an `LRU`, its output `Re(C h) + D ⊙ v`)
    and `mix` is position-wise: `"glu"` (default) `(W_a g + a) ⊙ σ(W_b g + b)`
    with `g = GELU(o)`, as in the LRU paper, or `"mlp"` `W₂ GELU(W₁ o + b₁) + b₂`
    with a hidden width `2d`. `norm="none"` drops the normalisation. Dropout is
    not included: a cell's step is a deterministic map `h' = f(h, x)`, with no key.

    **The state** is the concatenation of the layers' flat states and the top
    of the residual stream `u^L_t` (width `d`): `u^L_t` depends on the current
    input through the residual path, so it is kept in the state, and
    `observe(state)` is `u^L_t`. The stack is therefore an ordinary cell with
    one `step`: every gradient method works on it through its generic path
    (`RTRL()` exactly, `LayerLocalRTRL()` approximately for stacks of LRUs).

    **Arguments:**

    - `layers`: the recurrent cores, at least one: any rnnode cell (`LRU`, `GRU`,
      `LSTM`, `ElmanRNN`) or vector field (`CTRNN`, …, stepped by `integrator`),
      each with `input_size` equal to the model width `d` (the same for all).
    - `input_size`: the width of the stack's input.
    - `mixing`: `"glu"` or `"mlp"`.
    - `norm`: `"pre"`, `"post"` or `"none"`.
    - `integrator`: how vector-field layers are stepped (e.g. `Euler(dt=0.1)`),
      with `interpolation="constant"` (a layer's input is the layer below at the
      same step); `None` if every layer is a cell.
    - `key`: a JAX PRNG key for the encoder and the mixing layers.

    With `parallel` LRU layers (`LRU(..., parallel=True)`), `Model.rollout` and
    `sequence_loss(..., gradient=Autodiff())` run the stack layer by layer over
    the whole sequence: each LRU by a parallel scan, the mixing position-wise.
    """

    encoder: Linear
    layers: tuple["_Layer", ...]
    integrator: AbstractIntegrator | None
    width: int = eqx.field(static=True)
    norm: str = eqx.field(static=True)
    state_size: int = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    observe_size: int = eqx.field(static=True)

    def __init__(
        self,
        layers: Sequence[AbstractDynamics],
        *,
        input_size: int,
        mixing: Literal["glu", "mlp"] = "glu",
        norm: Literal["pre", "post", "none"] = "pre",
        integrator: AbstractIntegrator | None = None,
        key: PRNGKeyArray,
    ):
        layers = list(layers)
        if not layers:
            raise ValueError(
                "`Stack(layers=[])`: a stack needs at least one layer, e.g. "
                "`layers=[rnnode.LRU(64, d, key=k1), rnnode.LRU(64, d, key=k2)]`"
            )
        if mixing not in _MIXINGS:
            raise ValueError(f"`Stack(mixing={mixing!r})`: choose `glu` or `mlp`")
        if norm not in _NORMS:
            raise ValueError(f"`Stack(norm={norm!r})`: choose `pre`, `post` or `none`")
        width = layers[0].input_size
        for i, core in enumerate(layers):
            if not isinstance(core, AbstractDynamics):
                raise ValueError(
                    f"`Stack(layers=...)`: layer {i} must be an rnnode cell or "
                    f"vector field, got {type(core).__name__}"
                )
            if core.input_size != width:
                raise ValueError(
                    f"`Stack(layers=...)`: every layer takes the model width as its "
                    f"input; layer 0 has `input_size={width}`, layer {i} has "
                    f"`input_size={core.input_size}`"
                )
            if isinstance(core, AbstractVectorField) and integrator is None:
                raise ValueError(
                    f"`Stack`: layer {i} (`{type(core).__name__}`) is a vector field; "
                    "pass `integrator=rnnode.Euler(dt=...)`"
                )
        if integrator is not None and integrator.interpolation != "constant":
            raise ValueError(
                "`Stack(integrator=...)` must hold each layer's input over a step "
                "(`interpolation='constant'`): the next input of an inner layer is "
                "not known yet"
            )
        if width < 1:
            raise ValueError(
                "`Stack`: the layers' `input_size` (the width) must be >= 1"
            )
        ekey, *lkeys = jr.split(key, len(layers) + 1)
        self.encoder = Linear(input_size, width, key=ekey)
        self.layers = tuple(
            _Layer(core, width, mixing, key=k)
            for core, k in zip(layers, lkeys, strict=True)
        )
        self.integrator = integrator
        self.width = width
        self.norm = norm
        self.state_size = sum(core.state_size for core in layers) + width
        self.input_size = input_size
        self.observe_size = width

    @property
    def parallel(self) -> bool:
        return any(isinstance(ly.core, LRU) and ly.core.parallel for ly in self.layers)

    def split(self, state: Float[Array, "*time state"]) -> list[Array]:
        """The layers' states and the top of the residual stream, from a state."""
        out, start = [], 0
        for ly in self.layers:
            out.append(state[..., start : start + ly.core.state_size])
            start += ly.core.state_size
        out.append(state[..., start:])
        return out

    def layer_step(
        self,
        state: Float[Array, " state"],
        x: Float[Array, " input"],
        *,
        perturb: Sequence[Complex[Array, " n"]] | None = None,
    ) -> tuple[Float[Array, " state"], list[Float[Array, " width"]]]:
        """One step, also returning the input each core saw.

        `perturb` (LRU layers only) adds `perturb[l]` to layer `l`'s new complex
        `h`; `rnnode.LayerLocalRTRL` differentiates with respect to it to get the
        learning signal `∂l_t/∂h^l_t` at the current step.
        """
        u = self.encoder(x)
        states, seen = [], []
        for i, (ly, s) in enumerate(
            zip(self.layers, self.split(state)[:-1], strict=True)
        ):
            v = _layer_norm(ly, u) if self.norm == "pre" else u
            if perturb is None:
                s = self._core_step(ly.core, s, v)
            else:
                core = ly.core
                s = core.assemble(
                    core.eigenvalues() * core.hidden(s) + core.drive(v) + perturb[i], v
                )
            u = self._mix(ly, u, ly.core.observe(s))
            states.append(s)
            seen.append(v)
        return jnp.concatenate([*states, u]), seen

    def __call__(self, state, x):
        return self.layer_step(state, x)[0]

    def observe(self, state):
        return state[self.state_size - self.width :]

    def sequence(self, h0, xs):
        u = jax.vmap(self.encoder)(xs)
        states = []
        for ly, s0 in zip(self.layers, self.split(h0)[:-1], strict=True):
            v = jax.vmap(lambda u: _layer_norm(ly, u))(u) if self.norm == "pre" else u
            core = ly.core
            if isinstance(core, AbstractSequenceCell):
                s = core.sequence(s0, v)
            else:

                def body(s, v, core=core):
                    s = self._core_step(core, s, v)
                    return s, s

                _, s = jax.lax.scan(body, s0, v)
            u = jax.vmap(lambda u, o: self._mix(ly, u, o))(u, jax.vmap(core.observe)(s))
            states.append(s)
        return jnp.concatenate([*states, u], axis=-1)

    def _core_step(self, core, s, v):
        if isinstance(core, AbstractVectorField):
            # Autonomous fields, input held over the step: `t` and `x_next` unused.
            return self.integrator.step(core, 0.0, s, v, v)
        return core(s, v)

    def _mix(self, ly, u, o):
        u = u + ly.mix(o)
        return _layer_norm(ly, u) if self.norm == "post" else u


class _Layer(eqx.Module):
    """One layer's core, its position-wise mixing and its normalisation."""

    core: AbstractDynamics
    mix_a: Linear
    mix_b: Linear
    scale: Float[Array, " width"]
    shift: Float[Array, " width"]
    mixing: str = eqx.field(static=True)

    def __init__(self, core, width, mixing, *, key):
        k1, k2 = jr.split(key)
        self.core = core
        o = core.observe_size
        if mixing == "glu":
            self.mix_a = Linear(o, width, key=k1)
            self.mix_b = Linear(o, width, key=k2)
        else:
            self.mix_a = Linear(o, 2 * width, key=k1)
            self.mix_b = Linear(2 * width, width, key=k2)
        self.scale = jnp.ones((width,))
        self.shift = jnp.zeros((width,))
        self.mixing = mixing

    def mix(self, o):
        if self.mixing == "glu":
            g = jax.nn.gelu(o)
            return self.mix_a(g) * jax.nn.sigmoid(self.mix_b(g))
        return self.mix_b(jax.nn.gelu(self.mix_a(o)))


def _layer_norm(ly: _Layer, u, eps: float = 1e-5):
    mean = jnp.mean(u)
    var = jnp.mean((u - mean) ** 2)
    return (u - mean) / jnp.sqrt(var + eps) * ly.scale + ly.shift
