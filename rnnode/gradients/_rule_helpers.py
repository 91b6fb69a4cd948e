"""The public helpers of online rules: which cells a rule covers, the gradient
shaped like the model, the immediate influence, the learning signal."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._dynamics import CTRNN
from .._integrate import Euler
from .._model import Model
from ._coverage import ANY, ONLINE_COVERAGE
from ._rtrl_structured import structured_jacobians


def check_cell(method: str, model, cells: tuple[type, ...], hint: str = "") -> None:
    """Raise a `ValueError` unless `model` is a `Model` whose dynamics is one of
    `cells` (discrete cells, or `CTRNN` stepped by `Euler`).

    **Arguments:**

    - `method`: how the message names the rule, e.g. `"RFLO"`.
    - `model`: the model to check.
    - `cells`: the dynamics classes the rule covers.
    - `hint`: a sentence appended to the message (what to use instead).
    """
    ok = isinstance(model, Model) and isinstance(model.dynamics, cells)
    if ok and isinstance(model.dynamics, CTRNN):
        ok = isinstance(model.integrator, Euler)
    if not ok:
        names = [f"`{c.__name__}`" for c in cells if c is not CTRNN]
        if CTRNN in cells:
            names.append("`CTRNN` with `Euler`")
        names = (
            names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        )
        raise ValueError(
            f"`{method}` is defined for {names}; got {cell_name(model)}. {hint}".rstrip()
        )


def check_coverage(name: str, method: str, model, hint: str) -> None:
    """`check_cell` with the cells of `ONLINE_COVERAGE[name]` (the coverage table)."""
    cells = ONLINE_COVERAGE[name]
    if cells != ANY:
        check_cell(method, model, cells, hint)


def cell_name(model) -> str:
    """How an error message names a model's dynamics (and integrator)."""
    if not isinstance(model, Model):
        return f"parameters of type `{type(model).__name__}`"
    name = f"`{type(model.dynamics).__name__}`"
    if model.integrator is not None:
        name += f" with `{type(model.integrator).__name__}`"
    return name


def dynamics_gradient(model: Model, grads: dict[str, Array]) -> PyTree:
    """A gradient shaped like `eqx.filter(model, eqx.is_inexact_array)`: the given
    arrays at the fields of `model.dynamics` they name, `None` elsewhere.

    **Arguments:**

    - `model`: the model.
    - `grads`: field name of `model.dynamics` → its gradient (its shape).

    **Returns:** the pytree a rule's `gradient` returns.
    """
    out = jax.tree.map(lambda _: None, eqx.filter(model, eqx.is_inexact_array))
    if not grads:
        return out
    names = list(grads)
    return eqx.tree_at(
        lambda g: [getattr(g.dynamics, k) for k in names],
        out,
        [grads[k] for k in names],
        is_leaf=lambda x: x is None,
    )


def dynamics_fields(model) -> list[str]:
    """The floating-point fields of `model.dynamics` (the parameters a trace of
    `structured_jacobians` covers), in order."""
    flat = jax.tree_util.tree_flatten_with_path(model)[0]
    return [
        path[1].name
        for path, leaf in flat
        if eqx.is_inexact_array(leaf)
        and len(path) == 2
        and getattr(path[0], "name", None) == "dynamics"
    ]


def unit_influence(model: Model, h: Float[Array, " n"], inputs) -> dict[str, Array]:
    """The immediate influence `I_t` of each parameter of `model.dynamics` on the
    unit its row drives, shaped like the parameter: for `ElmanRNN`,
    `∂h'_j/∂W_jk = φ'(z_j) h_k`; for a `CTRNN` with `Euler`, `c_j φ'(z_j) r_k`
    (rate form) or `c_j φ(r_k)` (current form); likewise for `U`, `b` and a
    learnt `log_tau`. (For `LSTM` and `GRU`, the influence on `h_j`.)

    **Arguments:**

    - `model`: a model of a cell with a structured Jacobian.
    - `h`: the state before the step.
    - `inputs`: the step's inputs `(t, x, x_next)`.

    **Returns:** field name → array of the field's shape.
    """
    _, imm = structured_jacobians(model, h, *inputs)
    return {
        name: r.vals[0] if r.v is None else r.vals[0][:, None] * r.v[None, :]
        for name, r in imm.items()
    }


