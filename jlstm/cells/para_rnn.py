"""ParaRNN's cells (Danieli et al. 2025, arXiv 2510.21450): a GRU and a CIFG LSTM with diagonal recurrence.

Every recurrent weight is a vector (one scalar per unit and gate), so a unit reads only its own past:
the step's Jacobian ``∂s_t/∂s_{t−1}`` is exactly diagonal for the GRU and exactly one 2×2 ``(h, c)``
block per unit for the LSTM. Newton's method (``method="deer"`` or ``"quasi_deer"``, the same thing
here) then solves each linearised step with diagonal or 2×2 block products and converges in a few
iterations. Row-vector convention; ``xp = x W_x + b`` holds the gate blocks in the order given::

    para_gru   (blocks z, r, n):
        z = σ(xp_z + a_z ⊙ h)        r = σ(xp_r + a_r ⊙ h)
        n = tanh(xp_n + a_n ⊙ (r ⊙ h))
        h_t = z ⊙ n + (1 − z) ⊙ h                       (z weighs the candidate, as in ParaRNN)

    para_lstm  (blocks f, o, c̃; coupled input and forget gates, i = 1 − f):
        f = σ(xp_f + a_f ⊙ h + p_f ⊙ c)                  (peephole on c_{t−1})
        c_t = f ⊙ c + (1 − f) ⊙ tanh(xp_c + a_c ⊙ h)
        o = σ(xp_o + a_o ⊙ h + p_o ⊙ c_t)                (peephole on c_t)
        h_t = o ⊙ tanh(c_t)

with ``h, c`` the previous state. ``heads > 1`` makes the input projection block-diagonal, as in
ParaRNN's multi-head cells: head ``k`` maps its ``I/heads`` inputs to its ``H/heads`` units of every
gate. Defaults follow ParaRNN's: recurrent vectors ``a`` (and peepholes ``p``) from
``N(0, (2/√(5H))²)``, and the first gate's bias (``z``, ``f``) at ``−linspace(0, 1, H)``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jlstm.cells import initializers as _initializers
from jlstm.cells.gru import GRUState
from jlstm.cells.lstm import LSTMState
from jlstm.cells.make_cell import h_output, make_cell
from jlstm.cells.options import CellOptions, Unpack, resolve
from jlstm.cells.state_box import hull_box
from jlstm.core import checks as _checks
from jlstm.core.math import carry_dtype, cell_sizes, masked, matmul, output
from jlstm.core.types import BatchShape, Cell, CellConfig, batch_tuple


class ParaGRUParams(NamedTuple):
    """ParaGRU parameters: ``w_x`` (input, 3H/heads), ``a`` (3, H) the diagonal recurrence and ``b`` (3H);
    gate blocks z, r, n. With heads, rows ``k·I/heads …`` of ``w_x`` feed head ``k``'s units."""

    w_x: jax.Array
    a: jax.Array
    b: jax.Array


class ParaLSTMParams(NamedTuple):
    """ParaLSTM parameters: ``w_x`` (input, 3H/heads), ``a`` (3, H), ``p`` (2, H) the peepholes of f and o,
    and ``b`` (3H); gate blocks f, o, c̃."""

    w_x: jax.Array
    a: jax.Array
    p: jax.Array
    b: jax.Array


def para_gru(hidden_size: int, *, heads: int = 1, **options: Unpack[CellOptions]) -> Cell:
    """Build ParaRNN's GRU with diagonal recurrence (see the module docstring).

    Args:
      hidden_size: number of units H.
      heads: blocks of the input projection (must divide H and the input size).
      **options: ``kernel_init`` (of each head's block of ``w_x``), ``recurrent_init`` (of ``a``;
        ParaRNN's normal by default), ``bias_init``, ``dtype`` and ``param_dtype``: see
        :class:`jlstm.CellOptions`.

    Returns:
      A :class:`jlstm.Cell` whose step returns ``(GRUState, h_t)``; its Jacobian is diagonal, which it
      declares (``CellFast.jacobian_exact``), so every Newton method on it is exact and elementwise.

    Example:
      >>> cell = jlstm.para_gru(8)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> _, ys, info = jlstm.scan(cell, params, jnp.ones((100, 4)), method="deer", return_info=True)
      >>> bool(info.converged), ys.shape
      (True, (100, 8))
    """
    return _para_cell("para_gru", hidden_size, heads, options)


