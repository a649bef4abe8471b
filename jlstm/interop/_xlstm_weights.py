"""An ``xlstm`` ``sLSTMLayer``'s weights in jlstm's layout (shared by the layer and block converters)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jlstm.cells.slstm import SLSTMParams
from jlstm.interop._common import param_dtype, to_numpy


def slstm_weights(layer: Any, where: str) -> tuple[SLSTMParams, jax.Array, jax.Array | None, float]:
    """An ``sLSTMLayer``'s cell params (head-wise ``w_x``), its group norm's scale and bias, and its eps."""
    cfg = layer.config
    heads, E = int(cfg.num_heads), int(cfg.embedding_dim)
    d = E // heads
    gates = []
    for gate in ("fgate", "igate", "zgate", "ogate"):  # = i, f, z, o: see the module docstring
        proj = getattr(layer, gate)
        if proj.bias is not None:
            raise ValueError(f"{where}: layer.{gate} has a bias, which sLSTMLayer never builds; this layer "
                             f"was modified and cannot be converted.")
        w = to_numpy(proj.weight, f"layer.{gate}.weight", where)
        if w.shape != (heads, d, d):
            raise ValueError(f"{where}: layer.{gate}.weight has shape {w.shape}, expected {(heads, d, d)} "
                             f"(head-wise projections without expansion).")
        gates.append(np.swapaxes(w, 1, 2))
    cell_mod = layer.slstm_cell
    r_ext = to_numpy(cell_mod._recurrent_kernel_int2ext(cell_mod._recurrent_kernel), "recurrent_kernel", where)
    b_ext = to_numpy(cell_mod._bias_int2ext(cell_mod._bias), "bias", where)
    gn = layer.group_norm
    if gn.weight is None:
        scale = np.ones((E,), r_ext.dtype)
    else:
        scale = to_numpy(gn.weight, "group_norm.weight", where)
        scale = 1.0 + scale if gn.residual_weight else scale
    bias = None if gn.bias is None else to_numpy(gn.bias, "group_norm.bias", where)
    dt = param_dtype(r_ext)
    cell_params = SLSTMParams(
        w_x=jnp.asarray(np.concatenate(gates, axis=-1), dt),
        w_h=jnp.asarray(r_ext.reshape(heads, d, 4 * d), dt),
        b=jnp.asarray(np.transpose(b_ext, (1, 0, 2)).reshape(4 * E), dt),
    )
    return (cell_params, jnp.asarray(scale, dt), None if bias is None else jnp.asarray(bias, dt),
            float(gn.eps))
