"""Flax NNX ``LSTMCell`` / ``OptimizedLSTMCell`` / ``GRUCell`` modules <-> jlstm cells.

The NNX cells (read from ``flax/nnx/nn/recurrent.py``) hold their weights in ``nnx.Linear``
sub-modules, row-vector convention as in jlstm:

* ``OptimizedLSTMCell``: ``dense_i`` (in, 4H) without a bias and ``dense_h`` (H, 4H) with one;
  gates i, f, g, o. So ``w_x = dense_i.kernel``, ``w_h = dense_h.kernel``, ``b = dense_h.bias``.
* ``LSTMCell``: one Linear per gate, as in Flax linen: ``ii, if_, ig, io`` (in, H) without
  biases and ``hi, hf, hg, ho`` (H, H) with them.
* ``GRUCell``: ``dense_i`` (in, 3H) with a bias and ``dense_h`` (H, 3H) without one; gates
  r, z, n with ``n = tanh(x W_in + b_in + r ⊙ h W_hn)``. That is PyTorch's GRU with
  ``b_hn = 0`` (flax#5594): it converts to jlstm exactly, and jlstm params go back only when
  their ``b_hn`` is zero.

The carry of the LSTM cells is ``(c, h)``: :func:`jlstm.interop.from_flax_carry` and
:func:`jlstm.interop.to_flax_carry` turn it into :class:`jlstm.LSTMState` and back.
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

_GATES = ("i", "f", "g", "o")
_INPUT = {"i": "ii", "f": "if_", "g": "ig", "o": "io"}       # NNX's LSTMCell: `if` is a keyword


def _params_of(cell: Any, kinds: tuple[str, ...], where: str) -> dict[str, Any]:
    """The NNX cell's params as a plain nested dict, after checking its type and activations."""
    name, nnx_cell = type(cell).__name__, type(cell).__module__.startswith("flax.nnx")
    if name not in kinds or not nnx_cell:
        other = {"LSTMCell": "from_nnx_lstm", "OptimizedLSTMCell": "from_nnx_lstm", "GRUCell": "from_nnx_gru"}
        hint = f"; use jlstm.interop.{other[name]} for it" if nnx_cell and name in other else ""
        raise TypeError(f"{where}: expected a flax.nnx {' or '.join(kinds)}, got {name}{hint}.")
    if cell.gate_fn is not jax.nn.sigmoid or cell.activation_fn is not jnp.tanh:
        gate, act = (getattr(f, "__name__", f) for f in (cell.gate_fn, cell.activation_fn))
        raise ValueError(f"{where}: this nnx.{name} uses gate_fn={gate} and activation_fn={act}; jlstm's cells "
                         f"use sigmoid and tanh, so the outputs would differ.")
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(cell, nnx.Param))


def _arr(d: dict[str, Any], module: str, leaf: str, where: str) -> np.ndarray:
    return to_numpy(d[module][leaf], f"{module}.{leaf}", where)


def from_nnx_lstm(cell: Any) -> tuple[Cell, LSTMParams]:
    """Convert a Flax NNX ``OptimizedLSTMCell`` or ``LSTMCell`` to a jlstm LSTM cell and its params.

    ::

        OptimizedLSTMCell:  w_x = dense_i.kernel   w_h = dense_h.kernel   b = dense_h.bias
        LSTMCell:           w_x = [ii | if_ | ig | io]   w_h = [hi | hf | hg | ho]   b = [h*.bias]

    Args:
      cell: an ``nnx.OptimizedLSTMCell`` or ``nnx.LSTMCell`` with the default sigmoid and tanh.

    Returns:
      ``(jlstm.lstm(H), LSTMParams)``; NNX's carry ``(c, h)`` converts with
      :func:`jlstm.interop.from_flax_carry`.

    Raises:
      TypeError: another module. ValueError: other activations.
    """
    where = "jlstm.interop.from_nnx_lstm"
    d = _params_of(cell, ("OptimizedLSTMCell", "LSTMCell"), where)
    if "dense_i" in d:
        w_x, w_h, b = _arr(d, "dense_i", "kernel", where), _arr(d, "dense_h", "kernel", where), _arr(
            d, "dense_h", "bias", where)
    else:
        w_x = np.concatenate([_arr(d, _INPUT[g], "kernel", where) for g in _GATES], axis=-1)
        w_h = np.concatenate([_arr(d, "h" + g, "kernel", where) for g in _GATES], axis=-1)
        b = np.concatenate([_arr(d, "h" + g, "bias", where) for g in _GATES], axis=-1)
    dt = param_dtype(w_x)
    H = w_h.shape[0]
    return lstm(H, param_dtype=dt), LSTMParams(jnp.asarray(w_x, dt), jnp.asarray(w_h, dt), jnp.asarray(b, dt))


