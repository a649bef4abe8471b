"""PyTorch ``nn.LSTMCell`` / ``nn.GRUCell`` weights <-> jlstm cells (torch imported lazily).

The cell modules keep the layout of ``nn.LSTM`` / ``nn.GRU`` without the layer suffix: keys
``weight_ih`` (G·H, in), ``weight_hh`` (G·H, H), ``bias_ih`` and ``bias_hh`` (G·H) (no biases
with ``bias=False``), gates i, f, g, o and r, z, n as in jlstm. So ``w_x = weight_ih.T``,
``w_h = weight_hh.T``, and ``b = bias_ih + bias_hh`` for the LSTM, ``b_x = bias_ih`` and
``b_h = bias_hh`` for the GRU. The LSTM cell's state is ``(h, c)``, jlstm's order.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from jlstm.cells.gru import GRUParams, gru
from jlstm.cells.lstm import LSTMParams, lstm
from jlstm.core.types import Cell
from jlstm.interop._common import gru_arrays, param_dtype, plain_lstm_arrays, to_numpy

_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_MODULE = {"lstm": "nn.LSTMCell", "gru": "nn.GRUCell"}
_OTHER = {"LSTM": "from_torch_lstm", "GRU": "from_torch_gru", "LSTMCell": "from_torch_lstm_cell",
          "GRUCell": "from_torch_gru_cell"}
_LAYER_KEY = re.compile(r"^(weight|bias)_(ih|hh|hr)_l\d+")


def _cell_entries(obj: Any, kind: str, prefix: str, where: str) -> dict[str, np.ndarray]:
    """The cell's arrays by key, read from its state_dict (or the module), the keys checked."""
    if not isinstance(prefix, str):
        raise TypeError(f"{where}: prefix must be a str such as 'policy.core.', got {prefix!r}.")
    if not isinstance(obj, Mapping) and callable(getattr(obj, "state_dict", None)):
        import torch

        want = torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell
        if not isinstance(obj, want):
            other = _OTHER.get(type(obj).__name__)
            hint = f"; use jlstm.interop.{other} for it" if other else ""
            raise TypeError(f"{where}: expected a torch.{_MODULE[kind]} or its state_dict(), got a "
                            f"{type(obj).__name__} module{hint}.")
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(f"{where}: expected the state_dict() of a torch.{_MODULE[kind]} (weight_ih, weight_hh, "
                        f"bias_ih, bias_hh), got {type(obj).__name__}.")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name not in _KEYS:
            hint = f" (a key of an nn.{kind.upper()}: use from_torch_{kind})" if _LAYER_KEY.match(name) else ""
            raise ValueError(f"{where}: unexpected key {key!r}{hint}; a torch.{_MODULE[kind]} state_dict has "
                             f"{', '.join(_KEYS)}. Pass prefix='...' to read a cell out of a larger model's.")
        out[name] = to_numpy(value, f"state_dict[{key!r}]", where)
    missing = [k for k in _KEYS[:2] if k not in out] + (
        [k for k in _KEYS[2:] if k not in out] if any(k in out for k in _KEYS[2:]) else [])
    if missing:
        raise ValueError(f"{where}: the state_dict lacks {', '.join(prefix + k for k in missing)}"
                         + (f" (found {sorted(out)})" if out else " (found no cell weights"
                            + (f" under prefix {prefix!r})" if prefix else ")")) + ".")
    return out


def _checked(entries: dict[str, np.ndarray], blocks: int, kind: str, where: str) -> int:
    """The hidden size, after checking every array's shape against it."""
    w_hh = entries["weight_hh"]
    H = w_hh.shape[1] if w_hh.ndim == 2 else -1
    I = entries["weight_ih"].shape[-1]
    want = {"weight_ih": (blocks * H, I), "weight_hh": (blocks * H, H), "bias_ih": (blocks * H,),
            "bias_hh": (blocks * H,)}
    for key, a in entries.items():
        if a.shape != want[key]:
            raise ValueError(f"{where}: {key} has shape {a.shape}, expected {want[key]} for a "
                             f"torch.{_MODULE[kind]} with hidden_size {H} and input_size {I}.")
    return H


