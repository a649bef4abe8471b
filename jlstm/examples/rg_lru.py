"""Griffin's RG-LRU (De et al. 2024, arXiv 2402.19427), written as a user writes a jlstm cell.

Only the public API: three functions, plus ``jlstm.CellFast(project=, step_projected=, linear=)``
declaring that the recurrence is diagonal-linear, so that the whole sequence can be evaluated by
:func:`jlstm.linear_recurrence` (:func:`jlstm.core.linear.linear_form`) instead of a loop or
Newton's method. With ``c = 8`` and block-diagonal gates (one ``d × d`` block per head)::

    r_t = σ(x_t W_a + b_a),   i_t = σ(x_t W_x + b_x)
    log a_t = −c · r_t · softplus(Λ)
    h_t = a_t ⊙ h_{t-1} + √(1 − a_t²) ⊙ (i_t ⊙ x_t)

The parameters are laid out as in the ``recurrentgemma`` package's ``RGLRU`` (``a_param`` Λ,
``input_gate`` and ``a_gate`` with ``w [heads, d, d]`` and ``b [heads, d]``), real-valued. One
difference: recurrentgemma also resets at ``segment_pos == 0`` and then drops the factor
``√(1 − a_t²)`` at that step; a jlstm reset only restarts the state from zeros, the step is unchanged.

Example:
  >>> from jlstm.examples.rg_lru import rg_lru
  >>> from jlstm.core.linear import linear_form
  >>> cell = rg_lru(8, num_heads=2)
  >>> params = cell.init(jax.random.key(0), 8)
  >>> xs = jax.random.normal(jax.random.key(1), (50, 3, 8))
  >>> h, ys = jlstm.scan(cell, params, xs)                       # a loop over the step
  >>> h2, ys2 = linear_form(cell)(params, xs, cell.initial_state(params, 3), None)
  >>> bool(jnp.allclose(ys, ys2, atol=1e-5)), ys.shape
  (True, (50, 3, 8))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jlstm

__all__ = ["RGLRUParams", "rg_lru"]


class RGLRUParams(NamedTuple):
    """``a_param`` Λ [W]; the gates' blocks ``w_x``, ``w_a`` [heads, d, d], biases ``b_x``, ``b_a`` [heads, d]."""

    a_param: jax.Array
    w_x: jax.Array
    b_x: jax.Array
    w_a: jax.Array
    b_a: jax.Array


def rg_lru(width: int, num_heads: int = 1, c: float = 8.0, min_rad: float = 0.9,
           max_rad: float = 0.999) -> jlstm.Cell:
    """An RG-LRU cell of ``width`` units; its input has ``width`` features too (Griffin projects to it).

    ``a_t`` at ``r_t = 1`` starts uniform in ``[min_rad², max_rad²]``; gate weights are normal with
    variance ``1/d``, biases zero. The state is ``h`` ``[*batch, width]`` and ``y_t = h_t``.
    """
    if width % num_heads:
        raise ValueError(f"rg_lru: width={width} is not divisible by num_heads={num_heads}.")
    d = width // num_heads

    def init(key, input_size):
        if input_size != width:
            raise ValueError(f"rg_lru({width}): the input size must equal the width, got {input_size}.")
        ku, kx, ka = jax.random.split(key, 3)
        u = jax.random.uniform(ku, (width,), minval=min_rad ** 2, maxval=max_rad ** 2)
        a_param = jnp.log(jnp.expm1(-jnp.log(u) / c))  # softplus(Λ) = −log(u)/c: a = u at r = 1
        w_x, w_a = (jax.random.normal(k, (num_heads, d, d)) / np.sqrt(d) for k in (kx, ka))
        zeros = jnp.zeros((num_heads, d))
        return RGLRUParams(a_param=a_param, w_x=w_x, b_x=zeros, w_a=w_a, b_a=zeros)

    def initial_state(params, batch_shape=()):
        return jnp.zeros(jlstm.batch_tuple(batch_shape) + (width,), params.a_param.dtype)

    def block(x, w, b):  # the block-diagonal gate: one d × d matrix per head
        xh = x.reshape(x.shape[:-1] + (num_heads, d))
        return (jnp.einsum("...hi,hij->...hj", xh, w) + b).reshape(x.shape)

    def project(params, xs):  # everything that reads x alone: [*lead, 3, width]
        return jnp.stack([xs, block(xs, params.w_x, params.b_x), block(xs, params.w_a, params.b_a)], axis=-2)

    def linear(params, xp):
        x, gate_x, gate_a = xp[..., 0, :], xp[..., 1, :], xp[..., 2, :]
        log_a = -c * jax.nn.sigmoid(gate_a) * jax.nn.softplus(params.a_param)
        a = jnp.exp(log_a)
        return a, jnp.sqrt(-jnp.expm1(2 * log_a)) * (jax.nn.sigmoid(gate_x) * x)

    def step_projected(params, h, xp, recurrent_mask=None):
        if recurrent_mask is not None:
            raise ValueError("rg_lru: no recurrent matmul to drop units from.")
        a, b = linear(params, xp)
        h = a * h + b
        return h, h

    def step(params, h, x):
        return step_projected(params, h, project(params, x))

    fast = jlstm.CellFast(project=project, step_projected=step_projected, linear=linear)
    return jlstm.Cell(init=init, initial_state=initial_state, step=step, output_size=width,
                      name=f"rg_lru({width}, num_heads={num_heads})", fast=fast)
