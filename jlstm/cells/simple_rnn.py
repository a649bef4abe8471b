"""The plain (Elman) RNN: ``h_t = act(x_t W_x + h_{t-1} W_h + b)``.

It is the baseline whose vanishing and exploding gradients motivate the LSTM.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jlstm.cells.decouple import recurrent_matmul
from jlstm.cells.options import CellOptions, Unpack
from jlstm.cells.simple_cell import SimpleCell
from jlstm.cells.state_box import hull_box
from jlstm.core.math import masked, output
from jlstm.core.types import Cell


class RNNParams(NamedTuple):
    """Plain RNN parameters: w_x (input, H), w_h (H, H), b (H)."""

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array


class RNNState(NamedTuple):
    """Plain RNN state: ``h`` of shape [*batch, H]."""

    h: jax.Array


def simple_rnn(
    hidden_size: int,
    *,
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
    **options: Unpack[CellOptions],
) -> Cell:
    """Build a plain RNN cell ``h_t = activation(x_t W_x + h_{t-1} W_h + b)``.

    Args:
      hidden_size: number of units H.
      activation: elementwise nonlinearity (``jnp.tanh``; ``jax.nn.relu`` for an IRNN).
      **options: ``kernel_init``, ``recurrent_init``, ``bias_init``, ``dtype`` and
        ``param_dtype``: see :class:`jlstm.CellOptions`.

    Example:
      >>> cell = jlstm.simple_rnn(8)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> state, y = cell.step(params, cell.initial_state(params, (5,)), jnp.ones((5, 2)))
    """
    parts = SimpleCell.build("simple_rnn", hidden_size, options, RNNParams, RNNState, blocks=1)
    if not callable(activation):
        raise TypeError(f"activation must be a function such as jnp.tanh, got {activation!r}.")
    dtype = parts.dtype

    def step_projected(params: RNNParams, state: RNNState, xp: jax.Array,
                       recurrent_mask: jax.Array | None = None, *, decoupled: bool = False):
        h = state.h
        h_in = masked(h, recurrent_mask)
        h_new = activation(xp + recurrent_matmul(h_in, params.w_h, dtype, blocks=1, decoupled=decoupled))
        return RNNState(h=h_new.astype(h.dtype)), output(h_new, dtype)

    box = hull_box(h=1.0) if activation is jnp.tanh else None        # tanh's range; other activations: unbounded
    decoupled = functools.partial(step_projected, decoupled=True)
    return parts.cell(step_projected, decoupled, box, activation=activation)
