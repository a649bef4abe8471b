"""The mLSTM of xLSTM (Beck et al. 2024): a matrix memory per head, in three forms.

Per head (head size d), with ``k̂ = k/√d``, a log-sigmoid forget gate and an exponential
input gate, the recurrence is stabilised by a log-space scalar ``m``::

    m_t = max(log σ(f̃_t) + m_{t-1}, ĩ_t)
    f_t = exp(log σ(f̃_t) + m_{t-1} − m_t),   i_t = exp(ĩ_t − m_t)
    C_t = f_t C_{t-1} + i_t k̂_t v_tᵀ          (C[i, j]: key index i, value index j)
    n_t = f_t n_{t-1} + i_t k̂_t
    h̃_t = C_tᵀ q_t / (max(|q_tᵀ n_t|, exp(−m_t)) + eps)

The same function has a fully parallel form (an O(T²) decay-masked matrix, each row
stabilised by its max ``m_t``) and a chunkwise form (that parallel form inside chunks of L
steps, with C, n and m carried between chunks: O(T·L)). All three use the same ``m_t``, so
they agree to rounding, eps term included. This is what the ``xlstm`` package's
``parallel_stabilized_simple`` computes.

The zero state holds ``m = -1e30`` ("no memory yet", a finite stand-in for −∞): with it the
recurrent form's ``m_t`` equals the parallel form's row max exactly, and no ``inf − inf``
appears in the values or the gradients.

The cell (:func:`mlstm`) adds the paper's projections and output gate:
``q, k, v = x W_q, x W_k, x W_v``, ``ĩ, f̃ = x w_i, x w_f`` (one scalar per head),
``o = σ(x W_o)`` and ``y_t = o_t ⊙ h̃_t`` (heads concatenated). Its gates read only ``x``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from jlstm.cells.make_cell import make_cell
from jlstm.cells.options import MinCellOptions, Unpack, resolve
from jlstm.core import checks as _checks
from jlstm.core import eager
from jlstm.core.loop import time_loop
from jlstm.core.math import carry_dtype, matmul, output
from jlstm.core.time import join_blocks, split_blocks
from jlstm.core.types import BatchShape, Cell, CellConfig, batch_tuple

NO_MEMORY = -1e30
"""The stabiliser ``m`` of the zero state: a finite stand-in for −∞."""

CORE_METHODS = ("parallel", "chunkwise", "sequential")


class MLSTMState(NamedTuple):
    """mLSTM state per head: the matrix memory ``c`` [*batch, heads, d, d] (key index, value
    index; ``C`` in the papers, and the field's name before 0.2), ``n`` [*batch, heads, d] and
    the log-space stabiliser ``m`` [*batch, heads].

    ``c`` and ``n`` are stored divided by ``exp(m)``; the zero state has ``m = -1e30``.
    """

    c: jax.Array
    n: jax.Array
    m: jax.Array


class MLSTMParams(NamedTuple):
    """mLSTM parameters (public layout): ``w_x`` (input, 4H + 2·heads) and ``b_x`` (4H + 2·heads).

    Column blocks in the order q (H), k (H), v (H), o (H), ĩ (heads), f̃ (heads). Within each
    H block, head ``h`` owns columns ``h·d : (h+1)·d``.
    """

    w_x: jax.Array
    b_x: jax.Array


# --------------------------------------------------------------------------------------------
# The three forms of the core, on masked inputs: log_f = log σ(f̃) (0 at invalid steps), ig = ĩ
# (−inf at invalid steps); q, k, v [T, *batch, heads, d], gates [T, *batch, heads].


def _finite(m: jax.Array) -> jax.Array:
    """``m`` where it is finite, else 0: the shift used inside ``exp`` (no inf − inf)."""
    return jnp.where(jnp.isfinite(m), m, jnp.zeros((), m.dtype))


def _step(state: MLSTMState, q, k, v, log_f, ig, eps: float) -> tuple[MLSTMState, jax.Array]:
    """One stabilised recurrent step; ``k`` already scaled by 1/√d."""
    m_new = jnp.maximum(log_f + state.m, ig)
    shift = _finite(m_new)
    f = jnp.exp(log_f + state.m - shift)
    i = jnp.exp(ig - shift)
    C = f[..., None, None] * state.c + i[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = f[..., None] * state.n + i[..., None] * k
    num = jnp.einsum("...i,...ij->...j", q, C)
    qn = jnp.einsum("...i,...i->...", q, n)
    h = num / (jnp.maximum(jnp.abs(qn), jnp.exp(-shift)) + eps)[..., None]
    return MLSTMState(C, n, m_new), h


def _segments(resets: jax.Array | None, L: int) -> jax.Array | None:
    """The count of resets up to and including each step, ``[L, *batch, 1]`` (broadcasts over heads):
    steps ``s <= t`` share a segment (no reset in ``(s, t]``) exactly where their counts are equal."""
    return None if resets is None else jnp.cumsum(resets[..., None].astype(jnp.int32), axis=0)


def _block_outputs(q, k, v, log_f, ig, state: MLSTMState, eps: float,
                   resets: jax.Array | None = None) -> jax.Array:
    """The parallel form over one block of L steps, starting from ``state``: h [L, ..., heads, d].

    With ``resets`` ([L, *batch]) the decay matrix is cut at every reset: an entry ``(t, s)`` with a
    reset in ``(s, t]``, and the carried state from the first reset on, are masked out (weight 0).
    """
    L = q.shape[0]
    # time moves next to the feature axis, so the products below are batched matmuls
    q, k, v = (jnp.moveaxis(a, 0, -2) for a in (q, k, v))  # [..., heads, L, d]
    F = jnp.cumsum(jnp.moveaxis(log_f, 0, -1), axis=-1)  # F_t = Σ_{r<=t} log f_r, [..., heads, L]
    ig = jnp.moveaxis(ig, 0, -1)
    log_d = F[..., :, None] - F[..., None, :] + ig[..., None, :]  # [..., t, s]: Σ_{s<r<=t} log f_r + ĩ_s
    keep = jnp.tril(jnp.ones((L, L), bool))
    log_g = F + state.m[..., None]  # decay of the carried state up to t
    count = _segments(resets, L)
    if count is not None:
        count = jnp.moveaxis(count, 0, -1)  # [..., 1, L]
        keep = keep & (count[..., :, None] == count[..., None, :])
        log_g = jnp.where(count > 0, -jnp.inf, log_g)
    log_d = jnp.where(keep, log_d, -jnp.inf)
    m_row = jnp.maximum(jnp.max(log_d, axis=-1), log_g)
    shift = _finite(m_row)
    scores = (q @ jnp.swapaxes(k, -1, -2)) * jnp.exp(log_d - shift[..., None])
    g = jnp.exp(log_g - shift)
    num = scores @ v + g[..., None] * (q @ state.c)
    qn = jnp.sum(scores, axis=-1) + g * jnp.einsum("...ti,...i->...t", q, state.n)
    h = num / (jnp.maximum(jnp.abs(qn), jnp.exp(-shift)) + eps)[..., None]
    return jnp.moveaxis(h, -2, 0)


def _block_state(k, v, log_f, ig, state: MLSTMState, resets: jax.Array | None = None) -> MLSTMState:
    """The state after one block of steps, from ``state`` at its start (after the block's last reset,
    from the zero state)."""
    F = jnp.cumsum(log_f, axis=0)
    log_w = F[-1] - F + ig  # weight of step s in the final state
    log_g = F[-1] + state.m
    count = _segments(resets, k.shape[0])
    if count is not None:  # only the steps from the last reset on, and no carried state after a reset
        log_w = jnp.where(count == count[-1], log_w, -jnp.inf)
        log_g = jnp.where(count[-1] > 0, -jnp.inf, log_g)
    m_end = jnp.maximum(jnp.max(log_w, axis=0), log_g)
    shift = _finite(m_end)
    w = jnp.exp(log_w - shift)
    g = jnp.exp(log_g - shift)
    C = g[..., None, None] * state.c + jnp.einsum("s...,s...i,s...j->...ij", w, k, v)
    n = g[..., None] * state.n + jnp.einsum("s...,s...i->...i", w, k)
    return MLSTMState(C, n, m_end)


def _parallel(q, k, v, log_f, ig, state, eps, chunk_size, unroll, resets):
    h = _block_outputs(q, k, v, log_f, ig, state, eps, resets)
    return h, _block_state(k, v, log_f, ig, state, resets)


def _chunkwise(q, k, v, log_f, ig, state, eps, chunk_size, unroll, resets):
    T, L = q.shape[0], chunk_size
    # padding steps keep the state: log f = 0, input gate −inf, no reset
    q, k, v, log_f = (split_blocks(a, L, 0.0) for a in (q, k, v, log_f))
    ig = split_blocks(ig, L, -jnp.inf)
    flags = None if resets is None else split_blocks(resets, L, False)
    zero = _zero_state_like(state)
    # 1. each chunk's own contribution to the state at its end (from the zero state; after a reset
    #    inside the chunk, from that reset on)
    local = jax.vmap(lambda k_, v_, f_, i_, r_: _block_state(k_, v_, f_, i_, zero, r_))(k, v, log_f, ig, flags)
    # the decay of the state carried into a chunk: cut (−inf, weight 0) when the chunk holds a reset
    decay = jnp.sum(log_f, axis=1)
    if flags is not None:
        decay = jnp.where(jnp.any(flags, axis=1)[..., None], -jnp.inf, decay)

    # 2. the state at each chunk's start: a short loop over chunks
    def carry(s: MLSTMState, inp):
        dec, loc = inp
        m_new = jnp.maximum(dec + s.m, loc.m)
        shift = _finite(m_new)
        a, b = jnp.exp(dec + s.m - shift), jnp.exp(loc.m - shift)
        new = MLSTMState(a[..., None, None] * s.c + b[..., None, None] * loc.c,
                         a[..., None] * s.n + b[..., None] * loc.n, m_new)
        return new, s

    final, starts = jax.lax.scan(carry, state, (decay, local), unroll=unroll)
    # 3. every chunk's outputs from its start state, all chunks at once
    h = jax.vmap(lambda q_, k_, v_, f_, i_, s_, r_: _block_outputs(q_, k_, v_, f_, i_, s_, eps, r_))(
        q, k, v, log_f, ig, starts, flags)
    return join_blocks(h, T), final


def _sequential(q, k, v, log_f, ig, state, eps, chunk_size, unroll, resets):
    def step(s, inp):
        q_, k_, v_, f_, i_ = inp
        return _step(s, q_, k_, v_, f_, i_, eps)

    # invalid steps already carry log f = 0 and ĩ = −inf, which keep the state
    final, h = time_loop(step, state, (q, k, v, log_f, ig), None, unroll=unroll, resets=resets,
                         reset_state=None if resets is None else _zero_state_like(state))
    return h, final


_FORMS = {"parallel": _parallel, "chunkwise": _chunkwise, "sequential": _sequential}


def _zero_state_like(state: MLSTMState) -> MLSTMState:
    return MLSTMState(jnp.zeros_like(state.c), jnp.zeros_like(state.n), jnp.full_like(state.m, NO_MEMORY))


def zero_state(batch_shape: tuple[int, ...], heads: int, d: int, dtype: Any) -> MLSTMState:
    """The zero mLSTM state: ``C = 0``, ``n = 0``, ``m = -1e30``."""
    return MLSTMState(c=jnp.zeros(batch_shape + (heads, d, d), dtype),
                      n=jnp.zeros(batch_shape + (heads, d), dtype),
                      m=jnp.full(batch_shape + (heads,), NO_MEMORY, dtype))


# --------------------------------------------------------------------------------------------
# The public core function


def _check_core(q, k, v, i_pre, f_pre, method, chunk_size, eps, valid, state, where) -> None:
    for name, a in (("q", q), ("k", k), ("v", v), ("i_pre", i_pre), ("f_pre", f_pre)):
        _checks.check_array(name, a, where)
    if q.ndim < 3:
        raise ValueError(f"{where}: q must have shape [T, *batch, heads, d], got {tuple(q.shape)}; add a heads "
                         f"axis (q[..., None, :] for one head) and a leading time axis.")
    for name, a in (("k", k), ("v", v)):
        if a.shape != q.shape:
            raise ValueError(f"{where}: {name} has shape {tuple(a.shape)} but q has {tuple(q.shape)}; q, k and v "
                             f"must share the shape [T, *batch, heads, d].")
    for name, a in (("i_pre", i_pre), ("f_pre", f_pre)):
        if a.shape != q.shape[:-1]:
            raise ValueError(f"{where}: {name} has shape {tuple(a.shape)}, expected {tuple(q.shape[:-1])} "
                             f"([T, *batch, heads], one pre-activation per head and step); drop the trailing "
                             f"size-1 axis of the xlstm layout with {name}[..., 0].")
    if method not in CORE_METHODS:
        raise ValueError(f"{where}: method={method!r} is not one of {', '.join(map(repr, CORE_METHODS))}.")
    _checks.check_size("chunk_size", chunk_size)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"{where}: eps must be a float >= 0, got {eps!r}; the reference uses eps=1e-6.")
    if valid is not None:
        if getattr(valid, "shape", None) != q.shape[:-2] or not jnp.issubdtype(valid.dtype, jnp.bool_):
            raise ValueError(f"{where}: valid must be a bool array of shape {tuple(q.shape[:-2])} ([T, *batch]), "
                             f"got {getattr(valid, 'dtype', type(valid).__name__)} "
                             f"{tuple(getattr(valid, 'shape', ()))}.")
    if state is not None:
        check_state(state, q.shape[1:-2], q.shape[-2], q.shape[-1], where)


def _check_resets(resets: Any, shape: tuple[int, ...], valid: jax.Array | None, where: str) -> jax.Array | None:
    """``resets`` checked (bool ``[T, *batch]``) and cleared at invalid steps."""
    if resets is None:
        return None
    if not hasattr(resets, "dtype") or resets.dtype != jnp.bool_ or tuple(resets.shape) != tuple(shape):
        raise ValueError(f"{where}: resets must be a bool array of shape {tuple(shape)} ([T, *batch], True = the "
                         f"state restarts from zero before this step), got "
                         f"{getattr(resets, 'dtype', type(resets).__name__)} "
                         f"{tuple(getattr(resets, 'shape', ()))}.")
    return resets if valid is None else resets & valid


def check_state(state: Any, batch: tuple[int, ...], heads: int, d: int, where: str) -> None:
    """Check an :class:`MLSTMState` against a batch shape, a head count and a head size."""
    _checks.check_type("state", state, MLSTMState, where,
                       "build the state with cell.initial_state(params, batch_shape) or pass None.")
    want = {"c": batch + (heads, d, d), "n": batch + (heads, d), "m": batch + (heads,)}
    for field, shape in want.items():
        got = _checks.shape_of(getattr(state, field))
        if got != shape:
            raise ValueError(f"{where}: state.{field} has shape {got}, expected {shape} (batch {batch}, "
                             f"{heads} heads of size {d}); build the state with "
                             f"initial_state(params, batch_shape={batch}).")


def mlstm_core(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    i_pre: jax.Array,
    f_pre: jax.Array,
    *,
    method: str = "parallel",
    chunk_size: int = 64,
    eps: float = 1e-6,
    valid: jax.Array | None = None,
    state: MLSTMState | None = None,
    return_state: bool = False,
    unroll: Union[int, bool] = 1,
    resets: jax.Array | None = None,
) -> Union[jax.Array, tuple[jax.Array, MLSTMState]]:
    """The mLSTM's matrix-memory recurrence over a whole sequence, time-major.

    What ``xlstm.blocks.mlstm.backends.parallel_stabilized_simple`` computes (keys scaled by 1/√d,
    log-sigmoid forget and exponential input gates; equations in the module docstring).

    Args:
      q, k, v: ``[T, *batch, heads, d]``.
      i_pre, f_pre: input and forget gate pre-activations, ``[T, *batch, heads]``.
      method: ``"parallel"`` (O(T²) matrix), ``"chunkwise"`` (parallel inside chunks of
        ``chunk_size`` steps, any T) or ``"sequential"`` (a loop): the same values.
      chunk_size, eps: the chunk length L of ``"chunkwise"``; added to the normaliser.
      valid: optional bool ``[T, *batch]``: invalid steps keep the state (log f = 0, input gate
        −∞) and give h = 0; values there, NaN included, do not matter.
      state: the initial :class:`MLSTMState` (``None``: the zero state), for streaming.
      return_state, unroll: also return the final state; the loops' unrolling.
      resets: optional bool ``[T, *batch]``: where True the step starts from the zero state, not
        the carried one nor ``state``. Every form cuts exactly: the parallel form masks the decay
        entries ``(t, s)`` with a reset in ``(s, t]`` (a cumulative count of resets, no large
        negative gate); the chunkwise form also drops the state carried into a chunk that holds
        a reset. A reset at an invalid step is ignored.

    Returns:
      ``h`` of shape ``[T, *batch, heads, d]``, or ``(h, final_state)``.

    Example:
      >>> key = jax.random.key(0)
      >>> q, k, v = jax.random.normal(key, (3, 20, 2, 4, 8))   # T=20, batch 2, 4 heads, d=8
      >>> i_pre, f_pre = jax.random.normal(key, (2, 20, 2, 4))
      >>> h = jlstm.mlstm_core(q, k, v, i_pre, f_pre, method="parallel")
      >>> h2 = jlstm.mlstm_core(q, k, v, i_pre, f_pre, method="chunkwise", chunk_size=8)
      >>> h.shape, bool(jnp.allclose(h, h2, atol=1e-5))
      ((20, 2, 4, 8), True)
    """
    return eager.call(run_core, (method, chunk_size, eps, return_state, unroll),
                      (q, k, v, i_pre, f_pre, valid, state, resets))


def run_core(method: str, chunk_size: int, eps: float, return_state: bool, unroll: Union[int, bool],
             q: jax.Array, k: jax.Array, v: jax.Array, i_pre: jax.Array, f_pre: jax.Array, valid: jax.Array | None,
             state: MLSTMState | None, resets: jax.Array | None) -> Union[jax.Array, tuple[jax.Array, MLSTMState]]:
    """:func:`mlstm_core` itself, the options first: what its eager calls compile once per options and shapes
    (:func:`jlstm.core.eager.call`), and what callers that are already traced may call directly."""
    where = "jlstm.mlstm_core"
    _check_core(q, k, v, i_pre, f_pre, method, chunk_size, eps, valid, state, where)
    resets = _check_resets(resets, q.shape[:-2], valid, where)
    q, k, v, log_f, ig, start = _core_inputs(q, k, v, i_pre, f_pre, valid, state)
    if q.shape[0] == 0:
        h, final = jnp.zeros(q.shape, q.dtype), start
    else:
        h, final = _FORMS[method](q, k, v, log_f, ig, start, float(eps), int(chunk_size), unroll, resets)
    if valid is not None:
        h = jnp.where(valid[..., None, None], h, jnp.zeros((), h.dtype))
    return (h, final) if return_state else h


def _core_inputs(q, k, v, i_pre, f_pre, valid, state):
    """The recurrence's inputs in one dtype: scaled keys, log forget gates, the input gates and the
    start state; invalid steps get ``log f = 0`` and an input gate of −∞ (they keep the state)."""
    dtype = jnp.result_type(q, k, v, i_pre, f_pre, *(jax.tree.leaves(state) if state is not None else ()))
    q, k, v, i_pre, f_pre = (a.astype(dtype) for a in (q, k, v, i_pre, f_pre))
    batch, heads, d = tuple(q.shape[1:-2]), q.shape[-2], q.shape[-1]
    start: MLSTMState = zero_state(batch, heads, d, dtype) if state is None else MLSTMState(
        *(jnp.asarray(a).astype(dtype) for a in state))
    k = k / jnp.asarray(math.sqrt(d), dtype)
    log_f, ig = jax.nn.log_sigmoid(f_pre), i_pre
    if valid is not None:
        def keep(a, fill):
            vm = valid.reshape(valid.shape + (1,) * (a.ndim - valid.ndim))
            return jnp.where(vm, a, jnp.asarray(fill, a.dtype))

        q, k, v, log_f = (keep(a, 0.0) for a in (q, k, v, log_f))
        ig = keep(ig, -jnp.inf)
    return q, k, v, log_f, ig, start


# --------------------------------------------------------------------------------------------
# The cell


def mlstm(
    hidden_size: int,
    *,
    num_heads: int = 1,
    chunk_size: int = 64,
    parallel_max_length: int = 64,
    eps: float = 1e-6,
    forget_bias: tuple[float, float] = (3.0, 6.0),
    **options: Unpack[MinCellOptions],
) -> Cell:
    """Build an mLSTM cell (xLSTM's matrix-memory LSTM; equations in the module docstring).

    ``jlstm.scan(cell, params, xs, method=...)`` takes ``"sequential"``, ``"parallel"`` (O(T²) in
    time and memory, no loop), ``"chunkwise"`` (O(T·L)) or ``"auto"`` (parallel up to
    ``parallel_max_length`` steps, chunkwise beyond: on CPU the O(T²) form was already slower than
    the loop at T = 256). All give the same values and final state, with lengths, masks, resets
    and reverse.

    Args:
      hidden_size: H, the size of ``y``; ``num_heads`` heads of size ``d = H / num_heads``.
      num_heads: number of heads; must divide ``hidden_size``.
      chunk_size: chunk length L of the chunkwise form.
      parallel_max_length: the longest T for which ``method="auto"`` picks the parallel form.
      eps: added to the normaliser, as in the reference.
      forget_bias: the forget-gate biases, spread linearly over the heads from the first value to
        the second (as xLSTM does), added to ``bias_init``'s (zeros by default).
      **options: ``kernel_init`` (of ``w_x``), ``bias_init``, ``dtype`` (of the input projection
        and ``y``; the recurrence runs in float32 or wider) and ``param_dtype``: see
        :class:`jlstm.MinCellOptions`.

    Example:
      >>> cell = jlstm.mlstm(16, num_heads=2)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> state, ys = jlstm.scan(cell, params, jnp.ones((100, 3, 4)), method="chunkwise")
      >>> ys.shape, state.c.shape
      ((100, 3, 16), (3, 2, 8, 8))
    """
    cfg = _config(hidden_size, num_heads, chunk_size, parallel_max_length, eps, forget_bias, options)
    where = f"mlstm({cfg.hidden_size}, num_heads={cfg.num_heads})"
    check = functools.partial(_check, cfg, default_where=where)
    return make_cell(init=functools.partial(_init, cfg), initial_state=functools.partial(_initial_state, cfg),
                     project=functools.partial(_project, cfg),
                     step_projected=functools.partial(_step_projected, cfg),
                     output_size=cfg.hidden_size, name=where, config=cfg, check=check,
                     methods=(("parallel", _form(cfg, "parallel")), ("chunkwise", _form(cfg, "chunkwise"))),
                     auto_method=functools.partial(_auto_method, cfg), mixable_state=False)


def _config(hidden_size: int, num_heads: int, chunk_size: int, parallel_max_length: int, eps: float,
            forget_bias: Any, options: Any) -> CellConfig:
    """The checked options of :func:`mlstm` as its config."""
    _checks.check_size("hidden_size", hidden_size)
    _checks.check_size("num_heads", num_heads)
    _checks.check_size("chunk_size", chunk_size)
    _checks.check_size("parallel_max_length", parallel_max_length, minimum=0)
    if hidden_size % num_heads:
        raise ValueError(f"mlstm: hidden_size={hidden_size} is not divisible by num_heads={num_heads}; pick a "
                         f"head count that divides it, e.g. num_heads={math.gcd(hidden_size, num_heads)}.")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"mlstm: eps must be a float >= 0, got {eps!r}.")
    try:
        forget_bias = (float(forget_bias[0]), float(forget_bias[1]))
    except (TypeError, IndexError, ValueError):
        raise TypeError(f"mlstm: forget_bias must be a pair of floats (first head, last head), got "
                        f"{forget_bias!r}; e.g. forget_bias=(3.0, 6.0).") from None
    opts = resolve("mlstm", options, MinCellOptions)
    return CellConfig("mlstm", hidden_size=int(hidden_size), num_heads=int(num_heads), chunk_size=int(chunk_size),
                      parallel_max_length=int(parallel_max_length), eps=float(eps), forget_bias=forget_bias,
                      **opts.config())


def _sizes(cfg: CellConfig) -> tuple[int, int, int, int]:
    """``(H, heads, d, width)``: units, heads, head size and the projection's width."""
    H, NH = cfg.hidden_size, cfg.num_heads
    return H, NH, H // NH, 4 * H + 2 * NH


def _init(cfg: CellConfig, key: jax.Array, input_size: int) -> MLSTMParams:
    _checks.check_size("input_size", input_size)
    H, NH, _, width = _sizes(cfg)
    forget = np.zeros(width)
    forget[4 * H + NH:] = np.linspace(cfg.forget_bias[0], cfg.forget_bias[1], NH)
    b = cfg.bias_init(jax.random.fold_in(key, 1), (width,), cfg.param_dtype) + jnp.asarray(forget, cfg.param_dtype)
    return MLSTMParams(w_x=cfg.kernel_init(key, (input_size, width), cfg.param_dtype), b_x=b)


def _check(cfg: CellConfig, params, state=None, x=None, where: str | None = None, *,
           default_where: str = "mlstm") -> None:
    where = where or default_where
    _, NH, d, width = _sizes(cfg)
    _checks.check_type("params", params, MLSTMParams, where,
                       "build the params with this cell's init(key, input_size).")
    n_in = _checks.shape_of(params.w_x)[0] if len(_checks.shape_of(params.w_x)) == 2 else -1
    _checks.check_param_shapes(params, {"w_x": (n_in, width), "b_x": (width,)}, where)
    if x is not None:
        _checks.check_features(x, n_in, where)
    if state is not None:
        batch = tuple(x.shape[:-1]) if x is not None else tuple(_checks.shape_of(state.m)[:-1])
        check_state(state, batch, NH, d, where)


def _initial_state(cfg: CellConfig, params: MLSTMParams, batch_shape: BatchShape = ()) -> MLSTMState:
    _, NH, d, _ = _sizes(cfg)
    _check(cfg, params, where=f"mlstm({cfg.hidden_size}, num_heads={NH}).initial_state")
    return zero_state(batch_tuple(batch_shape), NH, d, carry_dtype(params.w_x.dtype, cfg.dtype))


def _project(cfg: CellConfig, params: MLSTMParams, x: jax.Array) -> jax.Array:
    return matmul(x, params.w_x, cfg.dtype) + params.b_x.astype(cfg.dtype or params.b_x.dtype)


def _split(cfg: CellConfig, xp: jax.Array, wide: jnp.dtype):
    H, NH, d, _ = _sizes(cfg)
    xp = xp.astype(wide)
    lead = xp.shape[:-1]
    q, k, v, o = (xp[..., j * H:(j + 1) * H].reshape(lead + (NH, d)) for j in range(4))
    return q, k, v, o, xp[..., 4 * H:4 * H + NH], xp[..., 4 * H + NH:]


def _step_projected(cfg: CellConfig, params: MLSTMParams, state: MLSTMState, xp: jax.Array,
                    recurrent_mask: jax.Array | None = None) -> tuple[MLSTMState, jax.Array]:
    H, NH, d, _ = _sizes(cfg)
    if recurrent_mask is not None:
        raise ValueError(f"mlstm({H}, num_heads={NH}): recurrent dropout masks h_(t-1) in a recurrent matmul, "
                         f"and the mLSTM has none (its gates read only x); use input dropout instead "
                         f"(jlstm.recurrent(cell, dropout=...)).")
    q, k, v, o, i_pre, f_pre = _split(cfg, xp, state.c.dtype)
    k = k / jnp.asarray(math.sqrt(d), k.dtype)
    state, h = _step(state, q, k, v, jax.nn.log_sigmoid(f_pre), i_pre, float(cfg.eps))
    y = jax.nn.sigmoid(o) * h
    return state, output(y.reshape(y.shape[:-2] + (H,)), cfg.dtype)


def _form(cfg: CellConfig, method: str):
    """The cell's whole-sequence form ``method`` ("parallel" or "chunkwise") for :func:`jlstm.scan`."""

    def run(params: MLSTMParams, xs: jax.Array, state: MLSTMState, valid: jax.Array | None, *,
            unroll: Union[int, bool] = 1, remat: Any = None, chunk_size: int | None = None,
            resets: jax.Array | None = None) -> tuple[MLSTMState, jax.Array]:
        size = cfg.chunk_size if chunk_size is None else chunk_size

        def core(params, xs, state):
            q, k, v, o, i_pre, f_pre = _split(cfg, _project(cfg, params, xs), state.c.dtype)
            h, final = mlstm_core(q, k, v, i_pre, f_pre, method=method, chunk_size=size, eps=cfg.eps,
                                  valid=valid, state=state, return_state=True, unroll=unroll, resets=resets)
            y = jax.nn.sigmoid(o) * h
            return final, output(y.reshape(y.shape[:-2] + (cfg.hidden_size,)), cfg.dtype)

        # remat: the form's intermediates (the decay matrices) are recomputed in the backward pass
        return (jax.checkpoint(core) if remat else core)(params, xs, state)

    run.__name__ = f"mlstm_{method}"
    return run


def _auto_method(cfg: CellConfig, T: int) -> str:
    return "parallel" if T <= cfg.parallel_max_length else "chunkwise"
