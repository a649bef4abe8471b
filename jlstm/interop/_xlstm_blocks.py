"""The ``xlstm`` package's mLSTM layer, blocks, block stacks and language model -> :mod:`jlstm.xlstm` models.

Every converter reads the PyTorch modules' weights (row-vector convention: a ``Linear`` weight
``[out, in]`` becomes ``w [in, out]``) and builds the jlstm model from the modules' configs:

* ``mLSTMLayer``: ``proj_up``, ``conv1d`` (``[I, 1, K]`` -> ``w [K, I]``), ``q_proj``/``k_proj``/
  ``v_proj`` (``[blocks, out, in]`` -> ``[blocks, in, out]``), the cell's ``igate``/``fgate``
  (stacked into ``w_gates [3I, 2NH]``), ``outnorm``, ``learnable_skip``, ``proj_down``;
* ``sLSTMLayer`` with a conv: the cell as in :func:`jlstm.interop.from_xlstm_slstm`, plus the conv;
* ``xLSTMBlock``: ``xlstm_norm``, the layer, and ``ffn_norm``/``ffn`` (``GatedFeedForward``);
* ``xLSTMBlockStack``: the blocks and ``post_blocks_norm``;
* ``xLSTMLMModel``: ``token_embedding``, the stack and ``lm_head`` (no bias: a zero read-out bias).

Layer norms store a residual weight ``w`` (scale ``1 + w``); jlstm stores the scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from jlstm.core.types import SequenceModel
from jlstm.interop._common import param_dtype, to_numpy
from jlstm.interop._xlstm import slstm_weights
from jlstm.xlstm.blocks import BlockParams, block
from jlstm.xlstm.conv import ConvParams
from jlstm.xlstm.feedforward import FeedForwardParams, feedforward
from jlstm.xlstm.mlstm import MLSTMLayerParams, mlstm_layer
from jlstm.xlstm.norms import LayerNormParams
from jlstm.xlstm.slstm import SLSTMLayerParams, slstm_layer
from jlstm.xlstm.stack import StackParams, block_stack

if TYPE_CHECKING:
    from jlstm.train import LanguageModel, LMParams

__all__ = ["from_xlstm_block", "from_xlstm_block_stack", "from_xlstm_lm", "from_xlstm_mlstm"]


def _xlstm(where: str) -> Any:
    try:
        import xlstm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{where} needs the xlstm package: pip install xlstm.") from e
    return xlstm


class _Reader:
    """Reads torch tensors into jlstm arrays of one dtype (float64 stays float64 under x64)."""

    def __init__(self, where: str, dtype: Any) -> None:
        self.where, self.dtype = where, dtype

    def __call__(self, tensor: Any, name: str, transpose: bool = False) -> jax.Array:
        a = to_numpy(tensor, name, self.where)
        return jnp.asarray(a.T if transpose else a, self.dtype)

    def optional(self, tensor: Any, name: str) -> jax.Array | None:
        return None if tensor is None else self(tensor, name)

    def linear(self, module: Any, name: str) -> tuple[jax.Array, jax.Array | None]:
        return self(module.weight, name + ".weight", transpose=True), self.optional(module.bias, name + ".bias")

    def conv(self, conv1d: Any, name: str) -> ConvParams | None:
        """A ``CausalConv1d``: weight ``[F, 1, K]`` -> ``w [K, F]``; ``None`` for kernel size 0."""
        if conv1d.conv is None:
            return None
        return ConvParams(self(conv1d.conv.weight[:, 0, :], name + ".weight", transpose=True),
                          self.optional(conv1d.conv.bias, name + ".bias"))

    def norm(self, module: Any, name: str) -> LayerNormParams:
        """A ``LayerNorm``/``MultiHeadLayerNorm`` of the package: ``1 + weight`` when residual."""
        if module.weight is None:
            scale = jnp.ones((int(module.ndim),), self.dtype)
        else:
            w = self(module.weight, name + ".weight")
            scale = 1.0 + w if module.residual_weight else w
        return LayerNormParams(scale, self.optional(module.bias, name + ".bias"))


def _reader(module: Any, where: str) -> _Reader:
    first = next(module.parameters())
    return _Reader(where, param_dtype(to_numpy(first, "a parameter", where)))


def from_xlstm_mlstm(layer: Any) -> tuple[SequenceModel, MLSTMLayerParams]:
    """Convert an ``xlstm`` ``mLSTMLayer`` into :func:`jlstm.xlstm.mlstm_layer` and its params.

    Returns:
      ``(model, params)``: ``model.apply(params, xs)`` with time-major ``xs [T, B, E]`` equals
      ``layer(xs_bt)`` transposed to time-major (the layer's parallel form; jlstm's three forms
      give the same values).

    Raises:
      TypeError: ``layer`` is not an ``mLSTMLayer`` (for a block, use :func:`from_xlstm_block`).

    Example::

      layer = xlstm.mLSTMLayer(xlstm.mLSTMLayerConfig(embedding_dim=64, num_heads=4, context_length=256))
      model, params = jlstm.interop.from_xlstm_mlstm(layer)
      state, ys = model.apply(params, xs)          # xs: [T, B, 64]
    """
    where = "from_xlstm_mlstm"
    mlstm_mod = _xlstm(where).blocks.mlstm.layer
    if not isinstance(layer, mlstm_mod.mLSTMLayer):
        raise TypeError(f"{where}: layer must be an xlstm mLSTMLayer, got {type(layer).__name__}; for an xLSTM "
                        f"block use from_xlstm_block, for a stack from_xlstm_block_stack.")
    cfg, read = layer.config, _reader(layer, where)
    cell = layer.mlstm_cell
    K, I = int(cfg.conv1d_kernel_size), int(cfg._inner_embedding_dim)
    model = mlstm_layer(int(cfg.embedding_dim), num_heads=int(cfg.num_heads), inner_size=I, conv1d_kernel_size=K,
                        qkv_proj_blocksize=int(cfg.qkv_proj_blocksize), bias=bool(cfg.bias),
                        dropout=float(cfg.dropout), norm_eps=float(cell.outnorm.eps),
                        num_blocks=int(cfg._num_blocks),
                        param_dtype=read.dtype)
    w_up, b_up = read.linear(layer.proj_up, "proj_up")
    names = ("q_proj", "k_proj", "v_proj")
    w_q, w_k, w_v = (read(getattr(layer, n).weight.transpose(1, 2), n + ".weight") for n in names)
    b_q, b_k, b_v = (read.optional(getattr(layer, n).bias, n + ".bias") for n in names)
    gates = (cell.igate, cell.fgate)
    w_down, b_down = read.linear(layer.proj_down, "proj_down")
    params = MLSTMLayerParams(
        w_up=w_up, b_up=b_up, conv=read.conv(layer.conv1d, "conv1d"), w_q=w_q, w_k=w_k, w_v=w_v, b_q=b_q, b_k=b_k,
        b_v=b_v, w_gates=jnp.concatenate([read(g.weight, "gate.weight", transpose=True) for g in gates], axis=1),
        b_gates=jnp.concatenate([read(g.bias, "gate.bias") for g in gates]),
        norm_scale=read.norm(cell.outnorm, "outnorm").scale, skip=read(layer.learnable_skip, "learnable_skip"),
        w_down=w_down, b_down=b_down)
    return model, params


def slstm_layer_from(layer: Any, where: str) -> tuple[SequenceModel, SLSTMLayerParams]:
    """An ``sLSTMLayer`` (with or without a conv) as :func:`jlstm.xlstm.slstm_layer` (see ``from_xlstm_slstm``)."""
    cfg = layer.config
    if cfg.function != "slstm":
        raise ValueError(f"{where}: the layer's cell computes function={cfg.function!r}; only 'slstm' is "
                         f"converted.")
    cell, scale, bias, eps = slstm_weights(layer, where)
    read = _Reader(where, cell.w_h.dtype)
    K = int(cfg.conv1d_kernel_size)
    conv = read.conv(layer.conv1d, "conv1d") if K else None
    model = slstm_layer(int(cfg.embedding_dim), num_heads=int(cfg.num_heads), conv1d_kernel_size=K,
                        dropout=float(cfg.dropout), norm_eps=eps, norm_bias=bias is not None,
                        block_index=int(cfg._block_idx), num_blocks=int(cfg._num_blocks), param_dtype=read.dtype)
    return model, SLSTMLayerParams(conv=conv, cell=cell, norm_scale=scale, norm_bias=bias)


def _feedforward(ffn: Any, read: _Reader) -> tuple[SequenceModel, FeedForwardParams]:
    cfg = ffn.config
    model = feedforward(int(cfg.embedding_dim), act_fn=cfg.act_fn, bias=bool(cfg.bias), dropout=float(cfg.dropout),
                        inner_size=int(cfg._proj_up_dim), num_blocks=int(cfg._num_blocks), param_dtype=read.dtype)
    w_up, b_up = read.linear(ffn.proj_up, "ffn.proj_up")
    w_down, b_down = read.linear(ffn.proj_down, "ffn.proj_down")
    return model, FeedForwardParams(w_up, b_up, w_down, b_down)


def from_xlstm_block(xblock: Any) -> tuple[SequenceModel, BlockParams]:
    """Convert an ``xlstm`` ``xLSTMBlock`` (``mLSTMBlock`` or ``sLSTMBlock``) into :func:`jlstm.xlstm.block`.

    The block's layer converts as in :func:`from_xlstm_mlstm` / :func:`from_xlstm_slstm`; its
    pre-norm, and its feed-forward with that one's norm, come along. The state is the layer's.
    """
    where = "from_xlstm_block"
    xl = _xlstm(where)
    if not isinstance(xblock, xl.blocks.xlstm_block.xLSTMBlock):
        raise TypeError(f"{where}: xblock must be an xlstm mLSTMBlock or sLSTMBlock, got {type(xblock).__name__}.")
    read = _reader(xblock, where)
    if isinstance(xblock.xlstm, xl.blocks.mlstm.layer.mLSTMLayer):
        layer, layer_params = from_xlstm_mlstm(xblock.xlstm)
    else:
        layer, layer_params = slstm_layer_from(xblock.xlstm, where)
    norm = read.norm(xblock.xlstm_norm, "xlstm_norm")
    ff, ff_params, ff_norm = None, None, None
    if xblock.ffn is not None:
        ff, ff_params = _feedforward(xblock.ffn, read)
        ff_norm = read.norm(xblock.ffn_norm, "ffn_norm")
    model = block(layer, ff, norm_eps=float(xblock.xlstm_norm.eps), norm_bias=norm.bias is not None)
    return model, BlockParams(norm, layer_params, ff_norm, ff_params)


def from_xlstm_block_stack(stack: Any) -> tuple[SequenceModel, StackParams]:
    """Convert an ``xlstm`` ``xLSTMBlockStack`` into :func:`jlstm.xlstm.block_stack` and its params.

    Returns:
      ``(model, params)``: ``model.apply(params, xs)`` (time-major) equals ``stack(xs_bt)``
      transposed; its state is a tuple of the blocks' states, so the converted stack streams.

    Example::

      stack = xlstm.xLSTMBlockStack(config)        # mLSTM and sLSTM blocks, vanilla sLSTM backend
      model, params = jlstm.interop.from_xlstm_block_stack(stack)
      states, ys = model.apply(params, xs)         # xs: [T, B, E]
    """
    where = "from_xlstm_block_stack"
    xl = _xlstm(where)
    if not isinstance(stack, xl.xLSTMBlockStack):
        raise TypeError(f"{where}: stack must be an xlstm xLSTMBlockStack, got {type(stack).__name__}; for an "
                        f"xLSTMLMModel use from_xlstm_lm.")
    import torch

    converted = [from_xlstm_block(b) for b in stack.blocks]
    post = stack.post_blocks_norm
    has_post = not isinstance(post, torch.nn.Identity)
    model = block_stack([m for m, _ in converted], post_norm=has_post,
                        norm_eps=float(post.eps) if has_post else 1e-5)
    post_params = _reader(stack, where).norm(post, "post_blocks_norm") if has_post else None
    if post_params is not None and post_params.bias is not None:
        raise ValueError(f"{where}: post_blocks_norm has a bias, which xLSTMBlockStack never builds; this stack "
                         f"was modified and cannot be converted.")
    return model, StackParams(tuple(p for _, p in converted), post_params)


def from_xlstm_lm(lm: Any) -> tuple[LanguageModel, LMParams]:
    """Convert an ``xlstm`` ``xLSTMLMModel`` into a :class:`jlstm.train.LanguageModel` and its params.

    The encoder is the converted block stack; ``embed`` is the token embedding, the read-out is
    ``lm_head`` with a zero bias. Tied weights are copied (the jlstm params are then untied), and
    the embedding dropout (``add_embedding_dropout``) is not carried over: ``LanguageModel`` has
    none. ``apply(params, tokens [T, B])`` gives the package's logits, time-major.
    """
    where = "from_xlstm_lm"
    xl = _xlstm(where)
    if not isinstance(lm, xl.xLSTMLMModel):
        raise TypeError(f"{where}: lm must be an xlstm xLSTMLMModel, got {type(lm).__name__}.")
    from jlstm.train import DenseParams, LanguageModel, LMParams

    encoder, enc_params = from_xlstm_block_stack(lm.xlstm_block_stack)
    read = _reader(lm, where)
    embed = read(lm.token_embedding.weight, "token_embedding.weight")
    V, E = (int(n) for n in embed.shape)
    model = LanguageModel(encoder, vocab_size=V, embed_size=E)
    w_out = read(lm.lm_head.weight, "lm_head.weight", transpose=True)
    return model, LMParams(embed, enc_params, DenseParams(w_out, jnp.zeros((V,), read.dtype)))
