"""xLSTM blocks: a layer behind a layer norm with a residual, and optionally a feed-forward the same way::

    x = x + layer(layer_norm(x))
    x = x + feedforward(layer_norm_ff(x))          (when the block has one)

as the ``xlstm`` package's ``xLSTMBlock`` (``mLSTMBlock`` has no feed-forward by default,
``sLSTMBlock`` a gated GELU one). A block's state is its layer's state, so blocks stream, reset and
checkpoint as their layers do.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

import jlstm.xlstm._shared as _shared
from jlstm.core.eager import compiled_apply
from jlstm.core.types import CellConfig, SequenceModel
from jlstm.xlstm.feedforward import FeedForwardParams, feedforward
from jlstm.xlstm.mlstm import mlstm_layer
from jlstm.xlstm.norms import LayerNormParams, init_layer_norm, layer_norm
from jlstm.xlstm.slstm import slstm_layer

__all__ = ["BlockParams", "block", "feedforward_block", "mlstm_block", "slstm_block"]


class BlockParams(NamedTuple):
    """A block's params: the pre-norm, the layer's params, and the feed-forward's norm and params
    (both ``None`` without a feed-forward)."""

    norm: LayerNormParams
    layer: Any
    ffn_norm: LayerNormParams | None
    ffn: FeedForwardParams | None


def block(layer: SequenceModel, feedforward: SequenceModel | None = None, *, norm_eps: float = 1e-5,
          norm_bias: bool = False) -> SequenceModel:
    """A pre-norm residual block around ``layer``, then around ``feedforward`` (if given).

    Args:
      layer: a :class:`jlstm.SequenceModel` whose output is as wide as its input
        (:func:`jlstm.xlstm.mlstm_layer`, :func:`jlstm.xlstm.slstm_layer`, ``jlstm.recurrent(...)``).
      feedforward: a :func:`jlstm.xlstm.feedforward` layer, or ``None``.
      norm_eps, norm_bias: the layer norms' epsilon and whether they have a bias.

    Returns:
      A model with params :class:`BlockParams` and the layer's state: ``apply(params, xs,
      state=None, *, lengths=None, mask=None, key=None, time_major=True, resets=None)``.

    Example:
      >>> blk = jlstm.xlstm.block(jlstm.recurrent(jlstm.lstm(8)))
      >>> params = blk.init(jax.random.key(0), 8)
      >>> state, ys = jax.jit(blk.apply)(params, jnp.ones((5, 2, 8)))
      >>> ys.shape
      (5, 2, 8)
    """
    if not isinstance(layer, SequenceModel):
        raise TypeError(f"xlstm.block: layer must be a jlstm.SequenceModel such as jlstm.xlstm.mlstm_layer(64), "
                        f"got {type(layer).__name__}.")
    if feedforward is not None and (feedforward.config is None or feedforward.config.kind != "xlstm_feedforward"):
        raise TypeError(f"xlstm.block: feedforward must be a jlstm.xlstm.feedforward(...) layer or None, got "
                        f"{getattr(feedforward, 'name', type(feedforward).__name__)}.")
    E = layer.output_size
    if feedforward is not None and feedforward.output_size != E:
        raise ValueError(f"xlstm.block: the feed-forward is {feedforward.output_size} wide but the layer writes "
                         f"{E} features; build it with jlstm.xlstm.feedforward({E}).")
    name = f"xlstm.block({layer.name}" + (", feedforward)" if feedforward is not None else ")")
    config = CellConfig("xlstm_block", layer=layer, feedforward=feedforward, norm_eps=float(norm_eps),
                        norm_bias=bool(norm_bias))

    def init(key: jax.Array, input_size: int) -> BlockParams:
        _shared.check_input_size(name, input_size, E)
        k_layer, k_ff = jax.random.split(key)
        lp = layer.init(k_layer, E)
        dt = jax.tree.leaves(lp)[0].dtype
        if feedforward is None:
            return BlockParams(init_layer_norm(E, dt, norm_bias), lp, None, None)
        return BlockParams(init_layer_norm(E, dt, norm_bias), lp, init_layer_norm(E, dt, norm_bias),
                           feedforward.init(k_ff, E))

    def apply(params: BlockParams, xs, state=None, *, lengths=None, mask=None, key=None, time_major=True,
              resets=None):
        inp = _shared.time_major_inputs(xs, E, lengths, mask, resets, key, time_major, name + ".apply")
        k_layer, k_ff = (None, None) if key is None else tuple(jax.random.split(key))
        extra = {} if inp.resets is None else {"resets": inp.resets}
        final, y = layer.apply(params.layer, layer_norm(params.norm, inp.xs, norm_eps), state, lengths=lengths,
                               mask=inp.mask, key=k_layer, **extra)
        x = inp.xs + y
        if feedforward is not None and params.ffn is not None and params.ffn_norm is not None:
            x = x + feedforward.apply(params.ffn, layer_norm(params.ffn_norm, x, norm_eps), key=k_ff)[1]
        return final, _shared.finish(x, inp.valid, time_major)

    return SequenceModel(init=init, apply=compiled_apply(apply, name + ".apply", config),
                         initial_state=lambda params, batch_shape=(): layer.initial_state(
        params.layer, batch_shape), output_size=E, name=name, config=config)


def _feedforward_of(spec: Any, embedding_dim: int, num_blocks: int) -> SequenceModel | None:
    if spec is True:
        return feedforward(embedding_dim, num_blocks=num_blocks)
    if spec is None or spec is False:
        return None
    return spec


def mlstm_block(embedding_dim: int, *, feedforward: bool | SequenceModel | None = None, norm_eps: float = 1e-5,
                **options: Any) -> SequenceModel:
    """The mLSTM block: :func:`block` around :func:`jlstm.xlstm.mlstm_layer`.

    Args:
      embedding_dim: E.
      feedforward: ``None``/``False`` (xLSTM's mLSTM block), ``True`` (the default gated GELU
        feed-forward) or a :func:`jlstm.xlstm.feedforward` layer.
      norm_eps: the layer norms' epsilon.
      **options: options of :func:`jlstm.xlstm.mlstm_layer` (``num_heads``, ``proj_factor``,
        ``conv1d_kernel_size``, ``qkv_proj_blocksize``, ``method``, ``dropout``...).

    Example:
      >>> blk = jlstm.xlstm.mlstm_block(16, num_heads=2, round_to=16, method="chunkwise", chunk_size=4)
      >>> params = blk.init(jax.random.key(0), 16)
      >>> state, ys = jax.jit(blk.apply)(params, jnp.ones((10, 2, 16)))
      >>> ys.shape, type(state).__name__
      ((10, 2, 16), 'MLSTMLayerState')
    """
    layer = mlstm_layer(embedding_dim, **options)
    return block(layer, _feedforward_of(feedforward, embedding_dim, options.get("num_blocks", 1)),
                 norm_eps=norm_eps)


def slstm_block(embedding_dim: int, *, feedforward: bool | SequenceModel | None = True, norm_eps: float = 1e-5,
                **options: Any) -> SequenceModel:
    """The sLSTM block: :func:`block` around :func:`jlstm.xlstm.slstm_layer`, with a feed-forward.

    Args:
      embedding_dim: E.
      feedforward: ``True`` (xLSTM's default: gated GELU, ``proj_factor=1.3``), a
        :func:`jlstm.xlstm.feedforward` layer, or ``None``/``False`` for none.
      norm_eps: the layer norms' epsilon.
      **options: options of :func:`jlstm.xlstm.slstm_layer` (``num_heads``,
        ``conv1d_kernel_size``, ``bias_init``, ``block_index``, ``num_blocks``, ``dropout``...).

    Example:
      >>> blk = jlstm.xlstm.slstm_block(8, num_heads=2)
      >>> params = blk.init(jax.random.key(0), 8)
      >>> params.ffn.w_up.shape, jax.jit(blk.apply)(params, jnp.ones((4, 8)))[1].shape
      ((8, 128), (4, 8))
    """
    layer = slstm_layer(embedding_dim, **options)
    return block(layer, _feedforward_of(feedforward, embedding_dim, options.get("num_blocks", 1)),
                 norm_eps=norm_eps)


def feedforward_block(embedding_dim: int, *, norm_eps: float = 1e-5, **options: Any) -> SequenceModel:
    """A feed-forward alone in a block: ``x + feedforward(layer_norm(x))``; its state is ``()``.

    ``**options`` are those of :func:`jlstm.xlstm.feedforward` (``proj_factor``, ``act_fn``, ``bias``,
    ``dropout``...).

    Example:
      >>> blk = jlstm.xlstm.feedforward_block(8, act_fn="swish")
      >>> state, ys = blk.apply(blk.init(jax.random.key(0), 8), jnp.ones((3, 8)))
      >>> state, ys.shape
      ((), (3, 8))
    """
    return block(feedforward(embedding_dim, **options), norm_eps=norm_eps)
