"""The gated feed-forward layer of xLSTM blocks (the ``xlstm`` package's ``GatedFeedForward``)::

    [g | u] = x W_up (+ b_up),      y = (act(g) ⊙ u) W_down (+ b_down),      then dropout

``W_up`` is ``[E, 2F]`` (gate columns first) and ``W_down`` ``[F, E]``; ``F`` is ``proj_factor · E``
rounded up to a multiple of ``round_to``. The layer keeps no state; in a block it sits behind its own
layer norm and residual (:func:`jlstm.xlstm.block`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import jlstm.xlstm._shared as _shared
from jlstm.core.eager import compiled_apply
from jlstm.core.types import CellConfig, SequenceModel
from jlstm.xlstm._init import small_init, wang_init

__all__ = ["FeedForwardParams", "feedforward"]


class FeedForwardParams(NamedTuple):
    """``w_up`` ``[E, 2F]`` (gate | up), ``b_up`` ``[2F]`` or ``None``, ``w_down`` ``[F, E]``, ``b_down``
    ``[E]`` or ``None``."""

    w_up: jax.Array
    b_up: jax.Array | None
    w_down: jax.Array
    b_down: jax.Array | None


def feedforward(embedding_dim: int, *, proj_factor: float = 1.3, act_fn: str = "gelu", bias: bool = False,
                dropout: float = 0.0, round_to: int = 64, inner_size: int | None = None, num_blocks: int = 1,
                param_dtype: Any = jnp.float32) -> SequenceModel:
    """The gated feed-forward layer (stateless) as a :class:`jlstm.SequenceModel`.

    Args:
      embedding_dim: E, the input and output width.
      proj_factor, round_to: the inner width F is ``proj_factor · E`` rounded up to a multiple of
        ``round_to``; ``inner_size`` sets F directly.
      act_fn: the gate's activation: ``"gelu"`` (exact), ``"relu"``, ``"relu^2"``, ``"sigmoid"``,
        ``"swish"`` or ``"selu"``.
      bias: give both projections a bias.
      dropout: inverted dropout on the output, active when ``apply`` gets a key.
      num_blocks: the number of blocks of the model it sits in (the scale of ``W_down``'s init).
      param_dtype: dtype of the parameters.

    Returns:
      A model whose state is ``()``; ``apply(params, xs, state=None, *, lengths=None, mask=None,
      key=None, time_major=True, resets=None) -> ((), ys)`` with zeros at invalid steps.

    Example:
      >>> ff = jlstm.xlstm.feedforward(16, proj_factor=2.0, round_to=8)
      >>> params = ff.init(jax.random.key(0), 16)
      >>> params.w_up.shape, ff.apply(params, jnp.ones((5, 2, 16)))[1].shape
      ((16, 64), (5, 2, 16))
    """
    where = f"xlstm.feedforward({embedding_dim})"
    _shared.check_size("embedding_dim", embedding_dim)
    _shared.check_option("act_fn", act_fn, _shared.ACTIVATIONS)
    _shared.check_rate("dropout", dropout)
    _shared.check_size("num_blocks", num_blocks)
    E, F = int(embedding_dim), _shared.up_size(embedding_dim, proj_factor, round_to, inner_size, where)
    act = _shared.ACTIVATIONS[act_fn]
    config = CellConfig("xlstm_feedforward", embedding_dim=E, inner_size=F, act_fn=act_fn, bias=bool(bias),
                        dropout=float(dropout), num_blocks=int(num_blocks), param_dtype=jnp.dtype(param_dtype))

    def init(key: jax.Array, input_size: int) -> FeedForwardParams:
        _shared.check_input_size(where, input_size, E)
        k_up, k_down = jax.random.split(key)
        zeros = (lambda n: jnp.zeros((n,), param_dtype)) if bias else (lambda n: None)
        return FeedForwardParams(small_init(k_up, (E, 2 * F), E, param_dtype), zeros(2 * F),
                                 wang_init(k_down, (F, E), E, num_blocks, param_dtype), zeros(E))

    def apply(params: FeedForwardParams, xs, state=None, *, lengths=None, mask=None, key=None, time_major=True,
              resets=None):
        inp = _shared.time_major_inputs(xs, E, lengths, mask, resets, key, time_major, where + ".apply")
        up = inp.xs @ params.w_up + (0 if params.b_up is None else params.b_up)
        y = (act(up[..., :F]) * up[..., F:]) @ params.w_down
        y = y if params.b_down is None else y + params.b_down
        if key is not None and dropout:
            y = _shared.dropout(key, dropout, y)
        return (), _shared.finish(y, inp.valid, time_major)

    return SequenceModel(init=init, apply=compiled_apply(apply, where + ".apply", config),
                         initial_state=lambda params, batch_shape=(): (),
                         output_size=E, name=where, config=config)