FEEDBACKS = ("symmetric", "random")


def learning_signal(
    model: Model,
    dh: Float[Array, " n"],
    h: Float[Array, " n"],
    y,
    loss: Callable,
    *,
    feedback: str = "symmetric",
    seed=0,
) -> Float[Array, " n"]:
    """The learning signal `L_t` mapped to the state.

    **Arguments:**

    - `model`, `h`, `y`, `loss`: the model, the state, the target and the
      per-step loss `loss(model, h, y)`.
    - `dh`: `∂l_t/∂h_t`.
    - `feedback`: `"symmetric"`: `∂l_t/∂h_t` itself (the true readout weights);
      `"random"`: `Bᵀ ∂l_t/∂o_t` pushed through `dynamics.observe`, with a fixed
      random `B` of the readout's shape `(out, observed)`, entries uniform on
      `±√(3/observed)` (variance `1/observed`) drawn from `jr.PRNGKey(seed)`
      (Murray, 2019).
    - `seed`: the seed of `B` (an integer, or an integer array: no recompilation).

    **Returns:** `L_t`, shaped like the state.
    """
    if feedback == "symmetric":
        return dh
    obs, observe_vjp = jax.vjp(model.dynamics.observe, h)
    out = jax.eval_shape(model.output, h)
    if out.ndim != 1:
        raise ValueError(
            f"`feedback='random'` needs a vector output, got shape {out.shape}"
        )
    delta = jnp.zeros(out.shape, out.dtype)

    def shifted_loss(delta):
        shifted = eqx.tree_at(
            lambda m: m.readout,
            model,
            _Shifted(model.readout, delta),
            is_leaf=lambda x: x is None,
        )
        return loss(shifted, h, y)

    dl_do = jax.grad(shifted_loss)(delta)
    # uniform bits in float32 whatever the precision (no transcendental functions),
    # so float32 and float64, jitted and eager runs use the very same matrix
    bound = float(np.sqrt(3.0 / obs.shape[0]))
    shape = (out.shape[0], obs.shape[0])
    B = jax.random.uniform(
        jax.random.PRNGKey(seed), shape, jnp.float32, -bound, bound
    ).astype(obs.dtype)
    (sig,) = observe_vjp((dl_do.astype(obs.dtype) @ B).astype(obs.dtype))
    return sig


class _Shifted(eqx.Module):
    """A readout plus a constant: `∂l/∂delta` at `delta = 0` is `∂l/∂o`."""

    inner: Callable | None
    delta: Array

    def __call__(self, obs):
        out = obs if self.inner is None else self.inner(obs)
        return out + self.delta


def check_feedback(method: str, feedback) -> None:
    if feedback not in FEEDBACKS:
        raise ValueError(
            f"`{method}(feedback={feedback!r})`: choose `'symmetric'` (the readout's "
            "own weights) or `'random'` (a fixed random matrix)"
        )


def seed_array(seed):
    """A method's `seed` as a JAX integer array (data, not a static field: another
    seed does not recompile); anything but a non-negative integer is left as it is,
    for `check_seed` to refuse."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if 0 <= int(seed) < 2**32:
            return jnp.asarray(int(seed), dtype=jnp.uint32)
    elif isinstance(seed, jax.Array) and seed.ndim == 0:
        if jnp.issubdtype(seed.dtype, jnp.integer):
            return seed.astype(jnp.uint32)
    return seed


def check_seed(method: str, seed) -> None:
    ok = isinstance(seed, jax.Array) and seed.dtype == jnp.uint32 and seed.ndim == 0
    if not ok:
        raise ValueError(
            f"`{method}(seed={seed!r})`: `seed` must be an integer in [0, 2**32)"
        )
