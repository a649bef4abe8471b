"""A :func:`jlstm.xlstm.block_stack` -> the ``xlstm`` package's ``xLSTMBlockStack`` (torch imported lazily).

``xLSTMBlockStackConfig`` describes one mLSTM block and one sLSTM block and places them by
``slstm_at``, so a jlstm stack converts when its mLSTM blocks share one configuration (and have no
feed-forward), its sLSTM blocks share one (up to their ``block_index``), and the stack-wide options
the package sets on every layer (``bias``, ``dropout``) agree. The weights are the inverse of
:func:`jlstm.interop.from_xlstm_block_stack`'s reading.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jlstm.core.types import CellConfig, SequenceModel
from jlstm.interop._common import to_numpy
from jlstm.xlstm.stack import StackParams

__all__ = ["to_xlstm_block_stack"]

_WHERE = "to_xlstm_block_stack"


def _up_config(inner: int, embedding_dim: int) -> dict[str, Any]:
    """``proj_factor`` and rounding options under which the package's rule gives ``inner`` exactly."""
    factor = inner / embedding_dim
    for multiple in (64, 32, 16, 8, 4, 2, 1):
        for up in (True, False):
            scaled = factor * embedding_dim / multiple
            if int((math.ceil(scaled) if up else math.floor(scaled)) * multiple) == inner:
                return {"proj_factor": factor, "round_proj_up_to_multiple_of": multiple,
                        "round_proj_up_dim_up": up}
    raise ValueError(f"{_WHERE}: no proj_factor of the xlstm package gives the inner width {inner} from "
                     f"embedding_dim={embedding_dim}.")  # pragma: no cover - multiple 1 always fits


def _one(configs: list[CellConfig], what: str) -> CellConfig | None:
    if any(c != configs[0] for c in configs[1:]):
        raise ValueError(f"{_WHERE}: the stack's {what} differ in their options, but xLSTMBlockStackConfig holds "
                         f"one configuration for all of them; build them alike.")
    return configs[0] if configs else None


def _block_configs(model: SequenceModel) -> tuple[CellConfig | None, CellConfig | None, CellConfig | None,
                                                  list[int]]:
    """The shared mLSTM and sLSTM layer configs, the sLSTM blocks' feed-forward config, and ``slstm_at``."""
    if model.config is None or model.config.kind != "xlstm_block_stack":
        raise TypeError(f"{_WHERE}: model must be a jlstm.xlstm.block_stack, got {model.name}.")
    mlstm, slstm, ffns, slstm_at = [], [], [], []
    for k, blk in enumerate(model.config.blocks):
        cfg = blk.config
        layer = cfg.layer.config if cfg is not None and cfg.kind == "xlstm_block" else None
        if cfg is None or layer is None or layer.kind not in ("xlstm_mlstm_layer", "xlstm_slstm_layer"):
            raise ValueError(f"{_WHERE}: block {k} ({blk.name}) is not an mLSTM or sLSTM block, which is all "
                             f"xLSTMBlockStack holds.")
        if cfg.norm_eps != 1e-5 or cfg.norm_bias:
            raise ValueError(f"{_WHERE}: block {k}'s norms have eps={cfg.norm_eps}, bias={cfg.norm_bias}; the "
                             f"package's are eps=1e-5 without bias.")
        ffn = cfg.feedforward.config if cfg.feedforward is not None else None
        if layer.kind == "xlstm_mlstm_layer":
            if ffn is not None:
                raise ValueError(f"{_WHERE}: mLSTM block {k} has a feed-forward, which the package's mLSTM block "
                                 f"lacks.")
            mlstm.append(layer)
        else:
            slstm.append(layer.replace(block_index=0))
            ffns.append(ffn)
            slstm_at.append(k)
    return _one(mlstm, "mLSTM blocks"), _one(slstm, "sLSTM blocks"), _one(ffns, "feed-forwards"), slstm_at


