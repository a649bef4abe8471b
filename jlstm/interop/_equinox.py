"""Equinox ``eqx.nn.LSTMCell`` / ``eqx.nn.GRUCell`` <-> jlstm cells.

Equinox stores PyTorch's layout with column vectors (read from ``equinox/nn/_rnn.py``):

* ``LSTMCell``: ``weight_ih`` (4H, in), ``weight_hh`` (4H, H), one ``bias`` (4H) or ``None``
  (``use_bias=False``); gates i, f, g, o as in jlstm, so ``w_x = weight_ih.T``,
  ``w_h = weight_hh.T``, ``b = bias``. The carry is ``(h, c)``, jlstm's order.
* ``GRUCell``: ``weight_ih`` (3H, in), ``weight_hh`` (3H, H), ``bias`` (3H) on the input side and
  ``bias_n`` (H) inside the reset product: PyTorch's equations with gates r, z, n, so
  ``b_x = bias`` and ``b_h = [0, 0, bias_n]``. Going back, the r and z blocks of ``b_h`` join the
  input bias (only their sum enters the gates).

Reading a cell needs no Equinox import (its fields are read by name); writing one builds an
``eqx.nn.LSTMCell`` / ``eqx.nn.GRUCell`` and so imports Equinox.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlstm.cells.gru import GRUParams, gru
from jlstm.cells.lstm import LSTMParams, lstm
from jlstm.core.types import Cell
from jlstm.interop._common import gru_arrays, param_dtype, plain_lstm_arrays, to_numpy


def _read_cell(cell: Any, kind: str, blocks: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``weight_ih``, ``weight_hh`` and ``bias`` of an Equinox cell, their shapes checked."""
    other = {"LSTMCell": "GRUCell", "GRUCell": "LSTMCell"}[kind]
    name = type(cell).__name__
    if name == other:
        fix = "from_equinox_gru" if other == "GRUCell" else "from_equinox_lstm"
        raise TypeError(f"{where}: got an eqx.nn.{other}; use jlstm.interop.{fix} for it.")
    if not all(hasattr(cell, f) for f in ("weight_ih", "weight_hh", "bias")):
        raise TypeError(f"{where}: expected an eqx.nn.{kind} (with weight_ih, weight_hh and bias), got {name}.")
    w_ih = to_numpy(cell.weight_ih, "weight_ih", where)
    w_hh = to_numpy(cell.weight_hh, "weight_hh", where)
    bias = None if cell.bias is None else to_numpy(cell.bias, "bias", where)
    H = w_hh.shape[-1] if w_hh.ndim == 2 else -1
    want_hh = (blocks * H, H)
    if w_hh.ndim != 2 or w_hh.shape != want_hh or w_ih.ndim != 2 or w_ih.shape[0] != blocks * H:
        raise ValueError(f"{where}: weight_ih {w_ih.shape} and weight_hh {w_hh.shape} are not the weights of an "
                         f"eqx.nn.{kind}: expected ({blocks}H, input_size) and ({blocks}H, H).")
    if bias is not None and bias.shape != (blocks * H,):
        raise ValueError(f"{where}: bias has shape {bias.shape}, expected ({blocks * H},) for hidden size {H}.")
    return w_ih, w_hh, bias


def from_equinox_lstm(cell: Any) -> tuple[Cell, LSTMParams]:
    """Convert an Equinox ``eqx.nn.LSTMCell`` to a jlstm LSTM cell and its params.

    ::

        w_x = weight_ih.T   w_h = weight_hh.T   b = bias (zeros with use_bias=False)

    Equinox's cell is unbatched and steps one input; the jlstm cell runs whole batched sequences
    with :func:`jlstm.scan`. Its carry ``(h, c)`` is :class:`jlstm.LSTMState` ``(h, c)``.

    Args:
      cell: an ``eqx.nn.LSTMCell``.

    Returns:
      ``(jlstm.lstm(H), LSTMParams)``, the params in the cell's dtype.

    Raises:
      TypeError: ``cell`` is not an Equinox LSTM cell (an ``eqx.nn.GRUCell`` names the function
        to use instead).
      ValueError: weights whose shapes disagree.
    """
    where = "jlstm.interop.from_equinox_lstm"
    w_ih, w_hh, bias = _read_cell(cell, "LSTMCell", 4, where)
    H = w_hh.shape[1]
    dt = param_dtype(w_ih)
    b = np.zeros((4 * H,), w_ih.dtype) if bias is None else bias
    params = LSTMParams(w_x=jnp.asarray(w_ih.T, dt), w_h=jnp.asarray(w_hh.T, dt), b=jnp.asarray(b, dt))
    return lstm(H, param_dtype=dt), params