def para_lstm(hidden_size: int, *, heads: int = 1, **options: Unpack[CellOptions]) -> Cell:
    """Build ParaRNN's CIFG LSTM with diagonal recurrence and peepholes (see the module docstring).

    Args:
      hidden_size: number of units H.
      heads: blocks of the input projection (must divide H and the input size).
      **options: as for :func:`para_gru`; ``recurrent_init`` initialises ``a`` and the peepholes ``p``.

    Returns:
      A :class:`jlstm.Cell` whose step returns ``(LSTMState, h_t)``; its Jacobian is one 2×2 ``(h, c)``
      block per unit, which it declares, so every Newton method on it keeps exactly those blocks.

    Example:
      >>> cell = jlstm.para_lstm(8, heads=2)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> params.w_x.shape, params.a.shape, params.p.shape
      ((4, 12), (3, 8), (2, 8))
    """
    return _para_cell("para_lstm", hidden_size, heads, options)


class _Kind(NamedTuple):
    params: type
    state: type
    step: Callable[..., Any]
    blocks: int


def _para_cell(kind: str, hidden_size: Any, heads: Any, options: Mapping[str, Any]) -> Cell:
    H, _, _ = cell_sizes(hidden_size, options.get("dtype"), options.get("param_dtype", jnp.float32))
    _checks.check_size("heads", heads)
    if H % heads:
        raise ValueError(f"{kind}: heads={heads} must divide hidden_size={H}.")
    if "recurrent_init" not in options:
        options = {**options, "recurrent_init": _initializers.normal(2.0 / (5.0 * H) ** 0.5)}
    opts = resolve(kind, options)
    cfg = CellConfig(kind, hidden_size=H, heads=int(heads), **opts.config())
    spec = _KINDS[kind]
    name = f"{kind}({H}" + (f", heads={heads}" if heads > 1 else "") + ")"
    check = functools.partial(_check, cfg, spec, default_where=name)
    step = functools.partial(spec.step, cfg)
    return make_cell(init=functools.partial(_init, cfg, spec), project=functools.partial(_project, cfg),
                     initial_state=functools.partial(_initial_state, cfg, check), step_projected=step,
                     output_size=H, name=name, config=cfg, check=check, step_decoupled=step,
                     jacobian_blocks=spec.blocks, jacobian_exact=True, output_of_state=h_output,
                     state_box=hull_box(h=1.0, c=1.0))       # convex mixes of tanh(.) and the last state


