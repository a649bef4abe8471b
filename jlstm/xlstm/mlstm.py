"""The mLSTM layer of xLSTM (the ``xlstm`` package's ``mLSTMLayer``), time-major.

With inner width ``I`` (``proj_factor · E`` rounded up), ``NH`` heads of ``d = I / NH`` units::

    [x_m | z] = x W_up                          up-projection, two branches of width I
    c = silu(conv(x_m))                         causal depthwise conv (its window is state)
    q, k = headwise(c), v = headwise(x_m)       block-diagonal projections, blocks of qkv_proj_blocksize
    [ĩ | f̃] = [q | k | v] W_g + b_g             one input and one forget pre-activation per head
    h = mLSTM(q, k, v, ĩ, f̃)                    jlstm.mlstm_core: parallel, chunkwise or sequential
    y = ((norm_heads(h) + s ⊙ c) ⊙ silu(z)) W_down      then dropout

``norm_heads`` normalises each head on its own (:func:`jlstm.xlstm.multihead_norm`) and ``s`` is
the learnable skip. The recurrence runs through :func:`jlstm.scan` on a cell whose input is
``[q | k | v | ĩ | f̃]`` and whose state is a :class:`jlstm.MLSTMState`, so ``method`` picks the
form and lengths, masks and remat behave as for every jlstm cell.
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
from jlstm.xlstm._init import small_init, wang_init
from jlstm.xlstm.conv import ConvParams, causal_conv, empty_window, init_conv
from jlstm.xlstm.norms import multihead_norm

__all__ = ["MLSTMLayerParams", "MLSTMLayerState", "mlstm_layer"]


class MLSTMLayerParams(NamedTuple):
    """Params of :func:`mlstm_layer` (row-vector convention, ``y = x W + b``).

    Attributes:
      w_up: ``[E, 2I]``, the mLSTM branch's columns first, then the output gate's (z).
      b_up: ``[2I]`` or ``None``.
      conv: the causal conv over the mLSTM branch (:class:`ConvParams`, ``w [K, I]``), or ``None``
        without one (``conv1d_kernel_size=0``).
      w_q, w_k, w_v: block-diagonal projections ``[I / bs, bs, bs]`` (bs: ``qkv_proj_blocksize``).
      b_q, b_k, b_v: ``[I]`` or ``None``.
      w_gates: ``[3I, 2·NH]`` from ``[q | k | v]`` to the input-gate (first NH columns) and the
        forget-gate pre-activations.
      b_gates: ``[2·NH]``.
      norm_scale: ``[I]``, the scale of the per-head norm of the mLSTM's output.
      skip: ``[I]``, the learnable skip from the conv branch.
      w_down: ``[I, E]``; b_down: ``[E]`` or ``None``.
    """

    w_up: jax.Array
    b_up: jax.Array | None
    conv: ConvParams | None
    w_q: jax.Array
    w_k: jax.Array
    w_v: jax.Array
    b_q: jax.Array | None
    b_k: jax.Array | None
    b_v: jax.Array | None
    w_gates: jax.Array
    b_gates: jax.Array
    norm_scale: jax.Array
    skip: jax.Array
    w_down: jax.Array
    b_down: jax.Array | None


class MLSTMLayerState(NamedTuple):
    """The conv's window ``[*batch, K-1, I]`` (the last inputs of the mLSTM branch) and the
    :class:`jlstm.MLSTMState` of the cell."""

    conv: jax.Array
    cell: jlstm.MLSTMState


def mlstm_layer(embedding_dim: int, *, num_heads: int = 4, proj_factor: float = 2.0, round_to: int = 64,
                inner_size: int | None = None, conv1d_kernel_size: int = 4, qkv_proj_blocksize: int = 4,
                bias: bool = False, dropout: float = 0.0, method: Any = "auto", chunk_size: int = 64,
                parallel_max_length: int = 64, eps: float = 1e-6, norm_eps: float = 1e-5, num_blocks: int = 1,
                remat: Any = None, unroll: Any = None, param_dtype: Any = jnp.float32) -> SequenceModel:
    """The mLSTM layer (equations in the module docstring) as a :class:`jlstm.SequenceModel`.

    Args:
      embedding_dim: E, the input and output width.
      num_heads: NH, the mLSTM's heads; must divide the inner width I.
      proj_factor, round_to: I is ``proj_factor · E`` rounded up to a multiple of ``round_to``
        (the ``xlstm`` package's rule); ``inner_size`` sets I directly.
      conv1d_kernel_size: K of the causal conv (0: none).
      qkv_proj_blocksize: the block size of the block-diagonal q, k, v projections.
      bias: biases on the up, q, k, v and down projections (the gates always have one).
      dropout: inverted dropout on the output, active when ``apply`` gets a key.
      method: the mLSTM's form for :func:`jlstm.scan`: ``"auto"`` (parallel up to
        ``parallel_max_length`` steps, then chunkwise), ``"parallel"``, ``"chunkwise"`` or
        ``"sequential"``. All give the same values.
      chunk_size: the chunk length of the chunkwise form.
      eps: the mLSTM's normaliser epsilon; norm_eps: the head norm's.
      num_blocks: blocks in the model this layer sits in (the scale of ``W_down``'s init).
      remat: ``None``, ``"block"`` (recompute the whole layer in the backward pass) or a
        :func:`jlstm.scan` policy for the recurrence (``"step"``, ``"segment"``, an int).
      unroll: passed to :func:`jlstm.scan`.
      param_dtype: dtype of the parameters.

    Returns:
      A model with params :class:`MLSTMLayerParams` and state :class:`MLSTMLayerState`:
      ``apply(params, xs, state=None, *, lengths=None, mask=None, key=None, time_major=True,
      resets=None) -> (state, ys)``. Two chunks run one after the other, the second from the
      first's state, give the outputs and state of one call.

    Example:
      >>> layer = jlstm.xlstm.mlstm_layer(16, num_heads=2, round_to=16)
      >>> params = layer.init(jax.random.key(0), 16)
      >>> apply = jax.jit(layer.apply)
      >>> xs = jax.random.normal(jax.random.key(1), (12, 3, 16))
      >>> state, ys = apply(params, xs)
      >>> s1, y1 = apply(params, xs[:6])
      >>> s2, y2 = apply(params, xs[6:], s1)
      >>> ys.shape, state.conv.shape, bool(jnp.allclose(jnp.concatenate([y1, y2]), ys, atol=1e-5))
      ((12, 3, 16), (3, 3, 32), True)
    """
    where = f"xlstm.mlstm_layer({embedding_dim}, num_heads={num_heads})"
    cfg = _config(where, embedding_dim, num_heads, proj_factor, round_to, inner_size, conv1d_kernel_size,
                  qkv_proj_blocksize, bias, dropout, method, chunk_size, parallel_max_length, eps, norm_eps,
                  num_blocks, remat, unroll, param_dtype)
    return SequenceModel(init=functools.partial(_init, cfg),
                         apply=compiled_apply(functools.partial(_apply, cfg), where + ".apply", cfg),
                         initial_state=functools.partial(_initial_state, cfg), output_size=cfg.embedding_dim,
                         name=where, config=cfg)


def _config(where, E, NH, proj_factor, round_to, inner_size, K, bs, bias, dropout, method, chunk_size,
            parallel_max_length, eps, norm_eps, num_blocks, remat, unroll, param_dtype) -> CellConfig:
    for name, value in (("embedding_dim", E), ("num_heads", NH), ("qkv_proj_blocksize", bs),
                        ("chunk_size", chunk_size), ("num_blocks", num_blocks)):
        _shared.check_size(name, value)
    _shared.check_size("conv1d_kernel_size", K, minimum=0)
    _shared.check_rate("dropout", dropout)
    _shared.check_remat(remat, where)
    inner = _shared.up_size(E, proj_factor, round_to, inner_size, where)
    for name, value in (("num_heads", NH), ("qkv_proj_blocksize", bs)):
        if inner % value:
            raise ValueError(f"{where}: the inner width I={inner} (proj_factor·E rounded up to round_to) is not "
                             f"a multiple of {name}={value}; pick a {name} that divides it, or set inner_size.")
    return CellConfig("xlstm_mlstm_layer", embedding_dim=int(E), num_heads=int(NH), inner_size=inner,
                      conv1d_kernel_size=int(K), qkv_proj_blocksize=int(bs), bias=bool(bias),
                      dropout=float(dropout),
                      method=method, remat=remat, unroll=unroll, num_blocks=int(num_blocks),
                      param_dtype=jnp.dtype(param_dtype), norm_eps=float(norm_eps), where=where,
                      core=_core(inner, int(NH), int(chunk_size), int(parallel_max_length), float(eps)))


def _core(inner: int, heads: int, chunk_size: int, parallel_max_length: int, eps: float) -> jlstm.Cell:
    """The mLSTM recurrence as a cell: input ``[q | k | v | ĩ | f̃]`` (width 3I + 2NH), no params."""
    cfg = CellConfig("xlstm_mlstm_core", inner_size=inner, num_heads=heads, chunk_size=chunk_size,
                     parallel_max_length=parallel_max_length, eps=eps)

    def run(method: str, params, xs, state, valid, unroll=1, resets=None, size=None):
        lead, d = xs.shape[:-1], inner // heads
        q, k, v = (xs[..., j * inner:(j + 1) * inner].reshape(lead + (heads, d)) for j in range(3))
        i_pre, f_pre = xs[..., 3 * inner:3 * inner + heads], xs[..., 3 * inner + heads:]
        h, final = jlstm.mlstm_core(q, k, v, i_pre, f_pre, method=method, chunk_size=size or chunk_size, eps=eps,
                                    valid=valid, state=state, return_state=True, unroll=unroll, resets=resets)
        return final, h.reshape(lead + (inner,))

    def step(params, state, x, recurrent_mask=None):
        final, h = run("sequential", params, x[None], state, None)
        return final, h[0]

    def form(method: str):
        def whole(params, xs, state, valid, *, unroll=1, remat=None, resets=None, chunk_size=None):
            body = functools.partial(run, method, unroll=unroll, resets=resets, size=chunk_size)
            return (jax.checkpoint(body) if remat else body)(params, xs, state, valid)

        return whole

    return jlstm.make_cell(
        init=lambda key, input_size: (), project=lambda params, x: x, step_projected=step,
        initial_state=lambda params, batch_shape=(): zero_cell_state(
            jlstm.batch_tuple(batch_shape), heads, inner // heads, jnp.float32),
        output_size=inner, name=f"xlstm.mlstm_core({inner}, num_heads={heads})", config=cfg,
        methods=(("parallel", form("parallel")), ("chunkwise", form("chunkwise"))),
        auto_method=lambda T: "parallel" if T <= parallel_max_length else "chunkwise")


def zero_cell_state(batch: tuple[int, ...], heads: int, d: int, dtype: Any) -> jlstm.MLSTMState:
    """The mLSTM's zero state (``m`` at its "no memory yet" value): ``mlstm_core``'s own, read off a
    call over no steps."""
    none = jnp.zeros((0,) + batch + (heads, d), dtype)
    _, state = jlstm.mlstm_core(none, none, none, none[..., 0], none[..., 0], return_state=True)
    return state


def _init(cfg: CellConfig, key: jax.Array, input_size: int) -> MLSTMLayerParams:
    E, I, NH, K, bs = (cfg.embedding_dim, cfg.inner_size, cfg.num_heads, cfg.conv1d_kernel_size,
                       cfg.qkv_proj_blocksize)
    _shared.check_input_size(cfg.where, input_size, E)
    dt = cfg.param_dtype
    ks = jax.random.split(key, 7)
    zeros = (lambda n: jnp.zeros((n,), dt)) if cfg.bias else (lambda n: None)
    b_gates = jnp.concatenate([0.1 * jax.random.normal(ks[5], (NH,), dt), jnp.linspace(3.0, 6.0, NH, dtype=dt)])
    return MLSTMLayerParams(
        w_up=small_init(ks[0], (E, 2 * I), E, dt), b_up=zeros(2 * I),
        conv=init_conv(ks[1], K, I, dt) if K else None,
        w_q=small_init(ks[2], (I // bs, bs, bs), E, dt), w_k=small_init(ks[3], (I // bs, bs, bs), E, dt),
        w_v=small_init(ks[4], (I // bs, bs, bs), E, dt), b_q=zeros(I), b_k=zeros(I), b_v=zeros(I),
        w_gates=jnp.zeros((3 * I, 2 * NH), dt), b_gates=b_gates,
        norm_scale=jnp.ones((I,), dt), skip=jnp.ones((I,), dt),
        w_down=wang_init(ks[6], (I, E), E, cfg.num_blocks, dt), b_down=zeros(E))


def _initial_state(cfg: CellConfig, params: MLSTMLayerParams, batch_shape: Any = ()) -> MLSTMLayerState:
    batch, dt = jlstm.batch_tuple(batch_shape), params.w_up.dtype
    return MLSTMLayerState(empty_window(batch, cfg.conv1d_kernel_size, cfg.inner_size, dt),
                           zero_cell_state(batch, cfg.num_heads, cfg.inner_size // cfg.num_heads,
                                           jnp.promote_types(dt, jnp.float32)))


def _check_state(cfg: CellConfig, state: Any, batch: tuple[int, ...], where: str) -> None:
    if not isinstance(state, MLSTMLayerState):
        raise TypeError(f"{where}: state must be an MLSTMLayerState (from initial_state or a previous call), "
                        f"got {type(state).__name__}.")
    want = batch + (max(cfg.conv1d_kernel_size - 1, 0), cfg.inner_size)
    if tuple(state.conv.shape) != want:
        raise ValueError(f"{where}: state.conv has shape {tuple(state.conv.shape)}, expected {want} (batch "
                         f"{batch}, the last K-1 inputs of width I); build it with "
                         f"initial_state(params, {batch}).")


def _apply(cfg: CellConfig, params: MLSTMLayerParams, xs, state=None, *, lengths=None, mask=None, key=None,
           time_major=True, resets=None):
    where = cfg.where + ".apply"
    inp = _shared.time_major_inputs(xs, cfg.embedding_dim, lengths, mask, resets, key, time_major, where)
    batch = tuple(inp.xs.shape[1:-1])
    if state is None:
        state = _initial_state(cfg, params, batch)
    _check_state(cfg, state, batch, where)

    def forward(params, xs, state):
        return _forward(cfg, params, xs, state, inp, lengths, where)

    final, y = (jax.checkpoint(forward) if cfg.remat == "block" else forward)(params, inp.xs, state)
    if key is not None and cfg.dropout:
        y = _shared.dropout(key, cfg.dropout, y)
    return final, _shared.finish(y, inp.valid, time_major)


def _forward(cfg: CellConfig, p: MLSTMLayerParams, xs: jax.Array, state: MLSTMLayerState, inp: _shared.Inputs,
             lengths: Any, where: str) -> tuple[MLSTMLayerState, jax.Array]:
    I, NH = cfg.inner_size, cfg.num_heads

    def bias(y, b):
        return y if b is None else y + b

    up = bias(xs @ p.w_up, p.b_up)
    x_m, z = up[..., :I], up[..., I:]
    window = state.conv
    if p.conv is not None:
        x_m_conv, window = causal_conv(p.conv, x_m, state.conv, inp.valid, inp.resets)
    else:
        x_m_conv = x_m
    c = jax.nn.silu(x_m_conv)
    qkv = jnp.concatenate([bias(_shared.headwise(c, p.w_q), p.b_q), bias(_shared.headwise(c, p.w_k), p.b_k),
                           bias(_shared.headwise(x_m, p.w_v), p.b_v)], axis=-1)
    core_in = jnp.concatenate([qkv, qkv @ p.w_gates + p.b_gates], axis=-1)
    remat = None if cfg.remat == "block" else cfg.remat
    cell_state, h = _shared.scan(cfg.core, (), core_in, state.cell, lengths=lengths, mask=inp.mask,
                                 resets=inp.resets, method=cfg.method, remat=remat, unroll=cfg.unroll, where=where)
    h = (multihead_norm(h, p.norm_scale, NH, cfg.norm_eps) + p.skip * c) * jax.nn.silu(z)
    return MLSTMLayerState(window, cell_state), bias(h @ p.w_down, p.b_down)