def _stack_config(model: SequenceModel, context_length: int, backend: Any) -> Any:
    import xlstm

    m, s, ff, slstm_at = _block_configs(model)
    assert model.config is not None
    E = model.output_size
    dropouts = {c.dropout for c in (m, s) if c is not None}
    if len(dropouts) > 1:
        raise ValueError(f"{_WHERE}: the mLSTM and sLSTM layers have different dropout rates {sorted(dropouts)}; "
                         f"the package sets one stack-wide rate on both.")
    mlstm_block = slstm_block = None
    if m is not None:
        if m.core.config.eps != 1e-6 or m.norm_eps != 1e-5:
            raise ValueError(f"{_WHERE}: the mLSTM layers use eps={m.core.config.eps}, norm_eps={m.norm_eps}; "
                             f"the package's are 1e-6 and 1e-5.")
        mlstm_block = xlstm.mLSTMBlockConfig(mlstm=xlstm.mLSTMLayerConfig(
            conv1d_kernel_size=m.conv1d_kernel_size, qkv_proj_blocksize=m.qkv_proj_blocksize,
            num_heads=m.num_heads,
            **_up_config(m.inner_size, E)))
    if s is not None:
        feedforward = None if ff is None else xlstm.FeedForwardConfig(
            act_fn=ff.act_fn, bias=ff.bias, dropout=ff.dropout, **_up_config(ff.inner_size, E))
        slstm_block = xlstm.sLSTMBlockConfig(slstm=xlstm.sLSTMLayerConfig(
            backend=backend, num_heads=s.num_heads, conv1d_kernel_size=s.conv1d_kernel_size, bias_init=s.bias_init,
            recurrent_weight_init=s.recurrent_init), feedforward=feedforward)
    return xlstm.xLSTMBlockStackConfig(
        mlstm_block=mlstm_block, slstm_block=slstm_block, context_length=context_length,
        num_blocks=len(model.config.blocks), embedding_dim=E, add_post_blocks_norm=model.config.post_norm,
        bias=bool(m.bias) if m is not None else False, dropout=dropouts.pop() if dropouts else 0.0,
        slstm_at=slstm_at)


def _linear(sd: dict, name: str, w: Any, b: Any = None) -> None:
    sd[name + ".weight"] = np.asarray(w).T
    if b is not None:
        sd[name + ".bias"] = np.asarray(b)


def _norm(sd: dict, name: str, p: Any) -> None:
    if p.bias is not None:
        raise ValueError(f"{_WHERE}: {name} has a bias, which the package's layer norms lack.")
    sd[name + ".weight"] = np.asarray(p.scale) - 1.0  # the package stores a residual weight


def _conv(sd: dict, name: str, p: Any) -> None:
    if p is not None:
        sd[name + ".conv.weight"] = np.asarray(p.w).T[:, None, :]
        sd[name + ".conv.bias"] = np.asarray(p.b)


def _mlstm_weights(sd: dict, pre: str, p: Any) -> None:
    heads = p.b_gates.shape[0] // 2
    _linear(sd, pre + "proj_up", p.w_up, p.b_up)
    _conv(sd, pre + "conv1d", p.conv)
    for name, w, b in (("q_proj", p.w_q, p.b_q), ("k_proj", p.w_k, p.b_k), ("v_proj", p.w_v, p.b_v)):
        sd[pre + name + ".weight"] = np.swapaxes(np.asarray(w), 1, 2)
        if b is not None:
            sd[pre + name + ".bias"] = np.asarray(b)
    _linear(sd, pre + "mlstm_cell.igate", p.w_gates[:, :heads], p.b_gates[:heads])
    _linear(sd, pre + "mlstm_cell.fgate", p.w_gates[:, heads:], p.b_gates[heads:])
    sd[pre + "mlstm_cell.outnorm.weight"] = np.asarray(p.norm_scale) - 1.0
    sd[pre + "learnable_skip"] = np.asarray(p.skip)
    _linear(sd, pre + "proj_down", p.w_down, p.b_down)