def _init(cfg: CellConfig, spec: _Kind, key: jax.Array, input_size: int) -> Any:
    _checks.check_size("input_size", input_size)
    H, heads, dt = cfg.hidden_size, cfg.heads, cfg.param_dtype
    if input_size % heads:
        raise ValueError(f"{cfg.kind}({H}, heads={heads}): heads must divide the input size, got {input_size}.")
    kx, ka, kp, kb = jax.random.split(key, 4)
    blocks = [cfg.kernel_init(k, (input_size // heads, 3 * H // heads), dt) for k in jax.random.split(kx, heads)]
    w_x = blocks[0] if heads == 1 else jnp.concatenate(blocks, 0)
    b = _initializers.add_to_slice(cfg.bias_init(kb, (3 * H,), dt), 0, H, -np.linspace(0.0, 1.0, H))  # z or f
    a = cfg.recurrent_init(ka, (3, H), dt)
    if spec.params is ParaGRUParams:
        return ParaGRUParams(w_x, a, b)
    return ParaLSTMParams(w_x, a, cfg.recurrent_init(kp, (2, H), dt), b)


def _check(cfg: CellConfig, spec: _Kind, params: Any, state: Any = None, x: Any = None, where: str | None = None,
           *, default_where: str = "para_rnn") -> None:
    H, heads = cfg.hidden_size, cfg.heads

    def shapes(n: int) -> dict:
        extra = {"p": (2, H)} if spec.params is ParaLSTMParams else {}
        return {"w_x": (n, 3 * H // heads), "a": (3, H), "b": (3 * H,), **extra}

    sizes = {"h": H, "c": H} if spec.state is LSTMState else {"h": H}
    _checks.check_cell_args(where or default_where, params, spec.params, shapes, state, spec.state, sizes, x)


def _initial_state(cfg: CellConfig, check: Any, params: Any, batch_shape: BatchShape = ()) -> Any:
    check(params, where=check.keywords["default_where"] + ".initial_state")
    zeros = jnp.zeros(batch_tuple(batch_shape) + (cfg.hidden_size,), carry_dtype(params.a.dtype, cfg.dtype))
    return LSTMState(h=zeros, c=zeros) if cfg.kind == "para_lstm" else GRUState(h=zeros)


def _project(cfg: CellConfig, params: Any, x: jax.Array) -> jax.Array:
    """``x W_x + b`` with gate-major columns ``[3, H]``; per head when ``heads > 1``."""
    heads, H = cfg.heads, cfg.hidden_size
    b = params.b.astype(cfg.dtype or params.b.dtype)
    if heads == 1:
        return matmul(x, params.w_x, cfg.dtype) + b
    xh = x.reshape(x.shape[:-1] + (heads, -1))                           # [..., heads, I/heads]
    w = params.w_x.reshape(heads, -1, params.w_x.shape[-1])             # [heads, I/heads, 3·H/heads]
    if cfg.dtype is not None:
        xh, w = xh.astype(cfg.dtype), w.astype(cfg.dtype)
    y = jnp.einsum("...ki,kio->...ko", xh, w).reshape(x.shape[:-1] + (heads, 3, H // heads))
    return jnp.swapaxes(y, -2, -3).reshape(x.shape[:-1] + (3 * H,)) + b


def _gru_step(cfg: CellConfig, params: ParaGRUParams, state: GRUState, xp: jax.Array,
              recurrent_mask: jax.Array | None = None) -> tuple[GRUState, jax.Array]:
    h = state.h.astype(xp.dtype)
    h_in, a = masked(h, recurrent_mask), params.a.astype(xp.dtype)
    xz, xr, xn = jnp.split(xp, 3, axis=-1)
    z = jax.nn.sigmoid(xz + a[0] * h_in)
    r = jax.nn.sigmoid(xr + a[1] * h_in)
    n = jnp.tanh(xn + a[2] * (r * h_in))
    h_new = z * n + (1.0 - z) * h
    return GRUState(h=h_new.astype(state.h.dtype)), output(h_new, cfg.dtype)


def _lstm_step(cfg: CellConfig, params: ParaLSTMParams, state: LSTMState, xp: jax.Array,
               recurrent_mask: jax.Array | None = None) -> tuple[LSTMState, jax.Array]:
    h, c = state.h.astype(xp.dtype), state.c.astype(xp.dtype)
    h_in, a, p = masked(h, recurrent_mask), params.a.astype(xp.dtype), params.p.astype(xp.dtype)
    xf, xo, xc = jnp.split(xp, 3, axis=-1)
    f = jax.nn.sigmoid(xf + a[0] * h_in + p[0] * c)
    c_new = f * c + (1.0 - f) * jnp.tanh(xc + a[2] * h_in)
    o = jax.nn.sigmoid(xo + a[1] * h_in + p[1] * c_new)
    h_new = o * jnp.tanh(c_new)
    return LSTMState(h=h_new.astype(state.h.dtype), c=c_new.astype(state.c.dtype)), output(h_new, cfg.dtype)


_KINDS = {"para_gru": _Kind(ParaGRUParams, GRUState, _gru_step, 1),
          "para_lstm": _Kind(ParaLSTMParams, LSTMState, _lstm_step, 2)}
