"""The model zoo shared by the gradient tests: every cell and integrator of the
foundation issue, each with a feature that exercises one code path."""

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
