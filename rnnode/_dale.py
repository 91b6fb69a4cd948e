"""Dale's law: each unit is excitatory or inhibitory, and all its outgoing
weights keep its sign, by parameterisation: the dynamics use
`W = |W̃| · diag(s)` (times the connection mask), with `W̃` the stored,
unconstrained parameter and `s` the units' fixed signs. No clipping, so any
optimiser step leaves the signs where they are (Song, Yang & Wang 2016)."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


class Dale:
    """The signs of a network's units: the first `excitatory` of `n` units are
    excitatory (`s = +1`), the others inhibitory (`s = -1`).

    Held as a static field of its module (like `Mask`): hashed and compared by
    `(n, excitatory)`.
    """

    __slots__ = ("n", "excitatory", "signs")

    def __init__(self, n: int, excitatory: int):
        if not 0 < excitatory <= n:
            raise ValueError(f"`excitatory` units must be in 1..{n}, got {excitatory}")
        self.n = int(n)
        self.excitatory = int(excitatory)
        s = np.where(np.arange(n) < excitatory, 1.0, -1.0)
        s.setflags(write=False)
        self.signs = s

    @classmethod
    def from_fraction(cls, n: int, fraction) -> "Dale":
        """The split of `n` units with a `fraction` in (0, 1] excitatory
        (`max(1, round(fraction n))` of them)."""
        ok = isinstance(fraction, (int, float, np.integer, np.floating))
        if isinstance(fraction, bool) or not ok or not 0 < fraction <= 1:
            raise ValueError(
                f"`excitatory` must be the fraction of excitatory units, in (0, 1] "
                f"(0.8 is usual), got {fraction!r}"
            )
        return cls(n, max(1, int(round(float(fraction) * n))))

    @property
    def inhibitory(self) -> int:
        return self.n - self.excitatory

    def __eq__(self, other):
        return isinstance(other, Dale) and (self.n, self.excitatory) == (
            other.n,
            other.excitatory,
        )

    def __hash__(self):
        return hash(("Dale", self.n, self.excitatory))

    def __repr__(self):
        return f"Dale(n={self.n}, excitatory={self.excitatory})"


def signed(W: Float[Array, "n n"], dale: Dale | None) -> Float[Array, "n n"]:
    """`|W̃| · diag(s)`: column `j` (unit `j`'s outgoing weights) has sign `s_j`;
    `W` itself without Dale's law."""
    if dale is None:
        return W
    return jnp.abs(W) * jnp.asarray(dale.signs, W.dtype)[None, :]


def chain(W: Float[Array, "n n"], dale: Dale | None, g: Array) -> Array:
    """The gradient with respect to the stored `W̃` from the gradient `g` with
    respect to the weights the dynamics use, `∂(|W̃_ij| s_j)/∂W̃_ij =
    sign(W̃_ij) s_j` (with `sign(0) = +1`, as `jax.grad(jnp.abs)(0.)`)."""
    if dale is None:
        return g
    sign = jnp.where(W >= 0, 1.0, -1.0).astype(g.dtype)
    return g * sign * jnp.asarray(dale.signs, g.dtype)[None, :]


def balanced_init(
    key: PRNGKeyArray, dale: Dale, mask: np.ndarray | None, radius: float
) -> Float[Array, "n n"]:
    """Song, Yang & Wang's (2016) initial magnitudes `W̃ ≥ 0`: gamma-distributed
    (shape 2), the inhibitory columns scaled by `n_E / n_I` so that every unit's
    expected excitatory and inhibitory inputs cancel, zero off `mask`, and the
    whole matrix `|W̃| diag(s)` scaled to spectral radius `radius`.

    The spectral radius is computed in NumPy (in JAX, on the CPU backend, when
    the module is built under a transformation).
    """
    n = dale.n
    W = jr.gamma(key, 2.0, (n, n)) / 2.0
    if dale.inhibitory:
        scale = np.where(dale.signs > 0, 1.0, dale.excitatory / dale.inhibitory)
        W = W * jnp.asarray(scale)[None, :]
    if mask is not None:
        W = jnp.where(mask, W, 0.0)
    signs = jnp.asarray(dale.signs, W.dtype)[None, :]
    try:
        rho = float(np.max(np.abs(np.linalg.eigvals(np.asarray(W * signs)))))
    except jax.errors.TracerArrayConversionError:
        # built under a transformation (e.g. `eqx.filter_eval_shape`): the same
        # in JAX (its eigenvalues run on the CPU backend)
        rho = jnp.max(jnp.abs(jnp.linalg.eigvals(W * signs)))
        return W * jnp.where(rho > 0, radius / rho, 1.0).astype(W.dtype)
    return W * (radius / rho) if rho > 0 else W
