"""The sLSTM layer of xLSTM (the ``xlstm`` package's ``sLSTMLayer``), time-major.

With ``NH`` heads of ``d = E / NH`` units, a causal conv whose output feeds the input and forget
gates, and the other two gates reading the input itself::

    c = silu(conv(x))                                   (c = x without a conv)
    ĩ, f̃ = headwise(c),   z̃, õ = headwise(x)           block-diagonal, one d×d block per head and gate
    h = sLSTM(ĩ, f̃, z̃, õ)                               jlstm.slstm's recurrence (R block-diagonal, bias b)
    y = norm_heads(dropout(h))                          per-head norm, scale (and bias)

The recurrence is :func:`jlstm.slstm`'s (``headwise_input=True``) run by :func:`jlstm.scan` on the
pre-activations, so its params are a :class:`jlstm.SLSTMParams` whose ``w_x [NH, d, 4d]`` holds,
per head, the columns of the gates i, f (applied to ``c``) and z, o (applied to ``x``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import jlstm
import jlstm.xlstm._shared as _shared
from jlstm.core.eager import compiled_apply
from jlstm.core.types import CellConfig, SequenceModel
from jlstm.xlstm._init import small_init
from jlstm.xlstm.conv import ConvParams, causal_conv, empty_window, init_conv
from jlstm.xlstm.norms import multihead_norm

__all__ = ["BIAS_INITS", "SLSTMLayerParams", "SLSTMLayerState", "slstm_layer"]

BIAS_INITS = ("powerlaw_blockdependent", "small_init", "standard", "zeros")
"""The sLSTM bias initialisations of the ``xlstm`` package (its ``sLSTMCellConfig.bias_init``)."""


class SLSTMLayerParams(NamedTuple):
    """Params of :func:`slstm_layer`.

    Attributes:
      conv: the causal conv (``w [K, E]``), or ``None`` without one.
      cell: the :class:`jlstm.SLSTMParams`: ``w_x [NH, d, 4d]`` (per head, columns i | f | z | o;
        i and f read the conv's output), ``r [NH, d, 4d]``, ``b [4E]`` (gate-major).
      norm_scale: ``[E]``; norm_bias: ``[E]`` or ``None``: the per-head output norm.
    """

    conv: ConvParams | None
    cell: jlstm.SLSTMParams
    norm_scale: jax.Array
    norm_bias: jax.Array | None


class SLSTMLayerState(NamedTuple):
    """The conv's window ``[*batch, K-1, E]`` and the :class:`jlstm.SLSTMState` of the cell."""

    conv: jax.Array
    cell: jlstm.SLSTMState


def slstm_layer(embedding_dim: int, *, num_heads: int = 4, conv1d_kernel_size: int = 4,
                bias_init: str = "powerlaw_blockdependent", recurrent_init: str = "zeros", dropout: float = 0.0,
                norm_eps: float = 1e-5, norm_bias: bool = False, block_index: int = 0, num_blocks: int = 1,
                method: Any = "auto", remat: Any = None, unroll: Any = None,
                param_dtype: Any = jnp.float32) -> SequenceModel:
    """The sLSTM layer (equations in the module docstring) as a :class:`jlstm.SequenceModel`.

    Args:
      embedding_dim: E, the input and output width; a multiple of ``num_heads``.
      num_heads: NH, the heads of the block-diagonal input and recurrent weights.
      conv1d_kernel_size: K of the causal conv feeding the i and f gates (0: none).
      bias_init: ``"powerlaw_blockdependent"`` (forget biases from 5 down to -7 along each head, on
        a power law that depends on ``block_index / (num_blocks - 1)``), ``"small_init"`` (forget
        biases 3 to 6), ``"standard"`` (uniform ±1/√E) or ``"zeros"``; other gates' biases are 0.
      recurrent_init: ``"zeros"`` or ``"standard"`` (uniform ±1/√E).
      dropout: inverted dropout on the cell's output, before the norm; active with a key.
      norm_eps, norm_bias: the output norm's epsilon and whether it has a bias.
      block_index, num_blocks: where the layer sits in its model (for ``bias_init``).
      method, remat, unroll: for :func:`jlstm.scan` (``remat="block"`` recomputes the whole layer).
      param_dtype: dtype of the parameters.

    Returns:
      A model with params :class:`SLSTMLayerParams` and state :class:`SLSTMLayerState`:
      ``apply(params, xs, state=None, *, lengths=None, mask=None, key=None, time_major=True,
      resets=None) -> (state, ys)``.

    Example:
      >>> layer = jlstm.xlstm.slstm_layer(8, num_heads=2)
      >>> params = layer.init(jax.random.key(0), 8)
      >>> apply = jax.jit(layer.apply)
      >>> state, ys = apply(params, jnp.ones((6, 3, 8)), lengths=jnp.array([6, 2, 0]))
      >>> ys.shape, state.conv.shape, state.cell.h.shape
      ((6, 3, 8), (3, 3, 8), (3, 8))
    """
    where = f"xlstm.slstm_layer({embedding_dim}, num_heads={num_heads})"
    for name, value in (("embedding_dim", embedding_dim), ("num_heads", num_heads), ("num_blocks", num_blocks)):
        _shared.check_size(name, value)
    _shared.check_size("conv1d_kernel_size", conv1d_kernel_size, minimum=0)
    _shared.check_size("block_index", block_index, minimum=0)
    _shared.check_option("bias_init", bias_init, BIAS_INITS)
    _shared.check_option("recurrent_init", recurrent_init, ("zeros", "standard"))
    _shared.check_rate("dropout", dropout)
    _shared.check_remat(remat, where)
    if embedding_dim % num_heads:
        raise ValueError(f"{where}: embedding_dim={embedding_dim} is not a multiple of num_heads={num_heads}; "
                         f"each head holds embedding_dim / num_heads units.")
    base = jlstm.slstm(embedding_dim, num_heads=num_heads, headwise_input=True)
    assert base.fast is not None and base.fast.step_projected is not None  # a make_cell cell
    core = jlstm.make_cell(init=base.init, initial_state=base.initial_state, project=lambda p, x: x + p.b,
                           step_projected=base.fast.step_projected, output_size=int(embedding_dim),
                           name=f"xlstm.slstm_core({embedding_dim})",
                           config=CellConfig("xlstm_slstm_core", base=base))
    cfg = CellConfig("xlstm_slstm_layer", embedding_dim=int(embedding_dim), num_heads=int(num_heads),
                     conv1d_kernel_size=int(conv1d_kernel_size), bias_init=bias_init, dropout=float(dropout),
                     recurrent_init=recurrent_init, norm_eps=float(norm_eps), norm_bias=bool(norm_bias),
                     block_index=int(block_index), num_blocks=int(num_blocks), method=method, remat=remat,
                     unroll=unroll, param_dtype=jnp.dtype(param_dtype), where=where, core=core)
    return SequenceModel(init=functools.partial(_init, cfg), initial_state=functools.partial(_initial_state, cfg),
                         apply=compiled_apply(functools.partial(_apply, cfg), where + ".apply", cfg),
                         output_size=int(embedding_dim), name=where, config=cfg)


def _bias(cfg: CellConfig, key: jax.Array) -> jax.Array:
    """The gate-major bias ``[4E]`` of ``bias_init``."""
    E, NH, dt = cfg.embedding_dim, cfg.num_heads, cfg.param_dtype
    d = E // NH
    if cfg.bias_init == "standard":
        return jax.random.uniform(key, (4 * E,), dt, -1.0 / E ** 0.5, 1.0 / E ** 0.5)
    if cfg.bias_init == "powerlaw_blockdependent":
        ratio = cfg.block_index / (cfg.num_blocks - 1) if cfg.num_blocks > 1 else 0.0
        forget = 5.0 - 12.0 * (jnp.arange(d, dtype=dt) / max(d - 1, 1)) ** (0.3 + 1.3 * ratio)
    elif cfg.bias_init == "small_init":
        forget = jnp.linspace(3.0, 6.0, d, dtype=dt)
    else:
        forget = jnp.zeros((d,), dt)
    zeros = jnp.zeros((NH * d,), dt)
    return jnp.concatenate([zeros, jnp.tile(forget, NH), zeros, zeros])


def _init(cfg: CellConfig, key: jax.Array, input_size: int) -> SLSTMLayerParams:
    E, NH, K, dt = cfg.embedding_dim, cfg.num_heads, cfg.conv1d_kernel_size, cfg.param_dtype
    _shared.check_input_size(cfg.where, input_size, E)
    d = E // NH
    k_conv, k_w, k_r, k_b = jax.random.split(key, 4)
    if cfg.recurrent_init == "zeros":
        r = jnp.zeros((NH, d, 4 * d), dt)
    else:
        r = jax.random.uniform(k_r, (NH, d, 4 * d), dt, -1.0 / E ** 0.5, 1.0 / E ** 0.5)
    cell = jlstm.SLSTMParams(w_x=small_init(k_w, (NH, d, 4 * d), E, dt), w_h=r, b=_bias(cfg, k_b))
    return SLSTMLayerParams(conv=init_conv(k_conv, K, E, dt) if K else None, cell=cell,
                            norm_scale=jnp.ones((E,), dt),
                            norm_bias=jnp.zeros((E,), dt) if cfg.norm_bias else None)


def _initial_state(cfg: CellConfig, params: SLSTMLayerParams, batch_shape: Any = ()) -> SLSTMLayerState:
    batch = jlstm.batch_tuple(batch_shape)
    return SLSTMLayerState(empty_window(batch, cfg.conv1d_kernel_size, cfg.embedding_dim, params.cell.w_x.dtype),
                           cfg.core.initial_state(params.cell, batch))


def preactivations(w_x: jax.Array, c: jax.Array, x: jax.Array) -> jax.Array:
    """The gate pre-activations ``[..., 4E]`` (gate-major, head-major in a gate, no bias): i and f from
    ``c``, z and o from ``x``, through the head-wise ``w_x [NH, d, 4d]``."""
    NH, d = w_x.shape[0], w_x.shape[1]
    lead = x.shape[:-1]
    p_if = _shared.headwise(c, w_x[..., :2 * d]).reshape(lead + (NH, 2, d))
    p_zo = _shared.headwise(x, w_x[..., 2 * d:]).reshape(lead + (NH, 2, d))
    return jnp.swapaxes(jnp.concatenate([p_if, p_zo], axis=-2), -3, -2).reshape(lead + (4 * NH * d,))


def _apply(cfg: CellConfig, params: SLSTMLayerParams, xs, state=None, *, lengths=None, mask=None, key=None,
           time_major=True, resets=None):
    where = cfg.where + ".apply"
    inp = _shared.time_major_inputs(xs, cfg.embedding_dim, lengths, mask, resets, key, time_major, where)
    batch = tuple(inp.xs.shape[1:-1])
    state = _initial_state(cfg, params, batch) if state is None else state
    if not isinstance(state, SLSTMLayerState):
        raise TypeError(f"{where}: state must be an SLSTMLayerState (from initial_state or a previous call), got "
                        f"{type(state).__name__}.")

    def forward(params: SLSTMLayerParams, xs: jax.Array, state: SLSTMLayerState):
        window, c = state.conv, xs
        if params.conv is not None:
            c, window = causal_conv(params.conv, xs, state.conv, inp.valid, inp.resets)
            c = jax.nn.silu(c)
        cell_state, h = _shared.scan(cfg.core, params.cell, preactivations(params.cell.w_x, c, xs), state.cell,
                                     lengths=lengths, mask=inp.mask, resets=inp.resets, method=cfg.method,
                                     remat=None if cfg.remat == "block" else cfg.remat, unroll=cfg.unroll,
                                     where=where)
        if key is not None and cfg.dropout:
            h = _shared.dropout(key, cfg.dropout, h)
        y = multihead_norm(h, params.norm_scale, cfg.num_heads, cfg.norm_eps, params.norm_bias)
        return SLSTMLayerState(window, cell_state), y

    final, y = (jax.checkpoint(forward) if cfg.remat == "block" else forward)(params, inp.xs, state)
    return final, _shared.finish(y, inp.valid, time_major)
