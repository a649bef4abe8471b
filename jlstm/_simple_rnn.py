"""The plain (Elman) RNN: ``h_t = act(x_t W_x + h_{t-1} W_h + b)``.

It is the baseline whose vanishing and exploding gradients motivate the LSTM.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jlstm import _checks, _initializers
from jlstm._make_cell import make_cell
from jlstm._math import affine, cell_sizes, masked, matmul, output, zeros_state
from jlstm._types import Cell, CellConfig, DTypeLike


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
    kernel_init: _initializers.Initializer = _initializers.glorot_uniform,
    recurrent_init: _initializers.Initializer = _initializers.orthogonal,
    bias_init: _initializers.Initializer = _initializers.zeros,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike = jnp.float32,
) -> Cell:
    """Build a plain RNN cell ``h_t = activation(x_t W_x + h_{t-1} W_h + b)``.

    Args:
      hidden_size: number of units H.
      activation: elementwise nonlinearity (``jnp.tanh``; ``jax.nn.relu`` for an IRNN).
      kernel_init, recurrent_init, bias_init: initialisers.
      dtype, param_dtype: compute and parameter dtypes.

    Example:
      >>> cell = jlstm.simple_rnn(8)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> state, y = cell.step(params, cell.initial_state(params, (5,)), jnp.ones((5, 2)))
    """
    H, dtype, param_dtype = cell_sizes(hidden_size, dtype, param_dtype)
    if not callable(activation):
        raise TypeError(f"activation must be a function such as jnp.tanh, got {activation!r}.")
    where = f"simple_rnn({H})"
    config = CellConfig(
        "simple_rnn",
        hidden_size=H, activation=activation, kernel_init=kernel_init, recurrent_init=recurrent_init,
        bias_init=bias_init, dtype=dtype, param_dtype=param_dtype)

    def init(key: jax.Array, input_size: int) -> RNNParams:
        _checks.check_size("input_size", input_size)
        kx, kh, kb = jax.random.split(key, 3)
        return RNNParams(w_x=kernel_init(kx, (input_size, H), param_dtype),
                         w_h=_initializers.per_gate(recurrent_init, kh, H, H, 1, param_dtype),
                         b=bias_init(kb, (H,), param_dtype))

    def check(params, state=None, x=None, where: str = where) -> None:
        _checks.check_cell_args(where, params, RNNParams, lambda n: {"w_x": (n, H), "w_h": (H, H), "b": (H,)},
                                state, RNNState, {"h": H}, x)

    def initial_state(params: RNNParams, batch_shape=()) -> RNNState:
        check(params, where=where + ".initial_state")
        return RNNState(h=zeros_state(batch_shape, H, params.w_h, dtype))

    def project(params: RNNParams, x: jax.Array) -> jax.Array:
        return affine(x, params.w_x, params.b, dtype)

    def step_projected(params: RNNParams, state: RNNState, xp: jax.Array,
                       recurrent_mask: jax.Array | None = None):
        h = state.h
        h_in = masked(h, recurrent_mask)
        h_new = activation(xp + matmul(h_in, params.w_h, dtype))
        return RNNState(h=h_new.astype(h.dtype)), output(h_new, dtype)

    return make_cell(init=init, initial_state=initial_state, project=project,
                     step_projected=step_projected, output_size=H, name=where, config=config,
                     check=check)
