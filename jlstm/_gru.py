"""The GRU cell in PyTorch's form (gates r, z, n; ``b_hn`` inside the reset product).

Row-vector convention; blocks in the order r, z, n::

    r_t = σ(x_t W_xr + b_xr + h_{t-1} W_hr + b_hr)
    z_t = σ(x_t W_xz + b_xz + h_{t-1} W_hz + b_hz)
    n_t = tanh(x_t W_xn + b_xn + r_t ⊙ (h_{t-1} W_hn + b_hn))
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jlstm import _checks, _initializers
from jlstm._make_cell import make_cell
from jlstm._math import affine, cell_sizes, masked, matmul, output, zeros_state
from jlstm._types import Cell, CellConfig, DTypeLike


class GRUParams(NamedTuple):
    """GRU parameters (public layout): w_x (input, 3H), w_h (H, 3H), b_x (3H), b_h (3H); r, z, n."""

    w_x: jax.Array
    w_h: jax.Array
    b_x: jax.Array
    b_h: jax.Array


class GRUState(NamedTuple):
    """GRU state: ``h`` of shape [*batch, H]."""

    h: jax.Array


def gru(
    hidden_size: int,
    *,
    kernel_init: _initializers.Initializer = _initializers.glorot_uniform,
    recurrent_init: _initializers.Initializer = _initializers.orthogonal,
    bias_init: _initializers.Initializer = _initializers.zeros,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike = jnp.float32,
) -> Cell:
    """Build a GRU cell (PyTorch's ``nn.GRU`` equations, see the module docstring).

    Args:
      hidden_size: number of units H.
      kernel_init, recurrent_init, bias_init: initialisers; recurrent_init per gate block.
      dtype: dtype of the matmuls and outputs; ``None`` follows the inputs.
      param_dtype: dtype of the parameters.

    Returns:
      A :class:`jlstm.Cell` whose ``step(params, state, x)`` returns ``(GRUState, h_t)``.

    Example:
      >>> cell = jlstm.gru(16)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> state, y = cell.step(params, cell.initial_state(params), jnp.ones(4))
    """
    H, dtype, param_dtype = cell_sizes(hidden_size, dtype, param_dtype)
    where = f"gru({H})"
    config = CellConfig(
        "gru",
        hidden_size=H, kernel_init=kernel_init, recurrent_init=recurrent_init, bias_init=bias_init,
        dtype=dtype, param_dtype=param_dtype)

    def init(key: jax.Array, input_size: int) -> GRUParams:
        _checks.check_size("input_size", input_size)
        kx, kh, kb, kc = jax.random.split(key, 4)
        return GRUParams(
            w_x=kernel_init(kx, (input_size, 3 * H), param_dtype),
            w_h=_initializers.per_gate(recurrent_init, kh, H, H, 3, param_dtype),
            b_x=bias_init(kb, (3 * H,), param_dtype),
            b_h=bias_init(kc, (3 * H,), param_dtype),
        )

    def check(params, state=None, x=None, where: str = where) -> None:
        def shapes(n: int) -> dict:
            return {"w_x": (n, 3 * H), "w_h": (H, 3 * H), "b_x": (3 * H,), "b_h": (3 * H,)}

        _checks.check_cell_args(where, params, GRUParams, shapes, state, GRUState, {"h": H}, x)

    def initial_state(params: GRUParams, batch_shape=()) -> GRUState:
        check(params, where=where + ".initial_state")
        return GRUState(h=zeros_state(batch_shape, H, params.w_h, dtype))

    def project(params: GRUParams, x: jax.Array) -> jax.Array:
        return affine(x, params.w_x, params.b_x, dtype)

    def step_projected(params: GRUParams, state: GRUState, xp: jax.Array,
                       recurrent_mask: jax.Array | None = None):
        h = state.h
        h_in = masked(h, recurrent_mask)
        hp = matmul(h_in, params.w_h, dtype) + params.b_h.astype(xp.dtype)
        xr, xz, xn = jnp.split(xp, 3, axis=-1)
        hr, hz, hn = jnp.split(hp, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h_new = (1.0 - z) * n + z * h.astype(n.dtype)
        return GRUState(h=h_new.astype(h.dtype)), output(h_new, dtype)

    return make_cell(init=init, initial_state=initial_state, project=project,
                     step_projected=step_projected, output_size=H, name=where, config=config,
                     check=check)
