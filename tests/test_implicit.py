"""Equilibria and their implicit fixed-point gradients (`rnnode.equilibrium`,
`Implicit`, `Unrolled`, `FixedPointIteration`, `Anderson`)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest
from _gradcheck import rel
from _zoo import contractive_ctrnn, equilibrium_elman
from jaxtyping import Array

import rnnode
from rnnode import (
    RESULTS,
    Anderson,
    FixedPointIteration,
    Implicit,
    Unrolled,
    equilibrium,
    equilibrium_loss,
)


class Affine(rnnode.AbstractCell):
    """`h ↦ λ h + θ + x`: fixed point `h* = (θ + x) / (1 - λ)`, `dh*/dθ = 1/(1 - λ)`."""

    theta: Array
    lam: float = eqx.field(static=True)
    state_size: int = eqx.field(static=True, default=1)
    input_size: int = eqx.field(static=True, default=1)
    observe_size: int = eqx.field(static=True, default=1)

    def __call__(self, h, x):
        return self.lam * h + self.theta + x

    def observe(self, state):
        return state


class Rotation(rnnode.AbstractCell):
    """`h ↦ R h + b` with `R` a rotation: spectral radius exactly 1."""

    b: Array
    state_size: int = eqx.field(static=True, default=2)
    input_size: int = eqx.field(static=True, default=1)
    observe_size: int = eqx.field(static=True, default=2)

    def __call__(self, h, x):
        c, s = np.cos(0.3), np.sin(0.3)
        R = jnp.array([[c, -s], [s, c]])
        return R @ h + self.b + x[0]

    def observe(self, state):
        return state


MODELS = {"ctrnn": contractive_ctrnn, "elman": equilibrium_elman}


# ---------------------------------------------------------------------------
# Analytic cases
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gradient, solver",
    [
        (Implicit(), FixedPointIteration(max_steps=100)),
        (Implicit(), Anderson(max_steps=100)),
        (Unrolled(), FixedPointIteration(max_steps=100)),
        # 50 = 6 segments of 8 steps + 2: the checkpointed loop's remainder too
        (Unrolled(kind="checkpointed"), FixedPointIteration(max_steps=50)),
    ],
    ids=["implicit-fp", "implicit-anderson", "unrolled-fp", "unrolled-ckpt-fp"],
)
def test_analytic_half(gradient, solver):
    # x = 0.5 x + θ  →  x* = 2θ,  dx*/dθ = 2
    cell = Affine(theta=jnp.asarray(0.7), lam=0.5)
    x = jnp.zeros((1,))

    def f(c):
        return equilibrium(c, x, solver=solver, gradient=gradient)[0]

    assert float(f(cell)) == pytest.approx(1.4, abs=1e-10)
    g = eqx.filter_grad(f)(cell)
    assert float(g.theta) == pytest.approx(2.0, abs=1e-9)
    if isinstance(gradient, Unrolled):  # forward mode through the loop as well
        _, tangent = jax.jvp(
            lambda th: f(eqx.tree_at(lambda c: c.theta, cell, th)),
            (cell.theta,),
            (jnp.ones_like(cell.theta),),
        )
        assert float(tangent) == pytest.approx(2.0, abs=1e-9)


def test_analytic_continuous_linear_example():
    # dr/dt = -r + w + b + x = 0  →  r* = w + b + x,  dr*/dw = 1
    dyn = rnnode.LinearExample(w=jnp.array([0.3, -0.2]), b=0.1, size=2)
    xs = jnp.array([[1.0, 2.0], [0.5, -1.0]])
    hs = equilibrium(dyn, xs, step_size=0.5)
    np.testing.assert_allclose(hs, xs + dyn.w + dyn.b, atol=1e-10)
    g = eqx.filter_grad(lambda d: jnp.sum(equilibrium(d, xs, step_size=0.5)))(dyn)
    np.testing.assert_allclose(g.w, [2.0, 2.0], atol=1e-9)
    assert float(g.b) == pytest.approx(4.0, abs=1e-9)
    # `Autodiff()` is accepted and means `Unrolled()`
    kw = dict(step_size=0.5, solver=FixedPointIteration(max_steps=100))
    g2 = eqx.filter_grad(
        lambda d: jnp.sum(equilibrium(d, xs, gradient=rnnode.Autodiff(), **kw))
    )(dyn)
    np.testing.assert_allclose(g2.w, [2.0, 2.0], atol=1e-9)


# ---------------------------------------------------------------------------
# Implicit vs unrolled autodiff vs finite differences
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, with_gmres", [("ctrnn", True), ("elman", False)])
def test_implicit_matches_unrolled_and_fd(name, with_gmres, getkey):
    model = MODELS[name](getkey())
    xs = jr.normal(getkey(), (4, 3))
    ys = jr.normal(getkey(), (4, 2))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    solver = FixedPointIteration(max_steps=150)  # bounds Unrolled's stored steps

    @jax.jit
    def grads(params, xs):
        def loss(p, x, gradient):
            m = eqx.combine(p, static)
            return equilibrium_loss(m, x, ys, gradient=gradient, solver=solver)

        gradients = {"implicit": Implicit(), "unrolled": Unrolled()}
        if with_gmres:
            gmres = lx.GMRES(rtol=1e-13, atol=1e-13)
            gradients["gmres"] = Implicit(linear_solver=gmres)
        return {
            key: jax.grad(loss, argnums=(0, 1))(params, xs, gradient)
            for key, gradient in gradients.items()
        }

    g = grads(params, xs)
    assert rel(g["implicit"], g["unrolled"]) < 1e-8
    if with_gmres:
        assert rel(g["gmres"], g["unrolled"]) < 1e-8

    # central finite differences along random directions in (params, xs)
    f = jax.jit(lambda p, x: equilibrium_loss(eqx.combine(p, static), x, ys))
    for _ in range(2):
        d = jax.tree.map(lambda a: jr.normal(getkey(), a.shape), (params, xs))
        eps = 1e-5
        plus = jax.tree.map(lambda a, b: a + eps * b, (params, xs), d)
        minus = jax.tree.map(lambda a, b: a - eps * b, (params, xs), d)
        fd = (f(*plus) - f(*minus)) / (2 * eps)
        ad = sum(
            jnp.vdot(a, b)
            for a, b in zip(
                jax.tree.leaves(g["implicit"]), jax.tree.leaves(d), strict=True
            )
        )
        assert float(ad) == pytest.approx(float(fd), rel=1e-6)


def test_vmap_grad_and_grad_vmap(getkey):
    """Per-example gradients under `vmap(grad)` average to `grad` of the batch loss,
    and `grad` of a `vmap` of single-example equilibria gives the same."""
    model = equilibrium_elman(getkey())
    xs = jr.normal(getkey(), (3, 3))
    ys = jr.normal(getkey(), (3, 2))

    g = eqx.filter_jit(eqx.filter_grad(equilibrium_loss))(model, xs, ys)
    per = eqx.filter_jit(
        eqx.filter_vmap(eqx.filter_grad(equilibrium_loss), in_axes=(None, 0, 0))
    )(model, xs, ys)
    averaged = jax.tree.map(lambda a: jnp.mean(a, axis=0), per)
    assert rel(averaged, g) < 1e-10

    # grad(vmap): vmap of single-example equilibria inside the loss
    def vloss(m):
        hs = jax.vmap(lambda x: equilibrium(m, x))(xs)
        return jnp.mean(jax.vmap(lambda h, y: rnnode.mse(m.output(h), y))(hs, ys))

    assert rel(eqx.filter_grad(vloss)(model), g) < 1e-10


# ---------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------


def test_solvers_agree_anderson_fewer_steps(getkey):
    # A continuous CTRNN iterated with a small step: J = I + α ∂F/∂r has its
    # spectrum clustered near 1 - α, where Anderson helps most.
    dyn = rnnode.CTRNN(8, 3, gain=0.8, key=getkey())
    xs = jr.normal(getkey(), (5, 3))
    kw = dict(step_size=0.2, return_info=True)
    fp = equilibrium(dyn, xs, solver=FixedPointIteration(), **kw)
    aa = equilibrium(dyn, xs, solver=Anderson(memory=5), **kw)
    assert bool(jnp.all(fp.result == RESULTS.successful))
    assert bool(jnp.all(aa.result == RESULTS.successful))
    np.testing.assert_allclose(aa.value, fp.value, atol=1e-10)
    F = jax.jit(jax.vmap(lambda x, r: dyn(0.0, r, x)))(xs, aa.value)
    assert float(jnp.max(jnp.abs(F))) < 1e-10
    assert int(jnp.max(aa.num_steps)) < int(jnp.min(fp.num_steps))
    assert aa.residual.shape == (5,) and aa.num_steps.shape == (5,)
    # damping slows plain iteration but converges to the same point
    damped = equilibrium(dyn, xs, solver=FixedPointIteration(damping=0.5), **kw)
    np.testing.assert_allclose(damped.value, fp.value, atol=1e-10)
    assert int(jnp.min(damped.num_steps)) > int(jnp.max(fp.num_steps))


def test_single_input_shapes_and_h0(getkey):
    model = equilibrium_elman(getkey())
    x = jr.normal(getkey(), (3,))
    sol = equilibrium(model, x, return_info=True)
    assert sol.value.shape == (6,)
    assert sol.residual.shape == () and sol.num_steps.shape == ()
    assert bool(sol.result == RESULTS.successful)
    np.testing.assert_allclose(model.dynamics(sol.value, x), sol.value, atol=1e-10)
    # starting at the equilibrium takes no steps
    again = equilibrium(model, x, h0=sol.value, return_info=True)
    assert int(again.num_steps) == 0
    np.testing.assert_allclose(again.value, sol.value, atol=1e-12)
    # the loss accepts an equilibrium task's time-major (1, N, m) split
    xs = jr.normal(getkey(), (1, 4, 3))
    ys = jr.normal(getkey(), (1, 4, 2))
    assert float(equilibrium_loss(model, xs, ys)) == pytest.approx(
        float(equilibrium_loss(model, xs[0], ys[0])), rel=1e-12
    )


def test_spectral_radius_estimate(getkey):
    model = contractive_ctrnn(getkey())
    x = jr.normal(getkey(), (3,))
    h = equilibrium(model, x)
    G = rnnode.fixed_point_map(model.dynamics)
    J = jax.jit(jax.jacfwd(lambda hh: G(model.dynamics, x, hh)))(h)
    rho = np.max(np.abs(np.linalg.eigvals(np.asarray(J))))
    est = rnnode.spectral_radius_estimate(model, x, num_iterations=400)
    assert float(est) == pytest.approx(rho, rel=0.05)
    assert rho < 1


# ---------------------------------------------------------------------------
# Failures are reported
# ---------------------------------------------------------------------------


def test_divergent_map_reported():
    cell = Affine(theta=jnp.asarray(1.0), lam=3.0)  # spectral radius 3: overflows
    x = jnp.zeros((1,))
    sol = equilibrium(cell, x, throw=False, return_info=True)
    assert bool(sol.result == RESULTS.diverged)
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="spectral radius"):
        equilibrium(cell, x)


def test_non_contracting_maps_reported(getkey):
    # |λ| = 1: bounded but never converges
    rot = Rotation(b=jnp.array([0.1, 0.2]))
    sol = equilibrium(
        rot,
        jnp.zeros((1,)),
        solver=FixedPointIteration(max_steps=200),
        throw=False,
        return_info=True,
    )
    assert bool(sol.result == RESULTS.max_steps_reached)
    assert int(sol.num_steps) == 200
    # an Elman network with large recurrent weights (chaotic), batched
    elman = rnnode.ElmanRNN(16, 2, key=getkey())
    elman = eqx.tree_at(lambda c: c.W, elman, 6.0 * elman.W)
    xs = jr.normal(getkey(), (3, 2))
    solver = FixedPointIteration(max_steps=300)
    sol = equilibrium(elman, xs, solver=solver, throw=False, return_info=True)
    assert not bool(jnp.any(sol.result == RESULTS.successful))
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="max_steps"):
        equilibrium(elman, xs, solver=solver)


def test_adjoint_failure_reported():
    # Anderson finds the fixed point h* = -θ/2 of h ↦ 3h + θ, but the Neumann
    # adjoint V = 3V + a diverges (ρ(J) = 3); GMRES still solves it.
    cell = Affine(theta=jnp.asarray(0.5), lam=3.0)
    x = jnp.zeros((1,))
    solver = Anderson()

    def f(c, gradient):
        return equilibrium(c, x, solver=solver, gradient=gradient)[0]

    assert float(f(cell, Implicit())) == pytest.approx(-0.25, abs=1e-10)
    grad = eqx.filter_jit(eqx.filter_grad(f))
    with pytest.raises(eqx.EquinoxRuntimeError, match="adjoint"):
        grad(cell, Implicit())
    g = grad(cell, Implicit(throw=False))
    assert bool(jnp.isfinite(g.theta))
    h = equilibrium(cell, x, solver=solver)
    adj = rnnode.implicit_adjoint(cell, x, h, jnp.ones((1,)))
    assert bool(adj.result == RESULTS.diverged)
    gmres = Implicit(linear_solver=lx.GMRES(rtol=1e-12, atol=1e-12))
    assert float(grad(cell, gmres).theta) == pytest.approx(-0.5, abs=1e-10)


def test_argument_checks(getkey):
    model = equilibrium_elman(getkey())
    with pytest.raises(ValueError, match="shape"):
        equilibrium(model, jnp.zeros((4,)))
    with pytest.raises(ValueError, match="solver"):
        equilibrium(model, jnp.zeros((3,)), solver="anderson")
    with pytest.raises(ValueError, match="gradient"):
        equilibrium(model, jnp.zeros((3,)), gradient=Implicit)
    with pytest.raises(ValueError, match="h0"):
        equilibrium(model, jnp.zeros((3,)), h0=jnp.zeros(5))
    with pytest.raises(ValueError, match="damping"):
        FixedPointIteration(damping=0.0)
    with pytest.raises(ValueError, match="memory"):
        Anderson(memory=0)
    with pytest.raises(ValueError, match="linear_solver"):
        Implicit(linear_solver="gmres")
