"""The layer-normalised LSTM (Ba, Kiros & Hinton 2016), without peepholes.

Row-vector convention; gate blocks i, f, g, o; ``LN(v) = (v - mean(v)) / sqrt(var(v) + eps)``
over the last axis::

    z_t = LN(x_t W_x) ⊙ γ_x + LN(h_{t-1} W_h) ⊙ γ_h + b
    c_t = σ(z_f) ⊙ c_{t-1} + σ(z_i) ⊙ tanh(z_g)
    h_t = σ(z_o) ⊙ tanh(LN(c_t) ⊙ γ_c + β_c)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jlstm.cells import initializers as _initializers
from jlstm.cells.lstm import LSTMState
from jlstm.cells.make_cell import h_output, make_cell
from jlstm.cells.options import CellOptions, Unpack, resolve
from jlstm.core import checks as _checks
from jlstm.core.math import carry_dtype, masked, matmul, output
from jlstm.core.types import Cell, CellConfig, batch_tuple


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
    **options: Unpack[CellOptions],
) -> Cell:
    """Build a layer-normalised LSTM cell (see the module docstring for the equations).

    The state is an :class:`jlstm.LSTMState`; gains start at 1 and ``β_c`` at 0.

    Args:
      hidden_size: number of units H.
      eps: the layer norms' epsilon.
      forget_bias: added to the forget-gate block of the bias at init.
      **options: ``kernel_init`` (of the whole ``w_x``), ``recurrent_init`` (per gate block),
        ``bias_init``, ``dtype`` and ``param_dtype``: see :class:`jlstm.CellOptions`.

    Example:
      >>> cell = jlstm.layer_norm_lstm(32)
      >>> params = cell.init(jax.random.key(0), 8)
    """
    _checks.check_size("hidden_size", hidden_size)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}; the default is 1e-5.")
    opts = resolve("layer_norm_lstm", options)
    cfg = CellConfig("layer_norm_lstm", hidden_size=int(hidden_size), eps=float(eps),
                     forget_bias=float(forget_bias), **opts.config())
    where = f"layer_norm_lstm({cfg.hidden_size})"
    check = functools.partial(_check, cfg, where)
    return make_cell(
        init=functools.partial(_init, cfg), initial_state=functools.partial(_initial_state, cfg, check),
        project=functools.partial(_project, cfg), step_projected=functools.partial(_step_projected, cfg),
        output_size=cfg.hidden_size, name=where, config=cfg, check=check, output_of_state=h_output)


def _init(cfg: CellConfig, key: jax.Array, input_size: int) -> LayerNormLSTMParams:
    _checks.check_size("input_size", input_size)
    H, dt = cfg.hidden_size, cfg.param_dtype
    kx, kh = jax.random.split(key)
    b = _initializers.add_to_slice(cfg.bias_init(kx, (4 * H,), dt), H, 2 * H, cfg.forget_bias)
    return LayerNormLSTMParams(
        w_x=cfg.kernel_init(kx, (input_size, 4 * H), dt),
        w_h=_initializers.per_gate(cfg.recurrent_init, kh, H, H, 4, dt),
        b=b, gamma_x=jnp.ones((4 * H,), dt), gamma_h=jnp.ones((4 * H,), dt),
        gamma_c=jnp.ones((H,), dt), beta_c=jnp.zeros((H,), dt))


def _check(cfg: CellConfig, default_where: str, params, state=None, x=None, where: str | None = None) -> None:
    H = cfg.hidden_size
    _checks.check_cell_args(where or default_where, params, LayerNormLSTMParams, lambda n: {
        "w_x": (n, 4 * H), "w_h": (H, 4 * H), "b": (4 * H,), "gamma_x": (4 * H,),
        "gamma_h": (4 * H,), "gamma_c": (H,), "beta_c": (H,)}, state, LSTMState, {"h": H, "c": H}, x)


def _initial_state(cfg: CellConfig, check, params: LayerNormLSTMParams, batch_shape=()) -> LSTMState:
    check(params, where=f"layer_norm_lstm({cfg.hidden_size}).initial_state")
    shape = batch_tuple(batch_shape) + (cfg.hidden_size,)
    state_dtype = carry_dtype(params.w_h.dtype, cfg.dtype)
    return LSTMState(h=jnp.zeros(shape, state_dtype), c=jnp.zeros(shape, state_dtype))


def _project(cfg: CellConfig, params: LayerNormLSTMParams, x: jax.Array) -> jax.Array:
    zx = _normalise(matmul(x, params.w_x, cfg.dtype), cfg.eps)
    return zx * params.gamma_x.astype(zx.dtype) + params.b.astype(zx.dtype)


def _step_projected(cfg: CellConfig, params: LayerNormLSTMParams, state: LSTMState, xp: jax.Array,
                    recurrent_mask: jax.Array | None = None) -> tuple[LSTMState, jax.Array]:
    h, c = state.h, state.c
    zh = _normalise(matmul(masked(h, recurrent_mask), params.w_h, cfg.dtype), cfg.eps)
    z = xp + zh * params.gamma_h.astype(zh.dtype)
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    c_new = jax.nn.sigmoid(zf) * c.astype(z.dtype) + jax.nn.sigmoid(zi) * jnp.tanh(zg)
    cn = _normalise(c_new, cfg.eps) * params.gamma_c.astype(z.dtype) + params.beta_c.astype(z.dtype)
    h_new = jax.nn.sigmoid(zo) * jnp.tanh(cn)
    return LSTMState(h=h_new.astype(h.dtype), c=c_new.astype(c.dtype)), output(h_new, cfg.dtype)