def from_equinox_gru(cell: Any) -> tuple[Cell, GRUParams]:
    """Convert an Equinox ``eqx.nn.GRUCell`` to a jlstm GRU cell and its params.

    ::

        w_x = weight_ih.T   w_h = weight_hh.T   b_x = bias   b_h = [0 | 0 | bias_n]

    Args:
      cell: an ``eqx.nn.GRUCell``.

    Returns:
      ``(jlstm.gru(H), GRUParams)``; Equinox's carry ``h`` is :class:`jlstm.GRUState` ``(h,)``.

    Raises:
      TypeError: ``cell`` is not an Equinox GRU cell.
      ValueError: weights whose shapes disagree.
    """
    where = "jlstm.interop.from_equinox_gru"
    w_ih, w_hh, bias = _read_cell(cell, "GRUCell", 3, where)
    H = w_hh.shape[1]
    dt = param_dtype(w_ih)
    zeros = np.zeros((H,), w_ih.dtype)
    bias_n = zeros if getattr(cell, "bias_n", None) is None else to_numpy(cell.bias_n, "bias_n", where)
    if bias_n.shape != (H,):
        raise ValueError(f"{where}: bias_n has shape {bias_n.shape}, expected ({H},) for hidden size {H}.")
    params = GRUParams(
        w_x=jnp.asarray(w_ih.T, dt),
        w_h=jnp.asarray(w_hh.T, dt),
        b_x=jnp.asarray(np.zeros((3 * H,), w_ih.dtype) if bias is None else bias, dt),
        b_h=jnp.asarray(np.concatenate([zeros, zeros, bias_n]), dt),
    )
    return gru(H, param_dtype=dt), params


def _build(kind: str, input_size: int, hidden_size: int, dtype: Any) -> Any:
    import equinox as eqx

    cls = getattr(eqx.nn, kind)
    return cls(input_size, hidden_size, use_bias=True, dtype=dtype, key=jax.random.key(0))


def to_equinox_lstm(params: LSTMParams) -> Any:
    """Convert jlstm :class:`LSTMParams` to an Equinox ``eqx.nn.LSTMCell`` (the inverse of
    :func:`from_equinox_lstm`).

    Args:
      params: the params of ``jlstm.lstm(H)`` (no peepholes, no projection).

    Returns:
      An ``eqx.nn.LSTMCell(input_size, H, use_bias=True)`` holding these weights, in their dtype.

    Raises:
      TypeError: not :class:`LSTMParams`.
      ValueError: peepholes, a projection, or inconsistent shapes.
    """
    import equinox as eqx

    w_x, w_h, b = plain_lstm_arrays(params, "jlstm.interop.to_equinox_lstm", "eqx.nn.LSTMCell")
    dt = param_dtype(w_x)
    cell = _build("LSTMCell", w_x.shape[0], w_h.shape[0], dt)
    new = (jnp.asarray(w_x.T, dt), jnp.asarray(w_h.T, dt), jnp.asarray(b, dt))
    return eqx.tree_at(lambda m: (m.weight_ih, m.weight_hh, m.bias), cell, new)


def to_equinox_gru(params: GRUParams) -> Any:
    """Convert jlstm :class:`GRUParams` to an Equinox ``eqx.nn.GRUCell`` (the inverse of
    :func:`from_equinox_gru`).

    ``bias = b_x + [b_hr | b_hz | 0]`` and ``bias_n = b_hn``: Equinox has no recurrent biases for
    r and z, whose gates only see the sum.

    Args:
      params: the params of ``jlstm.gru(H)``.

    Returns:
      An ``eqx.nn.GRUCell(input_size, H, use_bias=True)`` holding these weights.

    Raises:
      TypeError: not :class:`GRUParams`.
      ValueError: inconsistent shapes.
    """
    import equinox as eqx

    w_x, w_h, b_x, b_h = gru_arrays(params, "jlstm.interop.to_equinox_gru")
    H = w_h.shape[0]
    bias = b_x + np.concatenate([b_h[:2 * H], np.zeros((H,), b_h.dtype)])
    dt = param_dtype(w_x)
    cell = _build("GRUCell", w_x.shape[0], H, dt)
    new = tuple(jnp.asarray(a, dt) for a in (w_x.T, w_h.T, bias, b_h[2 * H:]))
    return eqx.tree_at(lambda m: (m.weight_ih, m.weight_hh, m.bias, m.bias_n), cell, new)
