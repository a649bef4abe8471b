"""The layer-normalised LSTM (Ba, Kiros & Hinton 2016), without peepholes.

Row-vector convention; gate blocks i, f, g, o; ``LN(v) = (v - mean(v)) / sqrt(var(v) + eps)``
over the last axis::

    z_t = LN(x_t W_x) ⊙ γ_x + LN(h_{t-1} W_h) ⊙ γ_h + b
    c_t = σ(z_f) ⊙ c_{t-1} + σ(z_i) ⊙ tanh(z_g)
    h_t = σ(z_o) ⊙ tanh(LN(c_t) ⊙ γ_c + β_c)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jlstm.cells import initializers as _initializers
from jlstm.cells.lstm import LSTMState
from jlstm.cells.make_cell import make_cell
from jlstm.core import checks as _checks
from jlstm.core.math import carry_dtype, cell_sizes, masked, matmul, output
from jlstm.core.types import Cell, CellConfig, DTypeLike, batch_tuple


class LayerNormLSTMParams(NamedTuple):
    """w_x (input, 4H), w_h (H, 4H), b (4H), gamma_x (4H), gamma_h (4H), gamma_c (H), beta_c (H)."""

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array
    gamma_x: jax.Array
    gamma_h: jax.Array
    gamma_c: jax.Array
    beta_c: jax.Array


def _normalise(v: jax.Array, eps: float) -> jax.Array:
    wide = v.astype(jnp.promote_types(v.dtype, jnp.float32))
    mean = jnp.mean(wide, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(wide - mean), axis=-1, keepdims=True)
    return ((wide - mean) * jax.lax.rsqrt(var + eps)).astype(v.dtype)


def layer_norm_lstm(
    hidden_size: int,
    *,
    eps: float = 1e-5,
    forget_bias: float = 1.0,
    kernel_init: _initializers.Initializer = _initializers.glorot_uniform,
    recurrent_init: _initializers.Initializer = _initializers.orthogonal,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike = jnp.float32,
) -> Cell:
    """Build a layer-normalised LSTM cell (see the module docstring for the equations).

    The state is an :class:`jlstm.LSTMState`; gains start at 1 and ``β_c`` at 0.

    Example:
      >>> cell = jlstm.layer_norm_lstm(32)
      >>> params = cell.init(jax.random.key(0), 8)
    """
    H, dtype, param_dtype = cell_sizes(hidden_size, dtype, param_dtype)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}; the default is 1e-5.")
    where = f"layer_norm_lstm({H})"
    config = CellConfig(
        "layer_norm_lstm",
        hidden_size=H, eps=float(eps), forget_bias=float(forget_bias), kernel_init=kernel_init,
        recurrent_init=recurrent_init, dtype=dtype, param_dtype=param_dtype)

    def init(key: jax.Array, input_size: int) -> LayerNormLSTMParams:
        _checks.check_size("input_size", input_size)
        kx, kh = jax.random.split(key)
        b = _initializers.add_to_slice(_initializers.zeros(kx, (4 * H,), param_dtype), H, 2 * H, forget_bias)
        return LayerNormLSTMParams(
            w_x=kernel_init(kx, (input_size, 4 * H), param_dtype),
            w_h=_initializers.per_gate(recurrent_init, kh, H, H, 4, param_dtype),
            b=b,
            gamma_x=jnp.ones((4 * H,), param_dtype),
            gamma_h=jnp.ones((4 * H,), param_dtype),
            gamma_c=jnp.ones((H,), param_dtype),
            beta_c=jnp.zeros((H,), param_dtype),
        )

    def check(params, state=None, x=None, where: str = where) -> None:
        _checks.check_cell_args(where, params, LayerNormLSTMParams, lambda n: {
            "w_x": (n, 4 * H), "w_h": (H, 4 * H), "b": (4 * H,), "gamma_x": (4 * H,),
            "gamma_h": (4 * H,), "gamma_c": (H,), "beta_c": (H,)},
                                state, LSTMState, {"h": H, "c": H}, x)

    def initial_state(params: LayerNormLSTMParams, batch_shape=()) -> LSTMState:
        check(params, where=where + ".initial_state")
        shape = batch_tuple(batch_shape) + (H,)
        state_dtype = carry_dtype(params.w_h.dtype, dtype)
        return LSTMState(h=jnp.zeros(shape, state_dtype), c=jnp.zeros(shape, state_dtype))

    def project(params: LayerNormLSTMParams, x: jax.Array) -> jax.Array:
        zx = _normalise(matmul(x, params.w_x, dtype), eps)
        return zx * params.gamma_x.astype(zx.dtype) + params.b.astype(zx.dtype)

    def step_projected(params: LayerNormLSTMParams, state: LSTMState, xp: jax.Array,
                       recurrent_mask: jax.Array | None = None):
        h, c = state.h, state.c
        h_in = masked(h, recurrent_mask)
        zh = _normalise(matmul(h_in, params.w_h, dtype), eps)
        z = xp + zh * params.gamma_h.astype(zh.dtype)
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        c_new = jax.nn.sigmoid(zf) * c.astype(z.dtype) + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        cn = _normalise(c_new, eps) * params.gamma_c.astype(z.dtype) + params.beta_c.astype(z.dtype)
        h_new = jax.nn.sigmoid(zo) * jnp.tanh(cn)
        return LSTMState(h=h_new.astype(h.dtype), c=c_new.astype(c.dtype)), output(h_new, dtype)

    return make_cell(init=init, initial_state=initial_state, project=project,
                     step_projected=step_projected, output_size=H, name=where, config=config,
                     check=check)