def from_nnx_gru(cell: Any) -> tuple[Cell, GRUParams]:
    """Convert a Flax NNX ``GRUCell`` to a jlstm GRU cell and its params.

    ::

        w_x = dense_i.kernel   w_h = dense_h.kernel   b_x = dense_i.bias   b_h = 0

    Returns:
      ``(jlstm.gru(H), GRUParams)``; the carry ``h`` is :class:`jlstm.GRUState` ``(h,)``.

    Raises:
      TypeError: another module. ValueError: other activations.
    """
    where = "jlstm.interop.from_nnx_gru"
    d = _params_of(cell, ("GRUCell",), where)
    w_x, b_x, w_h = _arr(d, "dense_i", "kernel", where), _arr(d, "dense_i", "bias", where), _arr(
        d, "dense_h", "kernel", where)
    dt = param_dtype(w_x)
    params = GRUParams(jnp.asarray(w_x, dt), jnp.asarray(w_h, dt), jnp.asarray(b_x, dt),
                       jnp.zeros(b_x.shape, dt))
    return gru(w_h.shape[0], param_dtype=dt), params


def _filled(cls_name: str, input_size: int, hidden_size: int, dtype: Any, values: dict[str, Any]) -> Any:
    """A new ``nnx.<cls_name>(input_size, hidden_size)`` whose params are ``values`` (a pure dict)."""
    from flax import nnx

    cell = getattr(nnx, cls_name)(input_size, hidden_size, param_dtype=dtype, rngs=nnx.Rngs(0))
    state = nnx.state(cell, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(a, dtype), values))
    nnx.update(cell, state)
    return cell


def to_nnx_lstm(params: LSTMParams, *, optimized: bool = True) -> Any:
    """Convert jlstm :class:`LSTMParams` to a Flax NNX ``OptimizedLSTMCell`` (or ``LSTMCell``), the
    inverse of :func:`from_nnx_lstm`.

    Args:
      params: the params of ``jlstm.lstm(H)`` (no peepholes, no projection).
      optimized: build an ``nnx.OptimizedLSTMCell`` (``True``) or an ``nnx.LSTMCell``.

    Returns:
      The NNX module, holding these weights in their dtype.

    Raises:
      TypeError: not :class:`LSTMParams`. ValueError: peepholes, a projection, or inconsistent shapes.
    """
    w_x, w_h, b = plain_lstm_arrays(params, "jlstm.interop.to_nnx_lstm", "Flax NNX's LSTM cells")
    I, H = w_x.shape[0], w_h.shape[0]
    dt = param_dtype(w_x)
    if optimized:
        values = {"dense_i": {"kernel": w_x}, "dense_h": {"kernel": w_h, "bias": b}}
        return _filled("OptimizedLSTMCell", I, H, dt, values)
    blocks = {g: slice(k * H, (k + 1) * H) for k, g in enumerate(_GATES)}
    values = {**{_INPUT[g]: {"kernel": w_x[:, s]} for g, s in blocks.items()},
              **{"h" + g: {"kernel": w_h[:, s], "bias": b[s]} for g, s in blocks.items()}}
    return _filled("LSTMCell", I, H, dt, values)


def to_nnx_gru(params: GRUParams) -> Any:
    """Convert jlstm :class:`GRUParams` to a Flax NNX ``GRUCell`` (the inverse of :func:`from_nnx_gru`).

    ``dense_i.bias = b_x + [b_hr | b_hz | 0]``: the r and z gates only see the sum. NNX's GRU has
    no ``b_hn``, so the params' must be zero.

    Raises:
      TypeError: not :class:`GRUParams`. ValueError: a non-zero ``b_hn``, or inconsistent shapes.
    """
    where = "jlstm.interop.to_nnx_gru"
    w_x, w_h, b_x, b_h = gru_arrays(params, where)
    H = w_h.shape[0]
    if np.any(b_h[2 * H:] != 0):
        largest = float(np.abs(b_h[2 * H:]).max())
        raise ValueError(f"{where}: nnx.GRUCell has no b_hn (the bias inside the reset product, flax#5594), and "
                         f"these params' is non-zero (largest |b_hn| {largest:.3g}), so its outputs would differ. "
                         f"Use Flax linen's GRUCell (to_flax_gru), which has one.")
    bias = b_x + np.concatenate([b_h[:2 * H], np.zeros((H,), b_h.dtype)])
    values = {"dense_i": {"kernel": w_x, "bias": bias}, "dense_h": {"kernel": w_h}}
    return _filled("GRUCell", w_x.shape[0], H, param_dtype(w_x), values)
