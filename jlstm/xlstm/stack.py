"""A stack of xLSTM blocks with a final layer norm (the ``xlstm`` package's ``xLSTMBlockStack``)."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax

import jlstm
import jlstm.xlstm._shared as _shared
from jlstm.core.eager import compiled_apply
from jlstm.core.types import CellConfig, SequenceModel
from jlstm.xlstm.blocks import mlstm_block, slstm_block
from jlstm.xlstm.norms import LayerNormParams, init_layer_norm, layer_norm

__all__ = ["StackParams", "block_stack", "xlstm_stack"]


class StackParams(NamedTuple):
    """The blocks' params (a tuple, one entry per block) and the post-norm's (``None`` without one)."""

    blocks: tuple
    post_norm: LayerNormParams | None


def block_stack(blocks: Sequence[SequenceModel], *, post_norm: bool = True,
                norm_eps: float = 1e-5) -> SequenceModel:
    """Run ``blocks`` one after the other, then a layer norm (``post_norm``).

    Args:
      blocks: :class:`jlstm.SequenceModel` s of one width E, in order (:func:`mlstm_block`,
        :func:`slstm_block`, :func:`feedforward_block`, any :func:`block`).
      post_norm: end with a layer norm (scale, no bias), as ``xLSTMBlockStack`` does by default.
      norm_eps: its epsilon.

    Returns:
      A model with params :class:`StackParams` and a tuple of the blocks' states:
      ``apply(params, xs, state=None, *, lengths=None, mask=None, key=None, time_major=True,
      resets=None) -> (states, ys)``. It fits :class:`jlstm.train.LanguageModel`, stateful training
      and :func:`jlstm.train.generate`.

    Example:
      >>> E = 16
      >>> stack = jlstm.xlstm.block_stack([jlstm.xlstm.mlstm_block(E, num_heads=2, round_to=16),
      ...                                  jlstm.xlstm.slstm_block(E, num_heads=2)])
      >>> params = stack.init(jax.random.key(0), E)
      >>> states, ys = jax.jit(stack.apply)(params, jnp.ones((7, 3, E)))
      >>> len(states), ys.shape
      (2, (7, 3, 16))
    """
    blocks = tuple(blocks)
    E = _width(blocks)
    name = f"xlstm.block_stack({len(blocks)} blocks)"
    config = CellConfig("xlstm_block_stack", blocks=blocks, post_norm=bool(post_norm), norm_eps=float(norm_eps))

    def init(key: jax.Array, input_size: int) -> StackParams:
        _shared.check_input_size(name, input_size, E)
        ps = tuple(b.init(k, E) for b, k in zip(blocks, jax.random.split(key, len(blocks))))
        return StackParams(ps, init_layer_norm(E, jax.tree.leaves(ps)[0].dtype) if post_norm else None)

    def initial_state(params: StackParams, batch_shape: Any = ()) -> tuple:
        return tuple(b.initial_state(p, batch_shape) for b, p in zip(blocks, params.blocks))

    def apply(params: StackParams, xs, state=None, *, lengths=None, mask=None, key=None, time_major=True,
              resets=None):
        inp = _shared.time_major_inputs(xs, E, lengths, mask, resets, key, time_major, name + ".apply")
        if state is not None and (not isinstance(state, tuple) or len(state) != len(blocks)):
            raise ValueError(f"{name}.apply: state must be a tuple with one state per block ({len(blocks)}), got "
                             f"{type(state).__name__}; build it with initial_state(params, batch_shape).")
        keys = [None] * len(blocks) if key is None else list(jax.random.split(key, len(blocks)))
        extra = {} if inp.resets is None else {"resets": inp.resets}
        finals, x = [], inp.xs
        for k, b in enumerate(blocks):
            final, x = b.apply(params.blocks[k], x, None if state is None else state[k], lengths=lengths,
                               mask=inp.mask, key=keys[k], **extra)
            finals.append(final)
        if params.post_norm is not None:
            x = layer_norm(params.post_norm, x, norm_eps)
        return tuple(finals), _shared.finish(x, inp.valid, time_major)

    return SequenceModel(init=init, apply=compiled_apply(apply, name + ".apply", config),
                         initial_state=initial_state, output_size=E, name=name,
                         config=config)


def _width(blocks: tuple) -> int:
    """The common width of ``blocks``, checked."""
    if not blocks or not all(isinstance(b, SequenceModel) for b in blocks):
        raise TypeError("xlstm.block_stack: blocks must be a non-empty sequence of jlstm.SequenceModel, e.g. "
                        "[jlstm.xlstm.mlstm_block(64), jlstm.xlstm.slstm_block(64)].")
    E = blocks[0].output_size
    for k, b in enumerate(blocks):
        if b.output_size != E:
            raise ValueError(f"xlstm.block_stack: block {k} ({b.name}) writes {b.output_size} features but "
                             f"block 0 writes {E}; the blocks of a stack share one width (their outputs join a "
                             f"residual).")
    return E


def xlstm_stack(embedding_dim: int, num_blocks: int, slstm_at: Sequence[int] = (), *,
                mlstm: dict | None = None, slstm: dict | None = None, post_norm: bool = True) -> SequenceModel:
    """An xLSTM[a:b] stack as ``xLSTMBlockStackConfig`` describes it: ``num_blocks`` blocks, sLSTM blocks at
    the positions ``slstm_at`` and mLSTM blocks elsewhere, then a post-norm.

    Args:
      embedding_dim: E.
      num_blocks: the number of blocks.
      slstm_at: the (0-based) positions of the sLSTM blocks.
      mlstm, slstm: keyword options of :func:`mlstm_block` and :func:`slstm_block`; ``num_blocks``
        and (for the sLSTM) ``block_index`` are filled in.
      post_norm: end with a layer norm.

    Example:
      >>> model = jlstm.xlstm.xlstm_stack(16, 3, slstm_at=[1], mlstm=dict(num_heads=2, round_to=16),
      ...                                 slstm=dict(num_heads=2))
      >>> [b.config.layer.config.kind for b in model.config.blocks]
      ['xlstm_mlstm_layer', 'xlstm_slstm_layer', 'xlstm_mlstm_layer']
    """
    jlstm.batch_tuple(tuple(slstm_at))  # non-negative ints
    if any(k >= num_blocks for k in slstm_at):
        raise ValueError(f"xlstm_stack: slstm_at={list(slstm_at)} names a block past the last of "
                         f"num_blocks={num_blocks} (positions count from 0).")
    blocks = [slstm_block(embedding_dim, **{**(slstm or {}), "num_blocks": num_blocks, "block_index": k})
              if k in slstm_at else mlstm_block(embedding_dim, **{**(mlstm or {}), "num_blocks": num_blocks})
              for k in range(num_blocks)]
    return block_stack(blocks, post_norm=post_norm)
