"""The model zoo shared by the tests: every cell and integrator, each with a
feature that exercises one code path (`zoo_model`), and the families the test
files of one part build from (sparse and rate-form networks, contractive
models with an equilibrium, LRUs, stacks, the analysis instruments' models)."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

import rnnode as rn

M, K = 2, 2  # input features, outputs


def zoo_model(name: str, key) -> rn.Model:
    k1, k2, k3 = jr.split(key, 3)
    if name == "ctrnn_euler":  # learnt time constants: the structured `log_tau` term
        dyn = rn.CTRNN(5, M, tau=[1.0, 2.0, 0.7, 1.3, 3.0], learn_tau=True, key=k1)
        return rn.Model(dyn, rn.Euler(0.3), rn.Linear(5, K, key=k2))
    if name == "ctrnn_rk4":  # linear input interpolation: uses `x_next`
        dyn = rn.CTRNN(4, M, gain=1.5, activation="softplus", key=k1)
        return rn.Model(
            dyn, rn.RK4(0.4, interpolation="linear"), rn.Linear(4, K, key=k2)
        )
    if name == "ctrnn_rate_sparse":  # the rate form, 50 % recurrent connections
        dyn = rn.CTRNN(6, M, form="rate", density=0.5, gain=1.2, key=k1)
        return rn.Model(dyn, rn.Euler(0.4), rn.Linear(6, K, key=k2))
    if name == "elman":
        return rn.Model(rn.ElmanRNN(5, M, key=k1), None, rn.Linear(5, K, key=k2))
    if name == "lstm":
        return rn.Model(
            rn.LSTM(3, M, forget_bias=1.0, key=k1), None, rn.Linear(3, K, key=k2)
        )
    if name == "gru":  # a learnt initial state: the `∂h/∂h0` sensitivity
        return rn.Model(
            rn.GRU(4, M, key=k1),
            None,
            rn.Linear(4, K, key=k2),
            initial_state=0.3 * jr.normal(k3, (4,)),
            learn_initial_state=True,
        )
    if name in ("linear_euler", "linear_heun"):  # the seed's example, no readout
        dyn = rn.LinearExample(w=jnp.array([0.3, -0.2]), b=0.1, size=M)
        if name == "linear_euler":
            return rn.Model(dyn, rn.Euler(0.25))
        return rn.Model(dyn, rn.Heun(0.25, interpolation="linear"))
    if name in ("oscillator_heun", "oscillator_rk4"):
        dyn = rn.DampedOscillator(mass=1.3, damping=0.4, stiffness=2.0)
        integrator = rn.Heun(0.2) if name == "oscillator_heun" else rn.RK4(0.2)
        return rn.Model(dyn, integrator, rn.Linear(2, K, key=k2))
    raise AssertionError(name)


def sparse_model(name, key):
    """Sparse networks with learnt time constants (the structured RTRL paths)."""
    k1, k2 = jr.split(key)
    tau = [1.0, 2.0, 0.7, 1.3, 3.0, 1.1]  # learnt: the structured `log_tau` term
    if name == "ctrnn_sparse":  # current form, 40 % dense
        dyn = rn.CTRNN(6, M, density=0.4, gain=1.3, tau=tau, learn_tau=True, key=k1)
        return rn.Model(dyn, rn.Euler(0.3), rn.Linear(6, K, key=k2))
    if name == "ctrnn_rate_sparse":
        dyn = rn.CTRNN(
            6, M, form="rate", density=0.5, tau=tau, learn_tau=True, gain=1.2, key=k1
        )
        return rn.Model(dyn, rn.Euler(0.4), rn.Linear(6, K, key=k2))
    if name == "elman_sparse":
        dyn = rn.ElmanRNN(6, M, density=0.3, key=k1)
        return rn.Model(dyn, None, rn.Linear(6, K, key=k2))
    raise AssertionError(name)


def contractive_ctrnn(key, n=6, m=3, k=2):
    """A CTRNN with a small gain: a contraction, whose equilibrium exists."""
    k1, k2, k3 = jr.split(key, 3)
    dyn = rn.CTRNN(n, m, gain=0.6, tau=1.0, learn_tau=True, key=k1)
    dyn = eqx.tree_at(lambda d: d.b, dyn, 0.1 * jr.normal(k3, (n,)))
    return rn.Model(dyn, rn.Euler(0.1), rn.Linear(n, k, key=k2))


def equilibrium_elman(key, n=6, m=3, k=2):
    """An Elman cell (contractive at its default initialisation)."""
    k1, k2 = jr.split(key)
    return rn.Model(rn.ElmanRNN(n, m, key=k1), None, rn.Linear(n, k, key=k2))


def analysis_model(name, key):
    """Small models of each kind for the analysis instruments (two inputs)."""
    k1, k2 = jr.split(key)
    if name == "elman":
        return rn.Model(rn.ElmanRNN(4, 2, key=k1), readout=rn.Linear(4, 3, key=k2))
    if name == "lstm":
        return rn.Model(rn.LSTM(3, 2, forget_bias=1.0, key=k1))
    if name == "ctrnn":
        cell = rn.CTRNN(4, 2, gain=1.5, key=k1)
        return rn.Model(cell, rn.RK4(0.1), rn.Linear(4, 3, key=k2))
    return rn.Model(rn.GRU(3, 2, key=k1))


def rollout_models(key):
    """One model of each kind with two inputs and one output, by name."""
    k1, k2, k3 = jr.split(key, 3)
    return {
        "ctrnn": rn.Model(
            rn.CTRNN(4, 2, key=k1), rn.Heun(dt=0.1), rn.Linear(4, 1, key=k2)
        ),
        "elman": rn.Model(rn.ElmanRNN(4, 2, key=k1), readout=rn.Linear(4, 1, key=k2)),
        "lstm": rn.Model(rn.LSTM(3, 2, key=k3), readout=rn.Linear(3, 1, key=k2)),
        "gru": rn.Model(rn.GRU(4, 2, key=k1), readout=rn.Linear(4, 1, key=k2)),
    }


def lru_model(key, *, parallel=False, learn_initial_state=False, **kwargs):
    """A `Model` of an `LRU(4, 3)` with a linear readout to two outputs."""
    k1, k2, k3 = jr.split(key, 3)
    lru = rn.LRU(4, 3, r_min=0.4, parallel=parallel, key=k1, **kwargs)
    init = 0.3 * jr.normal(k3, (lru.state_size,)) if learn_initial_state else None
    return rn.Model(
        lru,
        None,
        rn.Linear(3, 2, key=k2),
        initial_state=init,
        learn_initial_state=learn_initial_state,
    )


def stack_model(
    key,
    kinds,
    *,
    mixing="glu",
    norm="pre",
    parallel=False,
    inputs=3,
    width=4,
    outputs=2,
):
    """A `Stack` of the layers `kinds` (lru, gru, lstm, elman, ctrnn) of width
    `width` on `inputs` inputs, read out to `outputs` outputs."""
    D = width
    keys = jr.split(key, len(kinds) + 2)
    layers = []
    for kind, k in zip(kinds, keys, strict=False):
        if kind == "lru":
            layers.append(rn.LRU(3, D, r_min=0.5, parallel=parallel, key=k))
        elif kind == "gru":
            layers.append(rn.GRU(3, D, key=k))
        elif kind == "lstm":
            layers.append(rn.LSTM(2, D, key=k))
        elif kind == "elman":
            layers.append(rn.ElmanRNN(3, D, key=k))
        else:
            layers.append(rn.CTRNN(3, D, key=k))
    stack = rn.Stack(
        layers,
        input_size=inputs,
        mixing=mixing,
        norm=norm,
        integrator=rn.Euler(0.2) if "ctrnn" in kinds else None,
        key=keys[-2],
    )
    return rn.Model(stack, None, rn.Linear(D, outputs, key=keys[-1]))
