"""The irreducible work of one step of each online rule, written as plain JAX
array operations on an Elman network (`h' = tanh(W h + U x + b)`, a linear
readout, mse): the floor that `bench_online.py --floor` times each rule against.

Every floor does the forward step with the readout's gradient and `∂l/∂h`, then:

- **SnAp-1, RFLO, e-prop**: one read and one write of the trace (one number per
  parameter, `e ← a ⊙ e + φ'(z) ⊗ [h; x; 1]`) and the gradient's accumulation
  (`L ⊙ e`);
- **UORO**: its two extra matrix–vector products (`J h̃`, and `νᵀ ∂step/∂θ`, an
  outer product of the same cost), one read and one write of `θ̃`, the
  gradient's accumulation (`(∂l/∂h · h̃) θ̃`);
- **KF-RTRL**: the `n × n` by `n × n` product `J A` (`O(n³)`), the update of `u`
  and `A`, `∂l/∂h A` and the gradient `λ ⊗ u`;
- **RTRL** (and SnAp-2 on a dense network, which is RTRL): the product `J P` of
  the `n × n` Jacobian with the `n × m` influence matrix, the immediate term
  written on its block diagonal, and `∂l/∂h · P`;
- **SnAp-2** on a sparse network: the product on SnAp-2's compact layout
  (`(R, R, n)` by `(R, n, L)`, `R` kept units per row, `L` connections per row)
  and its gradient.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


def _forward(W, U, b, V, c, h, x, y):
    z = W @ h + U @ x + b
    h_new = jnp.tanh(z)
    d = 1 - h_new**2
    o = V @ h_new + c
    do = 2 * (o - y) / y.shape[0]
    loss = jnp.mean((o - y) ** 2)
    return h_new, d, V.T @ do, (jnp.outer(do, h_new), do), loss


def _params(model):
    dyn, ro = model.dynamics, model.readout
    W = dyn.W if dyn.mask is None else dyn.W * jnp.asarray(dyn.mask.array, dyn.W.dtype)
    return W, dyn.U, dyn.b, ro.weight, ro.bias


def floor_chunk(name: str, model, layout=None):
    """`(chunk, args)`: a function of `args` that runs the floor of the rule
    `name` over a scan of steps (`xs`, `ys` last in `args`), summing the gradient
    (as the timed rules do), and its arguments (trace included)."""
    W, U, b, V, c = _params(model)
    n, m = U.shape
    dt = W.dtype
    h0 = jnp.zeros((n,), dt)
    width = n + m + 1  # the columns of [W U b]
    key = jr.PRNGKey(0)

    if name in ("SnAp-1", "RFLO", "e-prop"):
        trace = jnp.zeros((n, width), dt)

        def extra(h, h_new, d, dh, x, trace, k):
            a = d * jnp.diagonal(W) if name == "SnAp-1" else jnp.zeros_like(d)
            v = jnp.concatenate([h, x, jnp.ones((1,), dt)])
            trace = a[:, None] * trace + d[:, None] * v[None, :]
            return trace, dh[:, None] * trace

    elif name == "UORO":
        trace = (jnp.zeros((n,), dt), jnp.zeros((n, width), dt))

        def extra(h, h_new, d, dh, x, trace, k):
            h_t, theta = trace
            Jh = d * (W @ h_t)  # mat-vec 1
            nu = jr.rademacher(k, (n,), dtype=dt)
            v = jnp.concatenate([h, x, jnp.ones((1,), dt)])
            dtheta = (nu * d)[:, None] * v[None, :]  # νᵀ ∂step/∂θ (mat-vec 2)
            rho = jnp.sqrt(jnp.linalg.norm(theta) / jnp.linalg.norm(Jh) + 1e-7)
            beta = jnp.sqrt(jnp.linalg.norm(dtheta) / jnp.linalg.norm(nu) + 1e-7)
            h_t = rho * Jh + beta * nu
            theta = theta / rho + dtheta / beta
            return (h_t, theta), jnp.dot(dh, h_t) * theta

    elif name == "KF-RTRL":
        trace = (jnp.zeros((width,), dt), jnp.zeros((n, n), dt))

        def extra(h, h_new, d, dh, x, trace, k):
            u, A = trace
            JA = (d[:, None] * W) @ A  # the n × n by n × n product
            c1, c2 = jr.rademacher(k, (2,), dtype=dt)
            v = jnp.concatenate([h, x, jnp.ones((1,), dt)])
            r1 = jnp.sqrt(jnp.linalg.norm(JA) / jnp.linalg.norm(u) + 1e-7)
            r2 = jnp.sqrt(jnp.linalg.norm(d) / jnp.linalg.norm(v) + 1e-7)
            u = c1 * r1 * u + c2 * r2 * v
            A = (c1 / r1) * JA + jnp.diag((c2 / r2) * d)
            return (u, A), (dh @ A)[:, None] * u[None, :]

    elif name in ("RTRL", "SnAp-2") and layout is None:
        trace = jnp.zeros((n, n, width), dt)
        rows = np.arange(n)

        def extra(h, h_new, d, dh, x, P, k):
            J = d[:, None] * W
            P = jnp.tensordot(J, P, axes=1)  # J P: (n, n) @ (n, m)
            v = jnp.concatenate([h, x, jnp.ones((1,), dt)])
            P = P.at[rows, rows].add(d[:, None] * v[None, :])  # the immediate term
            return P, jnp.tensordot(dh, P, axes=1)

    elif name == "SnAp-2":
        idx, L = layout  # (R, n) kept units per row, connections per row
        R = idx.shape[0]
        trace = jnp.zeros((n, R, L + m + 1), dt)  # batch-first, as SnAp keeps it
        cols = np.asarray(jnp.argsort(~jnp.asarray(model.dynamics.mask.array), axis=1))
        cols = cols[:, :L]

        def extra(h, h_new, d, dh, x, P, k):
            J = d[:, None] * W
            iT = idx.T
            Jg = J[iT[:, :, None], iT[:, None, :]]  # (n, R, R)
            P = jnp.einsum("qab,qbl->qal", Jg, P)
            v = jnp.concatenate(
                [h[cols], jnp.broadcast_to(jnp.append(x, 1), (n, m + 1))], 1
            )
            P = P.at[:, 0].add(d[:, None] * v)
            return P, jnp.einsum("qa,qal->ql", dh[iT], P)

    else:
        raise ValueError(f"no floor for {name}")

    def chunk(params, h, trace, key, xs, ys):
        W_, U_, b_, V_, c_ = params

        def body(carry, xy):
            h, trace, key = carry
            x, y = xy
            key, k = jr.split(key)
            h_new, d, dh, g_ro, loss = _forward(W_, U_, b_, V_, c_, h, x, y)
            trace, g = extra(h, h_new, d, dh, x, trace, k)
            total = loss + jnp.sum(g) + sum(jnp.sum(a) for a in g_ro)
            return (h_new, trace, key), total

        return jax.lax.scan(body, (h, trace, key), (xs, ys))

    return chunk, ((W, U, b, V, c), h0, trace, key)


def snap2_layout(model):
    """SnAp-2's compact layout on a sparse network, from the mask alone: for each
    row `j`, the unit `j` and the units that read unit `j` (`idx`, `(R, n)`,
    padded with `j`), and `L`, the most connections of a row; `None` on a dense
    network (the RTRL floor)."""
    mask = model.dynamics.mask
    if mask is None:
        return None
    mask = np.asarray(mask.array, dtype=bool)
    n = mask.shape[0]
    reach = [[j] + [i for i in np.flatnonzero(mask[:, j]) if i != j] for j in range(n)]
    R = max(len(r) for r in reach)
    idx = np.array([r + [r[0]] * (R - len(r)) for r in reach]).T
    return idx, int(mask.sum(axis=1).max())
