"""Haiku ``hk.LSTM`` params <-> jlstm LSTM cells.

``hk.LSTM`` (read from ``haiku/_src/recurrent.py``) runs one ``hk.Linear`` over
``concat[x, h]`` and splits it into gates in the order **i, g, f, o**, adding 1 to the forget
gate's pre-activation at run time::

    [i | g | f | o] = concat[x, h] w + b        f = σ(f + 1)

Its params are ``{"<name>/linear": {"w": (in + H, 4H), "b": (4H,)}}``, where ``<name>`` is the
LSTM's module path (``"lstm"`` by default, ``"lstm_1"`` for a second one, ``"model/~/lstm"``
inside a module). So ``w_x`` is the first ``in`` rows of ``w`` and ``w_h`` the last ``H``, both
with their column blocks reordered to jlstm's i, f, g, o, and the run-time 1 joins the forget
bias. The state ``LSTMState(hidden, cell)`` is :class:`jlstm.LSTMState` ``(h, c)``.

``hk.GRU`` applies the reset gate before its recurrent matrix, ``a = tanh(x W_ia + (r ⊙ h) W_ha + b_a)``,
with one bias and the gate blocks z, r, a: ``jlstm.gru(H, reset_after=False)``. Its update
``(1 - z) ⊙ h + z ⊙ a`` gives ``z`` to the candidate where jlstm gives it to ``h``; as
``1 - σ(u) = σ(-u)``, the converters negate the z block's weights and bias. Its params are
``{"<name>": {"w_i": (in, 3H), "w_h": (H, 3H), "b": (3H,)}}`` (``"gru"`` by default).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from jlstm.cells.gru import ResetBeforeGRUParams, gru
from jlstm.cells.lstm import LSTMParams, lstm
from jlstm.core.types import Cell
from jlstm.interop._common import (
    param_dtype,
    pick_one,
    plain_lstm_arrays,
    reorder_blocks,
    reset_before_gru_arrays,
    to_numpy,
)

_TO_JLSTM = (0, 2, 1, 3)          # Haiku's blocks i, g, f, o -> jlstm's i, f, g, o (the swap is its own inverse)
_FORGET = 1.0                     # hk.LSTM adds 1 to the forget gate's pre-activation
_GRU_ORDER = (1, 0, 2)            # hk.GRU's blocks z, r, a -> jlstm's r, z, n (its own inverse)
_GRU_FIELDS = {"w_i", "w_h", "b"}


def _linear_of(params: Any, module: str | None, where: str) -> tuple[str, Mapping[str, Any]]:
    """The ``{"w", "b"}`` dict of the LSTM's linear, and its module name."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{where}: expected Haiku params (a dict of module name -> {{param: array}}), "
                        f"got {type(params).__name__}.")
    if set(params) == {"w", "b"}:                       # the linear's own dict
        return "<linear>", params
    if module is not None:
        found = [n for n in (module, f"{module}/linear")
                 if isinstance(params.get(n), Mapping) and set(params[n]) == {"w", "b"}]
        if not found:
            raise ValueError(f"{where}: no LSTM linear at module={module!r}; the params have the modules "
                             f"{sorted(params)}. Pass the LSTM's name (e.g. 'lstm') or its linear's "
                             f"('lstm/linear').")
        return found[-1], params[found[-1]]
    found = [n for n, v in params.items() if "/" in n and n.rsplit("/", 1)[1] == "linear"
             and isinstance(v, Mapping) and set(v) == {"w", "b"} and _lstm_shaped(v)]
    named = [n for n in found if "lstm" in n.rsplit("/", 2)[-2].lower()]    # "lstm/linear", not "mlp/~/linear"
    found = named if len(found) > 1 and len(named) == 1 else found
    if len(found) == 1:
        return found[0], params[found[0]]
    grus = [n for n, v in params.items() if isinstance(v, Mapping) and set(v) == _GRU_FIELDS]
    if not found and grus:
        raise ValueError(f"{where}: {grus[0]!r} holds the params of an hk.GRU; convert it with "
                         f"jlstm.interop.from_haiku_gru.")
    if not found:
        raise ValueError(f"{where}: found no hk.LSTM in the params (an entry '<name>/linear' with 'w' of "
                         f"shape (in + H, 4H) and 'b' of shape (4H,)); the modules are {sorted(params)}.")
    raise ValueError(f"{where}: the params hold several LSTMs {sorted(found)}; pick one with module=, "
                     f"e.g. module={found[0].rsplit('/', 1)[0]!r}.")


