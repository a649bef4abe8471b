"""Cheap exact Jacobian diagonals for quasi-DEER: the cells' decoupled steps.

quasi-DEER and quasi-ELK need only ``diag(∂s_t/∂s_{t-1})``. Read off a full ``jax.jacfwd`` it
costs D Jacobian-vector products per step (D the state size). In the built-in cells, units
talk to each other only through the recurrent matmuls (``h W_h``, and ``c W_c`` for full
peepholes); everything else is elementwise. A cell's *decoupled* step computes exactly the
same values, but its recurrent matmuls differentiate as if only each unit's weight on itself
were there,

    ∂(h W)[k·H + j] / ∂h[i] = W[j, k·H + j] if i = j, else 0,

so the Jacobian of the decoupled step with respect to the state has the true diagonal, and
no other entry within a state leaf. One JVP per state leaf, with a tangent of ones, then
reads the whole diagonal: 2 JVPs of elementwise work for an LSTM instead of 2H.

``CellFast.step_decoupled(params, state, xp) -> (state, y)`` is that step; a cell without one
gets the diagonal of a full ``jacfwd`` (:mod:`jlstm.newton.step`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jlstm.core.math import matmul


def recurrent_matmul(a: jax.Array, w: jax.Array, dtype: Any, *, blocks: int, decoupled: bool = False) -> jax.Array:
    """``a @ w`` for ``w`` of shape ``(H, blocks·H)``; with ``decoupled``, its JVP in ``a`` is diagonal.

    The value is always :func:`jlstm.core.math.matmul`'s. The decoupled JVP is
    ``tile(ȧ, blocks) * d`` with ``d[k·H + j] = w[j, k·H + j]``: no GEMM at all.
    """
    if not decoupled:
        return matmul(a, w, dtype)
    H = w.shape[0]
    d = jnp.diagonal(w.reshape(H, blocks, H), axis1=0, axis2=2).reshape(-1)    # [k, j] -> w[j, k·H + j]

    @jax.custom_jvp
    def product(a):
        return matmul(a, w, dtype)

    @product.defjvp
    def product_jvp(primals, tangents):
        (a,), (da,) = primals, tangents
        y = product(a)
        return y, jnp.tile(da, blocks).astype(y.dtype) * d.astype(y.dtype)

    return product(a)
