"""Layers of the ``xlstm`` package (NX-AI, PyTorch) -> jlstm models (torch and xlstm imported lazily).

sLSTM (:func:`from_xlstm_slstm`). ``xlstm.sLSTMLayer`` with ``conv1d_kernel_size=0`` is four
head-wise gate projections, the sLSTM cell and a per-head group norm::

    pre = [x W_i | x W_f | x W_z | x W_o]          (each W block-diagonal: [heads, d, d])
    h_t = sLSTM cell(pre_t, h_{t-1})               (R block-diagonal, bias b)
    y_t = group_norm(h_t)                          (per head over its d units, scale 1 + w)

which is ``jlstm.slstm(H, num_heads=heads, headwise_input=True)`` followed by the same group
norm. The conversion reads the layout-independent ("external") forms of the cell's
parameters, so it works for either backend's weights:

* ``w_x[k, :, g·d:(g+1)·d] = W_g[k].T`` for the gates g = i, f, z, o. The layer computes
  ``i`` with its module named ``fgate`` and ``f`` with the one named ``igate``
  (``i, f, z, o = fgate(x), igate(x), zgate(x), ogate(x)`` in ``sLSTMLayer.forward``); the
  conversion follows what the layer computes, not the names.
* ``r[k] = recurrent_kernel[k].reshape(d, 4d)`` (external layout ``[heads, d, gates, d]``).
* ``b = bias.transpose(1, 0, 2).reshape(4H)`` (external layout ``[heads, gates, d]``).
* ``norm_scale = 1 + group_norm.weight`` (the layer stores a residual weight).

With a causal conv (``conv1d_kernel_size > 0``) the i and f projections read ``silu(conv(x))``; the
layer then converts into :func:`jlstm.xlstm.slstm_layer` (see ``jlstm/interop/_xlstm_blocks.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jlstm._scan import scan
from jlstm.cells.slstm import SLSTMParams, slstm
from jlstm.core.deprecation import renamed_keyword
from jlstm.core.eager import compiled_apply
from jlstm.core.time import valid_steps
from jlstm.core.types import CellConfig, SequenceModel
from jlstm.interop._xlstm_weights import slstm_weights
from jlstm.layers.dropout import check_key, dropout
from jlstm.xlstm.norms import multihead_norm
from jlstm.xlstm.slstm import SLSTMLayerParams

__all__ = ["XLSTMSLSTMLayerParams", "from_xlstm_slstm"]


class XLSTMSLSTMLayerParams(NamedTuple):
    """Params of an ``sLSTMLayer`` converted by :func:`from_xlstm_slstm`.

    Attributes:
      cell: the :class:`jlstm.SLSTMParams` (head-wise ``w_x`` ``[heads, d, 4d]``).
      norm_scale: ``[H]``, the group norm's scale (the layer's ``1 + weight``).
      norm_bias: ``[H]`` or ``None`` (the layer's default has no bias).
    """

    cell: SLSTMParams
    norm_scale: jax.Array
    norm_bias: jax.Array | None


@renamed_keyword("dropout_rate", "output_dropout")
def slstm_layer(hidden_size: int, num_heads: int, *, eps: float = 1e-5, norm_bias: bool = False,
                output_dropout: float = 0.0, param_dtype: Any = jnp.float32) -> SequenceModel:
    """The sequence model of an ``xlstm.sLSTMLayer``: head-wise sLSTM, dropout, group norm.

    ``apply(params, xs, state=None, *, lengths=None, mask=None, key=None, time_major=True, resets=None)``
    returns ``(SLSTMState, ys)``; ``key`` switches the dropout on (the layer in training
    mode), padded or masked steps output zeros, and where ``resets`` (bool ``[T, B]``, or
    ``[B, T]`` batch-major) is True the cell starts that step from the zero state, as the
    layer does at the start of a call. Called outside ``jit``, ``apply`` runs one program kept
    per model and shapes (:func:`jlstm.core.eager.compiled_apply`).

    ``output_dropout`` is the layer's ``sLSTMLayerConfig.dropout``: inverted dropout on the
    cell's outputs, before the group norm. ``dropout_rate=``, its former name, still works but
    is deprecated.
    """
    cell = slstm(hidden_size, num_heads=num_heads, headwise_input=True, param_dtype=param_dtype)
    H = hidden_size
    name = f"xlstm.sLSTMLayer({H}, num_heads={num_heads})"
    config = CellConfig("xlstm_slstm_layer", cell=cell, eps=float(eps), norm_bias=bool(norm_bias),
                        output_dropout=float(output_dropout))

    def init(key: jax.Array, input_size: int) -> XLSTMSLSTMLayerParams:
        p = cell.init(key, input_size)
        bias = jnp.zeros((H,), p.b.dtype) if norm_bias else None
        return XLSTMSLSTMLayerParams(cell=p, norm_scale=jnp.ones((H,), p.b.dtype), norm_bias=bias)

    def apply(params: XLSTMSLSTMLayerParams, xs, state=None, *, lengths=None, mask=None, key=None,
              time_major=True, resets=None):
        where = name + ".apply"
        check_key(key, where)
        final, ys = scan(cell, params.cell, xs, state, lengths=lengths, mask=mask, time_major=time_major,
                         resets=resets)
        if key is not None and output_dropout:
            ys = dropout(key, output_dropout, ys)
        out = multihead_norm(ys, params.norm_scale, num_heads, eps, params.norm_bias)
        if lengths is not None or mask is not None:
            tm = ys if time_major else jnp.moveaxis(ys, -2, 0)
            m = mask if (mask is None or time_major) else jnp.moveaxis(jnp.asarray(mask), -1, 0)
            valid, _ = valid_steps(tm.shape[0], tm.shape[1:-1], lengths, m, where)
            assert valid is not None  # lengths or mask is given
            valid = valid if time_major else jnp.moveaxis(valid, 0, -1)
            out = jnp.where(valid[..., None], out, jnp.zeros((), out.dtype))
        return final, out

    return SequenceModel(init=init, apply=compiled_apply(apply, name + ".apply", config),
                         initial_state=cell.initial_state, output_size=H, name=name, config=config)


def from_xlstm_slstm(layer: Any) -> tuple[SequenceModel, XLSTMSLSTMLayerParams | SLSTMLayerParams]:
    """Convert an ``xlstm.sLSTMLayer`` into a jlstm model and params.

    Args:
      layer: an ``xlstm.sLSTMLayer`` (either backend; its weights are read in their
        backend-independent layout).

    Returns:
      ``(model, params)``: ``model.apply(params, xs)`` with time-major ``xs [T, B, E]``
      equals ``layer(xs_bt)`` (batch-major) transposed to time-major.

      Without a conv (``conv1d_kernel_size=0``) the params are :class:`XLSTMSLSTMLayerParams`
      and the final state is a :class:`jlstm.SLSTMState` equal to the layer's ``slstm_state``
      ``(h, c, n, m)``; a state from the layer goes in as ``jlstm.SLSTMState(*slstm_state)``.
      With a conv the model is :func:`jlstm.xlstm.slstm_layer`: params
      :class:`jlstm.xlstm.SLSTMLayerParams`, state :class:`jlstm.xlstm.SLSTMLayerState` (the
      conv's window ``[B, K-1, E]``, the layer's ``conv_state``, and the cell's state).

    Raises:
      TypeError: ``layer`` is not an ``xlstm.sLSTMLayer``.
      ValueError: the layer's cell computes another function than the sLSTM.

    Example::

      layer = xlstm.sLSTMLayer(xlstm.sLSTMLayerConfig(embedding_dim=64, num_heads=4,
                                                      backend="vanilla", conv1d_kernel_size=0))
      model, params = jlstm.interop.from_xlstm_slstm(layer)
      state, ys = model.apply(params, xs)          # xs: [T, B, 64]
    """
    where = "from_xlstm_slstm"
    try:
        from xlstm.blocks.slstm.layer import sLSTMLayer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{where} needs the xlstm package: pip install xlstm.") from e
    if not isinstance(layer, sLSTMLayer):
        raise TypeError(f"{where}: layer must be an xlstm sLSTMLayer, got {type(layer).__name__}; for an "
                        f"xLSTM block pass its .xlstm attribute.")
    cfg = layer.config
    if cfg.function != "slstm":
        raise ValueError(f"{where}: the layer's cell computes function={cfg.function!r}; only 'slstm' is "
                         f"converted.")
    if cfg.conv1d_kernel_size:
        from jlstm.interop._xlstm_blocks import slstm_layer_from

        return slstm_layer_from(layer, where)
    cell_params, scale, bias, eps = slstm_weights(layer, where)
    dt = cell_params.w_h.dtype
    model = slstm_layer(int(cfg.embedding_dim), int(cfg.num_heads), eps=eps, norm_bias=bias is not None,
                        output_dropout=float(cfg.dropout), param_dtype=dt)
    return model, XLSTMSLSTMLayerParams(cell=cell_params, norm_scale=scale, norm_bias=bias)