def _slstm_weights(sd: dict, pre: str, p: Any, cell_module: Any) -> None:
    """An sLSTM layer's weights; ``cell_module`` (the package's cell) turns the external layouts into its own."""
    import torch

    heads, d = p.cell.w_h.shape[0], p.cell.w_h.shape[1]
    _conv(sd, pre + "conv1d", p.conv)
    w_x = np.asarray(p.cell.w_x)
    for g, name in enumerate(("fgate", "igate", "zgate", "ogate")):  # they compute i, f, z, o
        sd[pre + name + ".weight"] = np.swapaxes(w_x[..., g * d:(g + 1) * d], 1, 2)
    r_ext = torch.as_tensor(np.array(p.cell.w_h).reshape(heads, d, 4, d))
    b_ext = torch.as_tensor(np.asarray(p.cell.b).reshape(4, heads, d).transpose(1, 0, 2).copy())
    sd[pre + "slstm_cell._recurrent_kernel_"] = cell_module._recurrent_kernel_ext2int(r_ext)
    sd[pre + "slstm_cell._bias_"] = cell_module._bias_ext2int(b_ext)
    if p.norm_bias is not None:
        raise ValueError(f"{_WHERE}: an sLSTM layer's norm has a bias, which the package's group norm lacks.")
    sd[pre + "group_norm.weight"] = np.asarray(p.norm_scale) - 1.0


def to_xlstm_block_stack(model: SequenceModel, params: StackParams, *, context_length: int = 256,
                         backend: str = "vanilla") -> Any:
    """Build an ``xlstm`` ``xLSTMBlockStack`` holding the weights of a :func:`jlstm.xlstm.block_stack`.

    Args:
      model: the jlstm stack (mLSTM and sLSTM blocks, as :func:`jlstm.xlstm.xlstm_stack` builds).
      params: its :class:`jlstm.xlstm.StackParams`.
      context_length: the package's mLSTM context length (its longest sequence).
      backend: the sLSTM backend of the package, ``"vanilla"`` (PyTorch, any device) or ``"cuda"``.

    Returns:
      The ``torch.nn.Module`` in the params' dtype; ``stack(xs_bt)`` equals
      ``model.apply(params, xs)`` transposed.

    Raises:
      TypeError: ``model`` is not a block stack.
      ValueError: what ``xLSTMBlockStackConfig`` cannot express (blocks of one kind with different
        options, an mLSTM block with a feed-forward, norms with a bias or other epsilons).
    """
    import torch
    from xlstm import xLSTMBlockStack

    stack = xLSTMBlockStack(_stack_config(model, context_length, backend))
    stack = stack.to(getattr(torch, str(np.asarray(params.blocks[0].norm.scale).dtype)))
    sd: dict = {}
    for k, (blk, p) in enumerate(zip(stack.blocks, params.blocks)):
        pre = f"blocks.{k}."
        _norm(sd, pre + "xlstm_norm", p.norm)
        layer: Any = blk.xlstm
        if hasattr(layer, "mlstm_cell"):
            _mlstm_weights(sd, pre + "xlstm.", p.layer)
        else:
            _slstm_weights(sd, pre + "xlstm.", p.layer, layer.slstm_cell)
        if p.ffn is not None:
            _norm(sd, pre + "ffn_norm", p.ffn_norm)
            _linear(sd, pre + "ffn.proj_up", p.ffn.w_up, p.ffn.b_up)
            _linear(sd, pre + "ffn.proj_down", p.ffn.w_down, p.ffn.b_down)
    if params.post_norm is not None:
        _norm(sd, "post_blocks_norm", params.post_norm)
    stack.load_state_dict({k: torch.as_tensor(to_numpy(v, k, _WHERE).copy()) for k, v in sd.items()}, strict=True)
    return stack