def _lstm_shaped(linear: Mapping[str, Any]) -> bool:
    w, b = linear["w"], linear["b"]
    shape_w, shape_b = tuple(getattr(w, "shape", ())), tuple(getattr(b, "shape", ()))
    return (len(shape_w) == 2 and len(shape_b) == 1 and shape_w[1] == shape_b[0] and shape_b[0] % 4 == 0
            and shape_w[0] > shape_b[0] // 4)


def from_haiku_lstm(params: Any, *, module: str | None = None) -> tuple[Cell, LSTMParams]:
    """Convert the params of a Haiku ``hk.LSTM`` to a jlstm LSTM cell and its params.

    ::

        w_x = w[:in] (blocks i, g, f, o -> i, f, g, o)   w_h = w[in:] (the same)   b_f = b_f + 1

    Args:
      params: the params of a transformed function that uses ``hk.LSTM`` (``transformed.init(...)``),
        or the ``{"w", "b"}`` dict of its linear alone.
      module: which LSTM, where the params hold several: its module name (``"lstm_1"``) or its
        linear's (``"lstm_1/linear"``). Without it, the one entry named ``"<name>/linear"`` whose
        shapes are an LSTM's is taken.

    Returns:
      ``(jlstm.lstm(H), LSTMParams)``. Haiku's state ``LSTMState(hidden, cell)`` becomes
      ``jlstm.LSTMState(h=state.hidden, c=state.cell)``.

    Raises:
      TypeError: ``params`` is not a dict.
      ValueError: no LSTM in the params, several without ``module=``, an ``hk.GRU`` (no exact
        jlstm counterpart), or shapes that disagree.
    """
    where = "jlstm.interop.from_haiku_lstm"
    name, linear = _linear_of(params, module, where)
    w = to_numpy(linear["w"], f"params[{name!r}]['w']", where)
    b = to_numpy(linear["b"], f"params[{name!r}]['b']", where)
    if not _lstm_shaped({"w": w, "b": b}):
        raise ValueError(f"{where}: params[{name!r}] has w {w.shape} and b {b.shape}; an hk.LSTM's linear has "
                         f"w of shape (in + H, 4H) and b of shape (4H,).")
    H = b.shape[0] // 4
    I = w.shape[0] - H
    dt = param_dtype(w)
    w = reorder_blocks(w, _TO_JLSTM)
    b = reorder_blocks(b, _TO_JLSTM).copy()
    b[H:2 * H] += np.asarray(_FORGET, b.dtype)
    params = LSTMParams(w_x=jnp.asarray(w[:I], dt), w_h=jnp.asarray(w[I:], dt), b=jnp.asarray(b, dt))
    return lstm(H, param_dtype=dt), params


def to_haiku_lstm(params: LSTMParams, *, name: str = "lstm") -> dict[str, dict[str, np.ndarray]]:
    """Convert jlstm :class:`LSTMParams` to the params of an ``hk.LSTM`` (the inverse of
    :func:`from_haiku_lstm`): 1 comes off the forget bias, which Haiku adds back at run time.

    Args:
      params: the params of ``jlstm.lstm(H)`` (no peepholes, no projection).
      name: the ``hk.LSTM``'s module path; the params go to ``"<name>/linear"``.

    Returns:
      ``{"<name>/linear": {"w": (in + H, 4H), "b": (4H,)}}`` of NumPy arrays, for the ``apply`` of
      a function whose LSTM has that name.

    Raises:
      TypeError: not :class:`LSTMParams`.
      ValueError: peepholes, a projection, or inconsistent shapes.
    """
    where = "jlstm.interop.to_haiku_lstm"
    w_x, w_h, b = plain_lstm_arrays(params, where, "hk.LSTM")
    H = b.shape[0] // 4
    b = b.copy()
    b[H:2 * H] -= np.asarray(_FORGET, b.dtype)
    w = reorder_blocks(np.concatenate([w_x, w_h], axis=0), _TO_JLSTM)
    return {f"{name}/linear": {"w": np.ascontiguousarray(w),
                              "b": np.ascontiguousarray(reorder_blocks(b, _TO_JLSTM))}}


def _gru_of(params: Any, module: str | None, where: str) -> tuple[str, Mapping[str, Any]]:
    """The ``{"w_i", "w_h", "b"}`` dict of an ``hk.GRU``, and its module name."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{where}: expected Haiku params (a dict of module name -> {{param: array}}), "
                        f"got {type(params).__name__}.")
    if set(params) == _GRU_FIELDS:                          # the GRU's own dict
        return "<gru>", params
    found = [n for n, v in params.items() if isinstance(v, Mapping) and set(v) == _GRU_FIELDS]
    name = pick_one(found, module, where, arg="module", plural="GRUs", missing="no hk.GRU at",
                    none=f"found no hk.GRU in the params (an entry with 'w_i', 'w_h' and 'b'); the modules are "
                         f"{sorted(params)}.")
    return name, params[name]


def _flip_z(a: np.ndarray, *, to_haiku: bool = False) -> np.ndarray:
    """Reorder z, r, a <-> r, z, n along the last axis and negate the z block (σ(-u) = 1 - σ(u)), which is
    block 1 in jlstm's order: after the reordering from Haiku's, before the reordering to it."""
    H = a.shape[-1] // 3
    a = np.array(a if to_haiku else reorder_blocks(a, _GRU_ORDER))
    a[..., H:2 * H] *= -1
    return reorder_blocks(a, _GRU_ORDER) if to_haiku else a


def from_haiku_gru(params: Any, *, module: str | None = None) -> tuple[Cell, ResetBeforeGRUParams]:
    """Convert the params of a Haiku ``hk.GRU`` to ``jlstm.gru(H, reset_after=False)`` and its params.

    ::

        w_x = w_i, w_h = w_h, b = b, each with blocks z, r, a -> r, -z, n

    Args:
      params: the params of a transformed function that uses ``hk.GRU``, or the GRU's own
        ``{"w_i", "w_h", "b"}`` dict.
      module: which GRU, where the params hold several (``"gru_1"``).

    Returns:
      ``(jlstm.gru(H, reset_after=False), ResetBeforeGRUParams)``; Haiku's state ``h`` is
      :class:`jlstm.GRUState` ``(h,)``.

    Raises:
      TypeError: ``params`` is not a dict.
      ValueError: no GRU in the params, several without ``module=``, or shapes that disagree.
    """
    where = "jlstm.interop.from_haiku_gru"
    name, found = _gru_of(params, module, where)
    w_i, w_h, b = (to_numpy(found[k], f"params[{name!r}][{k!r}]", where) for k in ("w_i", "w_h", "b"))
    H = w_h.shape[0] if w_h.ndim == 2 else -1
    if w_h.shape != (H, 3 * H) or w_i.ndim != 2 or w_i.shape[1] != 3 * H or b.shape != (3 * H,):
        raise ValueError(f"{where}: params[{name!r}] has w_i {w_i.shape}, w_h {w_h.shape}, b {b.shape}; an hk.GRU "
                         f"has (in, 3H), (H, 3H) and (3H,).")
    dt = param_dtype(w_i)
    out = ResetBeforeGRUParams(*(jnp.asarray(_flip_z(a), dt) for a in (w_i, w_h, b)))
    return gru(H, reset_after=False, param_dtype=dt), out


def to_haiku_gru(params: ResetBeforeGRUParams, *, name: str = "gru") -> dict[str, dict[str, np.ndarray]]:
    """Convert the params of ``jlstm.gru(H, reset_after=False)`` to those of an ``hk.GRU`` (the inverse of
    :func:`from_haiku_gru`).

    Args:
      params: :class:`jlstm.ResetBeforeGRUParams`. PyTorch-form :class:`jlstm.GRUParams` have no
        ``hk.GRU`` counterpart.
      name: the ``hk.GRU``'s module path.

    Returns:
      ``{"<name>": {"w_i": (in, 3H), "w_h": (H, 3H), "b": (3H,)}}`` of NumPy arrays.

    Raises:
      TypeError: other params.
      ValueError: inconsistent shapes.
    """
    w_x, w_h, b = reset_before_gru_arrays(params, "jlstm.interop.to_haiku_gru", "hk.GRU")
    return {name: {k: np.ascontiguousarray(_flip_z(a, to_haiku=True)) for k, a in (("w_i", w_x), ("w_h", w_h),
                                                                                   ("b", b))}}
