"""Keras 3 ``LSTM`` / ``GRU`` / ``Bidirectional`` weights <-> jlstm layers (keras imported lazily).

Keras uses the row-vector convention of jlstm, so the LSTM weights map one to one
(``kernel`` (in, 4U) = ``w_x``, ``recurrent_kernel`` (U, 4U) = ``w_h``, ``bias`` (4U) = ``b``;
gate order i, f, c, o = i, f, g, o). The Keras GRU orders its gates z, r, h; jlstm (like
PyTorch) r, z, n, so the first two blocks of every GRU weight swap. With ``reset_after=True``
(the Keras default) the GRU bias has shape (2, 3U): row 0 is the input bias ``b_x``, row 1
the recurrent bias ``b_h``, and the equations are PyTorch's. ``reset_after=False`` applies the
reset gate before the recurrent matmul, with one bias (3U): that is
``jlstm.gru(U, reset_after=False)`` and its :class:`jlstm.ResetBeforeGRUParams`.

Keras layers are batch-major ``[B, T, in]``; the jlstm models returned here are time-major
like the rest of jlstm: call ``model.apply(params, xs, time_major=False)`` for Keras'
layout. Keras dropout and recurrent dropout (training only) are not converted.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from jlstm.cells.gru import GRUParams, ResetBeforeGRUParams, gru
from jlstm.cells.lstm import LSTMParams, lstm
from jlstm.core.types import Merge, SequenceModel
from jlstm.interop._common import (
    check_model_name,
    layer_is_reversed,
    model_merge,
    param_dtype,
    reorder_blocks,
    to_numpy,
)
from jlstm.layers.bidirectional import BidirectionalParams, bidirectional
from jlstm.layers.recurrent import recurrent

_GRU_ORDER = (1, 0, 2)  # z, r, h <-> r, z, n (its own inverse)
_MERGES: dict[str, Merge] = {"concat": "concat", "sum": "sum", "ave": "mean"}
_MERGES_BACK = {v: k for k, v in _MERGES.items()}


def _keras():
    import keras

    return keras


def _cell_class(kind: str):
    keras = _keras()
    return keras.layers.LSTMCell if kind == "lstm" else keras.layers.GRUCell


def _check_cell(cell: Any, kind: str, what: str, where: str) -> None:
    keras = _keras()
    act, rec = cell.activation, cell.recurrent_activation
    if act is not keras.activations.get("tanh") or rec is not keras.activations.get("sigmoid"):
        raise ValueError(
            f"{where}: {what} uses activation={getattr(act, '__name__', act)!r}, recurrent_activation="
            f"{getattr(rec, '__name__', rec)!r}; jlstm's {kind} uses tanh and sigmoid, so the outputs would "
            f"differ. Use a layer with activation='tanh', recurrent_activation='sigmoid'.")


def _split_layer(layer: Any, kind: str, where: str) -> tuple[list[Any], Merge | None]:
    """Return ``([rnn_layer] or [forward, backward], merge)`` after checking the layer type."""
    name = "keras.layers.LSTM" if kind == "lstm" else "keras.layers.GRU"
    if sys.modules.get("keras") is None:
        # A Keras layer means Keras is imported. Importing it here only to say no would pick Keras' default
        # backend, TensorFlow, and fail with "No module named 'tensorflow'" where TensorFlow is absent.
        raise TypeError(f"{where}: expected a {name} (or keras.layers.RNN of its cell, or a Bidirectional of "
                        f"one), got {type(layer).__name__}, and Keras is not imported.")
    keras = _keras()
    if isinstance(layer, keras.layers.Bidirectional):
        mode = layer.merge_mode
        if mode not in _MERGES:
            raise ValueError(f"{where}: Bidirectional(merge_mode={mode!r}) has no jlstm counterpart; jlstm merges "
                             f"with 'concat', 'sum' or 'ave' (mean).")
        fwd, bwd = layer.forward_layer, layer.backward_layer
        if fwd.go_backwards or not bwd.go_backwards:
            raise ValueError(f"{where}: the forward layer of this Bidirectional runs backwards; jlstm needs the "
                             f"forward layer forward and the backward layer backward.")
        subs, merge = [fwd, bwd], _MERGES[mode]
    else:
        subs, merge = [layer], None
    for sub in subs:
        if not isinstance(sub, keras.layers.RNN) or not isinstance(sub.cell, _cell_class(kind)):
            other = "gru" if kind == "lstm" else "lstm"
            is_other = isinstance(getattr(sub, "cell", None), _cell_class(other))
            raise TypeError(f"{where}: expected a {name} (or keras.layers.RNN of its cell, or a Bidirectional "
                            f"of one), got {type(sub).__name__}"
                            + (f" with cell {type(sub.cell).__name__}" if hasattr(sub, "cell") else "")
                            + (f"; for {other.upper()} layers use from_keras_{other} / to_keras_{other}"
                               if is_other else "; convert a stack of Keras layers one layer at a time") + ".")
        _check_cell(sub.cell, kind, f"layer {sub.name!r}", where)
    return subs, merge


def _read_cell(cell: Any, kind: str, where: str) -> Any:
    keras = _keras()
    if not cell.built:
        raise ValueError(f"{where}: the Keras layer is not built and has no weights yet; call it on an input "
                         f"or call layer.build((None, None, input_size)) first.")
    k = to_numpy(keras.ops.convert_to_numpy(cell.kernel), "kernel", where)
    r = to_numpy(keras.ops.convert_to_numpy(cell.recurrent_kernel), "recurrent_kernel", where)
    U = cell.units
    G = 4 if kind == "lstm" else 3
    if k.shape[-1] != G * U or r.shape != (U, G * U):
        raise ValueError(f"{where}: kernel {k.shape} / recurrent_kernel {r.shape} do not fit units={U} "
                         f"({G} gates).")
    dt = param_dtype(k)
    import jax.numpy as jnp

    if kind == "lstm":
        b = (to_numpy(keras.ops.convert_to_numpy(cell.bias), "bias", where) if cell.use_bias
             else np.zeros((4 * U,), k.dtype))
        return LSTMParams(jnp.asarray(k, dt), jnp.asarray(r, dt), jnp.asarray(b, dt))
    if not cell.reset_after:
        b = (to_numpy(keras.ops.convert_to_numpy(cell.bias), "bias", where) if cell.use_bias
             else np.zeros((3 * U,), k.dtype))
        if b.shape != (3 * U,):
            raise ValueError(f"{where}: GRU bias has shape {b.shape}, expected ({3 * U},) for reset_after=False.")
        return ResetBeforeGRUParams(*(jnp.asarray(reorder_blocks(a, _GRU_ORDER), dt) for a in (k, r, b)))
    if cell.use_bias:
        bias = to_numpy(keras.ops.convert_to_numpy(cell.bias), "bias", where)
        if bias.shape != (2, 3 * U):
            raise ValueError(f"{where}: GRU bias has shape {bias.shape}, expected (2, {3 * U}) "
                             f"for reset_after=True.")
        b_x, b_h = bias[0], bias[1]
    else:
        b_x = b_h = np.zeros((3 * U,), k.dtype)
    return GRUParams(*(jnp.asarray(reorder_blocks(a, _GRU_ORDER), dt) for a in (k, r, b_x, b_h)))


def _from_keras(layer: Any, kind: str, where: str) -> tuple[SequenceModel, Any]:
    subs, merge = _split_layer(layer, kind, where)
    params = [_read_cell(s.cell, kind, where) for s in subs]
    U = subs[0].cell.units
    dt = params[0].w_x.dtype
    if len({bool(getattr(s.cell, "reset_after", True)) for s in subs}) > 1:
        raise ValueError(f"{where}: the two directions of this Bidirectional differ in reset_after; jlstm runs "
                         f"one cell in both directions.")
    cell = (lstm(U, param_dtype=dt) if kind == "lstm"
            else gru(U, reset_after=bool(subs[0].cell.reset_after), param_dtype=dt))
    if merge is not None:
        return bidirectional(cell, merge=merge), BidirectionalParams(params[0], params[1])
    return recurrent(cell, reverse=bool(subs[0].go_backwards)), params[0]


def from_keras_lstm(layer: Any) -> tuple[SequenceModel, Any]:
    """Convert a built Keras 3 ``LSTM`` (or ``RNN(LSTMCell)``, or ``Bidirectional`` of one) to jlstm.

    ``w_x = kernel`` (in, 4U), ``w_h = recurrent_kernel`` (U, 4U), ``b = bias`` (4U) (zeros with
    ``use_bias=False``); gate order i, f, c, o in both libraries.

    Args:
      layer: a built Keras layer with ``activation='tanh'`` and
        ``recurrent_activation='sigmoid'``.

    Returns:
      ``(model, params)``: ``jlstm.recurrent(jlstm.lstm(U))`` with :class:`jlstm.LSTMParams`,
      or for a ``Bidirectional`` ``jlstm.bidirectional(jlstm.lstm(U), merge=...)`` ('ave' ->
      'mean') with :class:`jlstm.BidirectionalParams`. The model is time-major; use
      ``model.apply(params, xs, time_major=False)`` on Keras' ``[B, T, in]`` inputs. Its final
      state is ``LSTMState(h, c)``, Keras' ``[h, c]`` of ``return_state=True``. A layer with
      ``go_backwards=True`` becomes ``recurrent(..., reverse=True)``, whose outputs are in the
      original time order (Keras returns them reversed).

    Raises:
      TypeError: another layer type.
      ValueError: other activations, an unbuilt layer, or a Bidirectional ``merge_mode``
        of ``'mul'`` or ``None``.
    """
    return _from_keras(layer, "lstm", "jlstm.interop.from_keras_lstm")


def from_keras_gru(layer: Any) -> tuple[SequenceModel, Any]:
    """Convert a built Keras 3 ``GRU`` (``reset_after=True``) or a ``Bidirectional`` of one to jlstm.

    The gate blocks go from Keras' z, r, h to jlstm's r, z, n; ``b_x = bias[0]`` and
    ``b_h = bias[1]`` (reordered alike). Keras' update ``h = z ⊙ h_prev + (1 - z) ⊙ hh`` is
    jlstm's. Result as :func:`from_keras_lstm`, with ``jlstm.gru(U)``. A layer with
    ``reset_after=False`` becomes ``jlstm.gru(U, reset_after=False)`` with
    :class:`jlstm.ResetBeforeGRUParams` (``b`` = the (3U) bias, reordered).

    Raises:
      ValueError: other activations, an unbuilt layer, the directions of a Bidirectional
        differing in ``reset_after``. TypeError: another layer type.
    """
    return _from_keras(layer, "gru", "jlstm.interop.from_keras_gru")


def _cell_weights(p: Any, kind: str, use_bias: bool, what: str, where: str) -> list[np.ndarray]:
    if kind == "lstm":
        if p.w_c is not None or p.w_p is not None:
            extra = "peepholes (w_c)" if p.w_c is not None else "a projection (w_p)"
            raise ValueError(f"{where}: {what} has {extra}; Keras' LSTM has neither.")
        w_x, w_h, b = (to_numpy(a, n, where) for a, n in ((p.w_x, "w_x"), (p.w_h, "w_h"), (p.b, "b")))
        if not use_bias:
            if np.any(b != 0):
                raise ValueError(f"{where}: the Keras layer has use_bias=False but {what} has a non-zero bias.")
            return [w_x, w_h]
        return [w_x, w_h, b]
    arrays = [reorder_blocks(to_numpy(getattr(p, n), n, where), _GRU_ORDER) for n in type(p)._fields]
    if isinstance(p, ResetBeforeGRUParams):                    # [kernel, recurrent_kernel, bias (3U)]
        if not use_bias and np.any(arrays[2] != 0):
            raise ValueError(f"{where}: the Keras layer has use_bias=False but {what} has a non-zero bias.")
        return arrays if use_bias else arrays[:2]
    b_x, b_h = (to_numpy(getattr(p, n), n, where) for n in ("b_x", "b_h"))
    out = arrays[:2]
    if not use_bias:
        if np.any(b_x != 0) or np.any(b_h != 0):
            raise ValueError(f"{where}: the Keras layer has use_bias=False but {what} has non-zero biases.")
        return out
    return out + [np.stack([reorder_blocks(b_x, _GRU_ORDER), reorder_blocks(b_h, _GRU_ORDER)])]


def _to_keras(model: SequenceModel | None, params: Any, layer: Any, kind: str, where: str) -> list[np.ndarray]:
    check_model_name(model, where, allow_reverse=True, merges=tuple(_MERGES_BACK))
    if isinstance(params, (tuple, list)) and not hasattr(params, "_fields"):
        if len(params) != 1:
            raise ValueError(f"{where}: a Keras {kind.upper()} layer is one layer but params has {len(params)} "
                             f"layers; convert them one at a time: to_keras_{kind}(None, params[k], layers[k]).")
        params = params[0]
    first = params.forward if isinstance(params, BidirectionalParams) else params
    cls = LSTMParams if kind == "lstm" else type(first) if isinstance(first, ResetBeforeGRUParams) else GRUParams
    if isinstance(params, BidirectionalParams):
        dirs = [params.forward, params.backward]
    elif isinstance(params, cls):
        dirs = [params]
    else:
        raise TypeError(f"{where}: params must be {cls.__name__} or BidirectionalParams of them (a jlstm.{kind} "
                        f"layer), got {type(params).__name__}.")
    for d, p in enumerate(dirs):
        if not isinstance(p, cls):
            raise TypeError(f"{where}: direction {d} has params of type {type(p).__name__}; "
                            f"expected {cls.__name__}.")
    reversed_layer = layer_is_reversed(model) and len(dirs) == 1
    G = 4 if kind == "lstm" else 3
    units = int(np.shape(dirs[0].w_h)[-1]) // G
    input_size = int(np.shape(dirs[0].w_x)[0])
    if layer is None:
        use_bias = [True] * len(dirs)
    else:
        subs, _ = _split_layer(layer, kind, where)
        if len(subs) != len(dirs):
            raise ValueError(f"{where}: the params have {len(dirs)} direction(s) but the Keras layer has "
                             f"{len(subs)}; use a Bidirectional layer for BidirectionalParams and vice versa.")
        if len(subs) == 1 and bool(subs[0].go_backwards) != reversed_layer:
            raise ValueError(f"{where}: the Keras layer has go_backwards={subs[0].go_backwards} but the jlstm "
                             f"model is " + ("reversed" if reversed_layer else "forward") + "; they must match.")
        merge = model_merge(model)
        if len(subs) == 2 and merge is not None and _MERGES_BACK[merge] != layer.merge_mode:
            raise ValueError(f"{where}: the jlstm model merges with {merge!r} but the Keras layer has "
                             f"merge_mode={layer.merge_mode!r}; use merge_mode={_MERGES_BACK[merge]!r}.")
        if kind == "gru" and bool(subs[0].cell.reset_after) != (cls is GRUParams):
            raise ValueError(f"{where}: the Keras layer has reset_after={subs[0].cell.reset_after} but the params "
                             f"are {cls.__name__}; build the layer with reset_after={cls is GRUParams}.")
        if subs[0].cell.units != units:
            raise ValueError(f"{where}: the Keras layer has units={subs[0].cell.units}, the params hidden "
                             f"size {units}; build a layer with units={units}.")
        if not layer.built:
            layer.build((None, None, input_size))
        use_bias = [bool(s.cell.use_bias) for s in subs]
    weights: list[np.ndarray] = []
    for d, (p, ub) in enumerate(zip(dirs, use_bias)):
        weights += _cell_weights(p, kind, ub, "backward params" if d else "params", where)
    if layer is not None:
        current = layer.get_weights()
        shapes = [tuple(w.shape) for w in current]
        if shapes != [tuple(w.shape) for w in weights]:
            raise ValueError(f"{where}: the Keras layer's weights have shapes {shapes}, the converted params "
                             f"{[tuple(w.shape) for w in weights]}; build the layer for input size {input_size}.")
        layer.set_weights([w.astype(c.dtype) for w, c in zip(weights, current)])
    return weights


def to_keras_lstm(model: SequenceModel | None, params: Any, layer: Any = None) -> list[np.ndarray]:
    """Convert jlstm LSTM params to Keras 3 weights, and set them on ``layer`` if given.

    Args:
      model: the jlstm model of ``params`` (checked for options Keras cannot express:
        cell_clip, peepholes, merges other than concat/sum/mean), or ``None``.
      params: :class:`jlstm.LSTMParams`, :class:`jlstm.BidirectionalParams`, or a one-layer
        stack's tuple.
      layer: optional Keras ``LSTM`` / ``Bidirectional(LSTM)`` with tanh/sigmoid activations and
        matching units and direction; built for the params' input size if it is not built yet.
        Its weights are replaced in place with ``layer.set_weights``.

    Returns:
      The weights in ``layer.get_weights()`` order: ``[kernel, recurrent_kernel, bias]`` (no
      bias for a ``use_bias=False`` layer, whose jlstm bias must be zero), forward then
      backward for a Bidirectional. NumPy arrays, ready for ``layer.set_weights``.
    """
    return _to_keras(model, params, layer, "lstm", "jlstm.interop.to_keras_lstm")


def to_keras_gru(model: SequenceModel | None, params: Any, layer: Any = None) -> list[np.ndarray]:
    """Convert jlstm GRU params to Keras 3 ``GRU`` weights (set on ``layer`` if given).

    ``kernel`` and ``recurrent_kernel`` get the gate blocks in Keras' order z, r, h; the bias
    is ``stack([b_x, b_h])`` (2, 3U) reordered alike, for ``reset_after=True``. The
    :class:`jlstm.ResetBeforeGRUParams` of ``jlstm.gru(U, reset_after=False)`` go to a layer
    with ``reset_after=False``, whose bias is ``b`` (3U), reordered. Arguments and result as
    :func:`to_keras_lstm`.
    """
    return _to_keras(model, params, layer, "gru", "jlstm.interop.to_keras_gru")
