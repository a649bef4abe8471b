"""The sLSTM cell of xLSTM (Beck et al. 2024, arXiv 2405.04517): exponential gating with a normaliser.

Row-vector convention. The pre-activations of the four gates, in the order i, f, z, o, are
``x_t W + h_{t-1} R + b``, where ``R`` is block-diagonal: one ``d × 4d`` block per head
(``d = H / num_heads``), so a head's gates read only that head's units. The stabilised update,
with ``log f̃ = log σ(f̃)`` (``forget_gate="sigmoid"``) or ``f̃`` (``"exponential"``)::

    m_t = max(log f̃_t + m_{t-1}, ĩ_t)          (m_t = ĩ_t where n_{t-1} = 0: a fresh state)
    i_t = exp(ĩ_t - m_t),   f_t = exp(log f̃_t + m_{t-1} - m_t)
    c_t = f_t c_{t-1} + i_t tanh(z̃_t)
    n_t = f_t n_{t-1} + i_t
    h_t = σ(õ_t) c_t / n_t

``m`` is a log-space stabiliser: ``(c, n)`` are the unstabilised cell and normaliser times
``exp(-m)``, so ``h`` does not depend on it, and ``i, f ≤ 1`` keep every quantity finite
for any pre-activation. The initial state is zeros (``m = 0`` too), as in the ``xlstm``
package; like its vanilla kernel, a unit whose normaliser is still 0 (nothing has been
written into it yet) takes ``m_t = ĩ_t``, so its first write has ``i = 1`` and cannot
underflow. This changes only the stabiliser's scale, never ``h``. From then on ``n ≥ 1``
and ``|h| ≤ 1``.

Layout of the 4H pre-activation vector: gate-major, ``[i | f | z | o]``, each gate block
head-major (``[head 0 units, head 1 units, ...]``), the layout of the ``xlstm`` package's
vanilla kernel.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from jlstm.cells import initializers as _initializers
from jlstm.cells.make_cell import make_cell
from jlstm.cells.options import CellOptions, Unpack, resolve
from jlstm.core import checks as _checks
from jlstm.core.math import carry_dtype, matmul, output
from jlstm.core.types import BatchShape, Cell, CellConfig, batch_tuple
from jlstm.kernels import pallas_slstm as _pallas_slstm

ForgetGate = Literal["sigmoid", "exponential"]
GATES = ("i", "f", "z", "o")


class SLSTMParams(NamedTuple):
    """sLSTM parameters (public layout; gates in the order i, f, z, o).

    Attributes:
      w_x: the input weights. Dense: ``[input, 4H]``, columns gate-major ``[i | f | z | o]``,
        each block head-major. Head-wise (``headwise_input=True``): ``[heads, input/heads,
        4d]``: head ``k`` reads its slice of the input, and its columns are ``[i | f | z | o]``
        of that head's ``d`` units.
      w_h: the recurrent weights (named ``r`` before 0.2), block-diagonal: ``[heads, d, 4d]``,
        head ``k``'s block with columns ``[i | f | z | o]`` of that head's units.
      b: the bias ``[4H]``, in the layout of the dense ``w_x`` columns.
    """

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array


class SLSTMState(NamedTuple):
    """sLSTM state, each ``[*batch, H]``: hidden ``h``, cell ``c``, normaliser ``n``, stabiliser ``m``."""

    h: jax.Array
    c: jax.Array
    n: jax.Array
    m: jax.Array


def _heads_to_gates(p: jax.Array, heads: int, d: int) -> jax.Array:
    """``[..., heads, 4d]`` (head-major) -> ``[..., 4H]`` (gate-major, head-major within a gate)."""
    p = p.reshape(p.shape[:-2] + (heads, 4, d))
    return jnp.swapaxes(p, -3, -2).reshape(p.shape[:-3] + (4 * heads * d,))


def _headwise(x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """``x [..., heads*k] @ block_diag(w) [heads, k, n]`` -> ``[..., heads, n]``."""
    heads, k = w.shape[0], w.shape[1]
    x = x.reshape(x.shape[:-1] + (heads, k))
    if dtype is None:
        return jnp.einsum("...hk,hkn->...hn", x, w)
    low = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return jnp.einsum("...hk,hkn->...hn", x.astype(dtype), w.astype(dtype),
                      preferred_element_type=jnp.float32 if low else None)


def slstm(
    hidden_size: int,
    *,
    num_heads: int = 1,
    forget_gate: ForgetGate = "sigmoid",
    headwise_input: bool = False,
    forget_bias: float = 0.0,
    **options: Unpack[CellOptions],
) -> Cell:
    """Build an sLSTM cell (stabilised exponential gating; see the module docstring).

    Args:
      hidden_size: number of units H, a multiple of ``num_heads``.
      num_heads: number of heads; the recurrent weight is block-diagonal with one
        ``d × 4d`` block per head (``d = H / num_heads``).
      forget_gate: ``"sigmoid"`` (``log f = log σ(f̃)``, the ``xlstm`` package's choice) or
        ``"exponential"`` (``log f = f̃``).
      headwise_input: make the input weights block-diagonal per head too, as in the ``xlstm``
        package's ``sLSTMLayer`` (the input size must then be a multiple of ``num_heads``).
      forget_bias: added to the forget-gate block of the bias at init (as in :func:`jlstm.lstm`).
      **options: ``kernel_init`` (per gate block, and per head with ``headwise_input``),
        ``recurrent_init`` (per head and gate block), ``bias_init``, ``dtype`` and
        ``param_dtype``: see :class:`jlstm.CellOptions`. The gating and the state are
        computed in at least float32, whatever ``dtype``.

    Returns:
      A :class:`jlstm.Cell`; ``step(params, state, x)`` returns ``(SLSTMState, h_t)``.

    Example:
      >>> cell = jlstm.slstm(8, num_heads=2)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> params.w_h.shape                            # [heads, d, 4d]
      (2, 4, 16)
      >>> state, ys = jlstm.scan(cell, params, jnp.ones((10, 3, 4)), lengths=jnp.array([10, 5, 0]))
      >>> ys.shape, state.m.shape
      ((10, 3, 8), (3, 8))
    """
    _checks.check_size("hidden_size", hidden_size)
    _checks.check_size("num_heads", num_heads)
    _checks.check_option("forget_gate", forget_gate, ("sigmoid", "exponential"))
    if not isinstance(headwise_input, bool):
        raise TypeError(f"slstm: headwise_input must be True or False, got {headwise_input!r}.")
    H, heads = int(hidden_size), int(num_heads)
    if H % heads:
        raise ValueError(f"slstm: hidden_size={H} is not a multiple of num_heads={heads}; each head holds "
                         f"hidden_size / num_heads units, so pick e.g. hidden_size={heads * max(1, H // heads)}.")
    where = f"slstm({H}, num_heads={heads})"
    config = CellConfig(
        "slstm", hidden_size=H, num_heads=heads, forget_gate=forget_gate, headwise_input=headwise_input,
        forget_bias=float(forget_bias), **resolve("slstm", options).config())

    check = functools.partial(_check, config, default_where=where)
    project, step_projected = functools.partial(_project, config), functools.partial(_step_projected, config)
    sequence = _pallas_slstm.make_sequence(heads=heads, d=H // heads, exponential=forget_gate == "exponential",
                                           dtype=config.dtype, project=project, step_projected=step_projected)
    return make_cell(init=functools.partial(_init, config),
                     initial_state=functools.partial(_initial_state, config),
                     project=project, step_projected=step_projected, sequence=sequence,
                     output_size=H, name=where, config=config, check=check, mixable_state=False)


def _where(cfg: CellConfig) -> str:
    return f"slstm({cfg.hidden_size}, num_heads={cfg.num_heads})"


def _per_head(cfg: CellConfig, init, key, rows: int) -> jax.Array:
    heads, d = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    keys = jax.random.split(key, heads)
    return jnp.stack([_initializers.per_gate(init, k, rows, d, 4, cfg.param_dtype) for k in keys])


def _init(cfg: CellConfig, key: jax.Array, input_size: int) -> SLSTMParams:
    _checks.check_size("input_size", input_size)
    H, heads, d, pdtype = cfg.hidden_size, cfg.num_heads, cfg.hidden_size // cfg.num_heads, cfg.param_dtype
    kx, kr, kb = jax.random.split(key, 3)
    if cfg.headwise_input:
        if input_size % heads:
            raise ValueError(
                f"{_where(cfg)}.init: with headwise_input=True each head reads input_size / num_heads inputs, "
                f"but input_size={input_size} is not a multiple of num_heads={heads}; pad the input or "
                f"use headwise_input=False.")
        w_x = _per_head(cfg, cfg.kernel_init, kx, input_size // heads)
    else:
        w_x = _initializers.per_gate(cfg.kernel_init, kx, input_size, H, 4, pdtype)
    # pdtype is None for param_dtype=None, which is passed on to bias_init as it always was
    b = cfg.bias_init(kb, (4 * H,), pdtype)
    if cfg.forget_bias:
        b = _initializers.add_to_slice(b, H, 2 * H, cfg.forget_bias)
    return SLSTMParams(w_x=w_x, w_h=_per_head(cfg, cfg.recurrent_init, kr, d), b=b)


def _check(cfg: CellConfig, params, state=None, x=None, where: str | None = None, *,
           default_where: str = "slstm") -> None:
    where = where or default_where
    H, heads, headwise_input = cfg.hidden_size, cfg.num_heads, cfg.headwise_input
    d = H // heads
    _checks.check_type("params", params, SLSTMParams, where,
                       "build the params with this cell's init(key, input_size).")
    w_shape = _checks.shape_of(params.w_x)
    if headwise_input:
        ok = len(w_shape) == 3 and w_shape[0] == heads
        input_size = w_shape[0] * w_shape[1] if ok else None
        want_w = (heads, w_shape[1] if ok else "input/heads", 4 * d)
    else:
        ok = len(w_shape) == 2
        input_size = w_shape[0] if ok else None
        want_w = (w_shape[0] if ok else "input", 4 * H)
    if not ok or w_shape != want_w:
        raise ValueError(f"{where}: params.w_x has shape {w_shape}, expected {want_w} "
                         f"({'head-wise' if headwise_input else 'dense'} input weights); these params "
                         f"belong to a cell with other options: build them with this cell's init.")
    assert input_size is not None  # ok is True past the check above
    # w_x was checked just above (w_shape == want_w here)
    _checks.check_param_shapes(params, {"w_x": w_shape, "w_h": (heads, d, 4 * d), "b": (4 * H,)}, where)
    if state is not None:
        _checks.check_type("state", state, SLSTMState, where,
                           "build the state with this cell's initial_state(params, batch_shape).")
        _checks.check_state_shapes(state, {"h": H, "c": H, "n": H, "m": H}, where)
    if x is not None:
        _checks.check_features(x, input_size, where)
        if state is not None:
            _checks.check_batch(x, state.h, where)


def _initial_state(cfg: CellConfig, params: SLSTMParams, batch_shape: BatchShape = ()) -> SLSTMState:
    _check(cfg, params, where=_where(cfg) + ".initial_state")
    zeros = jnp.zeros(batch_tuple(batch_shape) + (cfg.hidden_size,), carry_dtype(params.w_h.dtype, cfg.dtype))
    return SLSTMState(h=zeros, c=zeros, n=zeros, m=zeros)


def _project(cfg: CellConfig, params: SLSTMParams, x: jax.Array) -> jax.Array:
    dtype, heads, d = cfg.dtype, cfg.num_heads, cfg.hidden_size // cfg.num_heads
    b = params.b.astype(dtype or params.b.dtype)
    if cfg.headwise_input:
        xp = _heads_to_gates(_headwise(x, params.w_x, dtype), heads, d)
    else:
        xp = matmul(x, params.w_x, dtype)
    return xp + b


def _step_projected(cfg: CellConfig, params: SLSTMParams, state: SLSTMState, xp: jax.Array,
                    recurrent_mask: jax.Array | None = None) -> tuple[SLSTMState, jax.Array]:
    dtype, heads, d = cfg.dtype, cfg.num_heads, cfg.hidden_size // cfg.num_heads
    h, c, n, m = state
    h_in = h if recurrent_mask is None else h * recurrent_mask
    hp = _heads_to_gates(_headwise(h_in, params.w_h, dtype), heads, d)
    wide = jnp.promote_types(jnp.promote_types(xp.dtype, hp.dtype), c.dtype)
    pre = jnp.split(xp.astype(wide) + hp.astype(wide), 4, axis=-1)
    h_new, c_new, n_new, m_new = _pallas_slstm.stabilised_update(
        pre, c.astype(wide), n.astype(wide), m.astype(wide), cfg.forget_gate == "exponential")
    sd = c.dtype
    new = SLSTMState(h=h_new.astype(sd), c=c_new.astype(sd), n=n_new.astype(sd), m=m_new.astype(sd))
    return new, output(h_new, dtype)