def from_torch_lstm_cell(state_dict: Any, *, prefix: str = "") -> tuple[Cell, LSTMParams]:
    """Convert a ``torch.nn.LSTMCell`` (its ``state_dict()``, or the module) to a jlstm LSTM cell.

    ::

        w_x = weight_ih.T   w_h = weight_hh.T   b = bias_ih + bias_hh (zeros with bias=False)

    Args:
      state_dict: ``cell.state_dict()`` or the ``nn.LSTMCell``; torch tensors or NumPy arrays.
      prefix: read the keys that start with it (``"policy.core."``) from a larger model's state dict.

    Returns:
      ``(jlstm.lstm(H), LSTMParams)``; torch's state ``(h, c)`` is :class:`jlstm.LSTMState` ``(h, c)``.

    Raises:
      TypeError: not a state dict or an ``nn.LSTMCell``. ValueError: unknown or missing keys, or
        shapes that disagree (a GRU cell's weights among them).
    """
    where = "jlstm.interop.from_torch_lstm_cell"
    e = _cell_entries(state_dict, "lstm", prefix, where)
    H = _checked(e, 4, "lstm", where)
    dt = param_dtype(e["weight_ih"])
    b = (e["bias_ih"].astype(np.float64) + e["bias_hh"].astype(np.float64) if "bias_ih" in e
         else np.zeros((4 * H,)))
    params = LSTMParams(jnp.asarray(e["weight_ih"].T, dt), jnp.asarray(e["weight_hh"].T, dt), jnp.asarray(b, dt))
    return lstm(H, param_dtype=dt), params


def from_torch_gru_cell(state_dict: Any, *, prefix: str = "") -> tuple[Cell, GRUParams]:
    """Convert a ``torch.nn.GRUCell`` (its ``state_dict()``, or the module) to a jlstm GRU cell.

    ``w_x = weight_ih.T``, ``w_h = weight_hh.T``, ``b_x = bias_ih``, ``b_h = bias_hh`` (``b_hn``
    inside the reset product in both). Arguments and errors as :func:`from_torch_lstm_cell`.

    Returns:
      ``(jlstm.gru(H), GRUParams)``; torch's state ``h`` is :class:`jlstm.GRUState` ``(h,)``.
    """
    where = "jlstm.interop.from_torch_gru_cell"
    e = _cell_entries(state_dict, "gru", prefix, where)
    H = _checked(e, 3, "gru", where)
    dt = param_dtype(e["weight_ih"])
    zeros = np.zeros((3 * H,))
    params = GRUParams(jnp.asarray(e["weight_ih"].T, dt), jnp.asarray(e["weight_hh"].T, dt),
                       jnp.asarray(e.get("bias_ih", zeros), dt), jnp.asarray(e.get("bias_hh", zeros), dt))
    return gru(H, param_dtype=dt), params


def _out(arrays: dict[str, np.ndarray], as_numpy: bool) -> dict[str, Any]:
    arrays = {k: np.array(v, copy=True, order="C") for k, v in arrays.items()}
    if as_numpy:
        return arrays
    from jlstm.interop._torch import _torch_tensor

    return {k: _torch_tensor(v) for k, v in arrays.items()}


def to_torch_lstm_cell(params: LSTMParams, *, as_numpy: bool = False) -> dict[str, Any]:
    """Convert jlstm :class:`LSTMParams` to a ``torch.nn.LSTMCell`` state dict (the inverse of
    :func:`from_torch_lstm_cell`): ``bias_ih = b`` and ``bias_hh = 0``, whose sum torch uses.

    Args:
      params: the params of ``jlstm.lstm(H)`` (no peepholes, no projection: ``nn.LSTMCell`` has
        neither).
      as_numpy: NumPy arrays instead of torch tensors.

    Returns:
      ``{"weight_ih", "weight_hh", "bias_ih", "bias_hh"}`` for
      ``nn.LSTMCell(input_size, H).load_state_dict``.
    """
    w_x, w_h, b = plain_lstm_arrays(params, "jlstm.interop.to_torch_lstm_cell", "torch.nn.LSTMCell")
    return _out({"weight_ih": w_x.T, "weight_hh": w_h.T, "bias_ih": b, "bias_hh": np.zeros_like(b)}, as_numpy)


def to_torch_gru_cell(params: GRUParams, *, as_numpy: bool = False) -> dict[str, Any]:
    """Convert jlstm :class:`GRUParams` to a ``torch.nn.GRUCell`` state dict (``bias_ih = b_x``,
    ``bias_hh = b_h``); arguments as :func:`to_torch_lstm_cell`."""
    w_x, w_h, b_x, b_h = gru_arrays(params, "jlstm.interop.to_torch_gru_cell")
    return _out({"weight_ih": w_x.T, "weight_hh": w_h.T, "bias_ih": b_x, "bias_hh": b_h}, as_numpy)
