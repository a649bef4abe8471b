"""The GRU cell: PyTorch's form (gates r, z, n; ``b_hn`` inside the reset product), or the reset
gate before the recurrent matrix (``reset_after=False``).

Row-vector convention; blocks in the order r, z, n::

    r_t = σ(x_t W_xr + b_xr + h_{t-1} W_hr + b_hr)
    z_t = σ(x_t W_xz + b_xz + h_{t-1} W_hz + b_hz)
    n_t = tanh(x_t W_xn + b_xn + r_t ⊙ (h_{t-1} W_hn + b_hn))
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

That is PyTorch's ``nn.GRU``, cuDNN's, Keras' ``reset_after=True``, Flax's and Equinox's. With
``reset_after=False`` (Cho et al. 2014; Keras' ``reset_after=False``, TF1's ``GRUCell``, Haiku's
``hk.GRU``) the reset gate scales ``h_{t-1}`` before its matrix, and one bias ``b`` serves all::

    r_t = σ(x_t W_xr + h_{t-1} W_hr + b_r)        z_t = σ(x_t W_xz + h_{t-1} W_hz + b_z)
    n_t = tanh(x_t W_xn + (r_t ⊙ h_{t-1}) W_hn + b_n)
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jlstm.cells.decouple import recurrent_matmul
from jlstm.cells.options import CellOptions, Unpack
from jlstm.cells.simple_cell import SimpleCell
from jlstm.cells.state_box import hull_box
from jlstm.core.math import masked, matmul, output
from jlstm.core.types import Cell
from jlstm.kernels.fused_gru import make_fused_gru


class GRUParams(NamedTuple):
    """GRU parameters (public layout): w_x (input, 3H), w_h (H, 3H), b_x (3H), b_h (3H); r, z, n."""

    w_x: jax.Array
    w_h: jax.Array
    b_x: jax.Array
    b_h: jax.Array


class ResetBeforeGRUParams(NamedTuple):
    """Parameters of ``jlstm.gru(H, reset_after=False)``: w_x (input, 3H), w_h (H, 3H), b (3H); r, z, n.

    A type of its own, so that converters to PyTorch-form GRUs refuse these params instead of
    running them through the other equation.
    """

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array


class GRUState(NamedTuple):
    """GRU state: ``h`` of shape [*batch, H]."""

    h: jax.Array


def gru(hidden_size: int, *, reset_after: bool = True, **options: Unpack[CellOptions]) -> Cell:
    """Build a GRU cell (PyTorch's ``nn.GRU`` equations, see the module docstring).

    Args:
      hidden_size: number of units H.
      reset_after: ``True`` (PyTorch, cuDNN, Keras' default): the reset gate multiplies
        ``h W_hn + b_hn``, and the params are :class:`GRUParams`. ``False``: it multiplies
        ``h`` before ``W_hn`` (Keras' ``reset_after=False``, TF1, Haiku); the params are
        :class:`ResetBeforeGRUParams`, with one bias, and the cell runs without the fused kernel.
      **options: ``kernel_init`` (of the whole ``w_x``), ``recurrent_init`` (per gate block),
        ``bias_init`` (of ``b_x`` and ``b_h``), ``dtype`` and ``param_dtype``: see
        :class:`jlstm.CellOptions`.

    Returns:
      A :class:`jlstm.Cell` whose ``step(params, state, x)`` returns ``(GRUState, h_t)``.

    Example:
      >>> cell = jlstm.gru(16)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> state, y = cell.step(params, cell.initial_state(params), jnp.ones(4))
    """
    if not isinstance(reset_after, bool):
        raise TypeError(f"gru: reset_after must be True or False, got {reset_after!r}.")
    if not reset_after:
        return _reset_before(hidden_size, options)
    parts = SimpleCell.build("gru", hidden_size, options, GRUParams, GRUState, blocks=3)
    dtype = parts.dtype

    def step_projected(params: GRUParams, state: GRUState, xp: jax.Array,
                       recurrent_mask: jax.Array | None = None, *, decoupled: bool = False):
        h = state.h
        h_in = masked(h, recurrent_mask)
        hp = recurrent_matmul(h_in, params.w_h, dtype, blocks=3, decoupled=decoupled)
        hp = hp + params.b_h.astype(xp.dtype)
        xr, xz, xn = jnp.split(xp, 3, axis=-1)
        hr, hz, hn = jnp.split(hp, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h_new = (1.0 - z) * n + z * h.astype(n.dtype)
        return GRUState(h=h_new.astype(h.dtype)), output(h_new, dtype)

    # h_t mixes tanh(.) with h_{t-1}: it stays within [-1, 1] widened to h_0. The fused kernel
    # (jlstm.kernels.fused_gru) runs the same equations where jlstm.scan takes the sequential loop.
    return parts.cell(step_projected, functools.partial(step_projected, decoupled=True), hull_box(h=1.0),
                      sequence=make_fused_gru(dtype))


def _reset_before(hidden_size: int, options: Mapping[str, Any]) -> Cell:
    """``gru(H, reset_after=False)``: ``n_t = tanh(x_t W_xn + (r_t ⊙ h_{t-1}) W_hn + b_n)``."""
    parts = SimpleCell.build("gru", hidden_size, options, ResetBeforeGRUParams, GRUState, blocks=3,
                             variant="reset_after=False")
    dtype, H = parts.dtype, parts.hidden_size

    def step_projected(params: ResetBeforeGRUParams, state: GRUState, xp: jax.Array,
                       recurrent_mask: jax.Array | None = None):
        h = state.h
        h_in = masked(h, recurrent_mask)
        xr, xz, xn = jnp.split(xp, 3, axis=-1)                     # xp = x W_x + b
        hr, hz = jnp.split(matmul(h_in, params.w_h[:, :2 * H], dtype).astype(xp.dtype), 2, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + matmul(r * h_in.astype(r.dtype), params.w_h[:, 2 * H:], dtype).astype(xp.dtype))
        h_new = (1.0 - z) * n + z * h.astype(n.dtype)
        return GRUState(h=h_new.astype(h.dtype)), output(h_new, dtype)

    # No decoupled step: r ⊙ h feeds a second matmul, so units interact through the product of two
    # matrices and a step that keeps only each unit's own weights would not give the exact diagonal.
    return parts.cell(step_projected, None, hull_box(h=1.0), reset_after=False)
