"""The LSTM cell: no peepholes, diagonal peepholes, or the article's full peephole matrices.

Row-vector convention (``x @ W``); gate blocks in the order i, f, g, o::

    z_t = x_t W_x + h_{t-1} W_h + b                       (4H)
    i_t = σ(z_i + P_i(c))      f_t = σ(z_f + P_f(c))      g_t = tanh(z_g)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t                       (clipped to ±cell_clip if set)
    o_t = σ(z_o + P_o(c))
    h_t = o_t ⊙ tanh(c_t)                                 (then h_t W_p with proj_size)

Peepholes ``P``:

* ``peephole=None``: none (PyTorch, Keras, Flax, Equinox).
* ``peephole="full"``: the founding article, ``P_k(c) = c_{t-1} W_ck`` with matrices
  ``W_ck`` of shape (H, H); all three gates read ``c_{t-1}``. ``w_c`` is (H, 3H),
  blocks i, f, o.
* ``peephole="diagonal"``: Gers & Schmidhuber / Graves / TF1, ``P_k(c) = w_ck ⊙ c``
  with vectors; i and f read ``c_{t-1}``, o reads the new ``c_t``. ``w_c`` is (3, H),
  rows i, f, o.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jlstm.cells import initializers as _initializers
from jlstm.cells.decouple import recurrent_matmul
from jlstm.cells.make_cell import h_output, make_cell
from jlstm.cells.options import CellOptions, Unpack, resolve
from jlstm.cells.state_box import hull_box
from jlstm.core import checks as _checks
from jlstm.core.math import carry_dtype, matmul, output
from jlstm.core.types import BatchShape, Cell, CellConfig, Peephole, batch_tuple
from jlstm.kernels.fused_lstm import make_fused

PEEPHOLES = (None, "diagonal", "full")


class LSTMParams(NamedTuple):
    """LSTM parameters (public layout).

    Attributes:
      w_x: (input_size, 4H), gate blocks i, f, g, o.
      w_h: (R, 4H) with R = H, or proj_size for an LSTMP.
      b: (4H,), the single bias (PyTorch's b_ih + b_hh).
      w_c: peepholes: (H, 3H) for ``"full"``, (3, H) for ``"diagonal"``, blocks i, f, o;
        ``None`` without peepholes.
      w_p: (H, proj_size) output projection of an LSTMP; ``None`` otherwise.
    """

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array
    w_c: jax.Array | None = None
    w_p: jax.Array | None = None


class LSTMState(NamedTuple):
    """LSTM state: ``h`` is [*batch, R] (R = H or proj_size), ``c`` is [*batch, H]."""

    h: jax.Array
    c: jax.Array


def lstm(
    hidden_size: int,
    *,
    peephole: Peephole | None = None,
    proj_size: int | None = None,
    cell_clip: float | None = None,
    forget_bias: float = 1.0,
    peephole_init: _initializers.Initializer | None = None,
    proj_init: _initializers.Initializer = _initializers.glorot_uniform,
    **options: Unpack[CellOptions],
) -> Cell:
    """Build an LSTM cell.

    Args:
      hidden_size: number of units H.
      peephole: ``None``, ``"diagonal"`` or ``"full"`` (see the module docstring).
      proj_size: if set, an LSTMP (Sak et al. 2014; PyTorch's ``proj_size``):
        ``h_t = (o_t ⊙ tanh(c_t)) W_p`` with ``W_p`` of shape (H, proj_size), and the
        recurrence reads the projected ``h``.
      cell_clip: if set, ``c_t`` is clipped to ``[-cell_clip, cell_clip]`` (TF1's ``cell_clip``).
      forget_bias: initial value of the forget-gate bias block.
      peephole_init: initialiser ``(key, shape, dtype)`` of ``w_c``; ``None`` means
        ``U(-1/√H, 1/√H)``.
      proj_init: initialiser of the LSTMP's ``w_p``.
      **options: ``kernel_init`` (of the whole ``w_x``), ``recurrent_init`` (per gate block),
        ``bias_init``, ``dtype`` (``jnp.bfloat16`` for mixed precision) and ``param_dtype``:
        see :class:`jlstm.CellOptions`.

    Returns:
      A :class:`jlstm.Cell`. ``step(params, state, x)`` takes ``x`` of shape
      ``[*batch, input_size]`` and returns ``(LSTMState, y)`` with ``y = h_t``.

    Example:
      >>> cell = jlstm.lstm(8, peephole="full")
      >>> params = cell.init(jax.random.key(0), 3)
      >>> state = cell.initial_state(params, (2,))
      >>> state, y = cell.step(params, state, jnp.ones((2, 3)))
      >>> y.shape
      (2, 8)
    """
    _checks.check_size("hidden_size", hidden_size)
    _checks.check_option("peephole", peephole, PEEPHOLES)
    _checks.check_size("proj_size", proj_size, allow_none=True)
    _check_clip(cell_clip)
    opts = resolve("lstm", options)
    cfg = CellConfig(
        "lstm", hidden_size=int(hidden_size), peephole=peephole, proj_size=proj_size, cell_clip=cell_clip,
        forget_bias=float(forget_bias), peephole_init=peephole_init, proj_init=proj_init, **opts.config())
    return _build(cfg)


def _name(cfg: CellConfig) -> str:
    peephole, proj_size, cell_clip = cfg.peephole, cfg.proj_size, cfg.cell_clip
    return f"lstm({cfg.hidden_size}" + (f", peephole={peephole!r}" if peephole else "") + (
        f", proj_size={proj_size}" if proj_size else "") + (f", cell_clip={cell_clip}" if cell_clip else "") + ")"


def _build(cfg: CellConfig) -> Cell:
    """The cell of a config: the fused kernel serves the LSTM without projection or clipping."""
    name, plain = _name(cfg), cfg.proj_size is None and cfg.cell_clip is None
    check = functools.partial(_check, cfg, default_where=name)
    return make_cell(
        init=functools.partial(_init, cfg), initial_state=functools.partial(_initial_state, cfg, check),
        project=functools.partial(_project, cfg), step_projected=functools.partial(_step_projected, cfg),
        output_size=_recurrent_size(cfg), name=name, config=cfg, check=check,
        sequence=make_fused(cfg.dtype, cfg.peephole) if plain else None,
        step_decoupled=functools.partial(_step_projected, cfg, decoupled=True) if cfg.proj_size is None else None,
        output_of_state=h_output, jacobian_blocks=2 if cfg.proj_size is None else None,
        # h_t = o ⊙ tanh(c_t) and, under cell_clip, |c_t| <= cell_clip. Without the clip c is unbounded, and
        # a box on h alone slowed DEER on trained LSTMs (16 -> 32 iterations): the cell declares none then.
        state_box=hull_box(h=1.0, c=cfg.cell_clip) if cfg.cell_clip and cfg.proj_size is None else None)


def _check_clip(cell_clip: Any) -> None:
    if cell_clip is None:
        return
    if isinstance(cell_clip, bool) or not isinstance(cell_clip, numbers.Real):
        raise TypeError(f"cell_clip must be a positive number or None, got {cell_clip!r} of type "
                        f"{type(cell_clip).__name__}; pass e.g. cell_clip=3.0.")
    if not float(cell_clip) > 0:
        raise ValueError(f"cell_clip must be a positive number or None, got {cell_clip!r}; "
                         f"pass e.g. cell_clip=3.0.")


def _recurrent_size(cfg: CellConfig) -> int:
    """R: the size of h (the projection size of an LSTMP, else H)."""
    return cfg.hidden_size if cfg.proj_size is None else int(cfg.proj_size)


def _init(cfg: CellConfig, key: jax.Array, input_size: int) -> LSTMParams:
    _checks.check_size("input_size", input_size)
    H, R, dt = cfg.hidden_size, _recurrent_size(cfg), cfg.param_dtype
    kx, kh, kb, kc, kp = jax.random.split(key, 5)
    w_x = cfg.kernel_init(kx, (input_size, 4 * H), dt)
    w_h = _initializers.per_gate(cfg.recurrent_init, kh, R, H, 4, dt)
    b = cfg.bias_init(kb, (4 * H,), dt)
    b = _initializers.add_to_slice(b, H, 2 * H, cfg.forget_bias)
    w_c = None
    if cfg.peephole is not None:
        pinit = cfg.peephole_init or _initializers.uniform(1.0 / H ** 0.5)
        w_c = pinit(kc, (H, 3 * H) if cfg.peephole == "full" else (3, H), dt)
    w_p = None if cfg.proj_size is None else cfg.proj_init(kp, (H, R), dt)
    return LSTMParams(w_x, w_h, b, w_c, w_p)


def _check(cfg: CellConfig, params: Any, state: Any = None, x: Any = None, where: str | None = None, *,
           default_where: str = "lstm") -> None:
    H, R = cfg.hidden_size, _recurrent_size(cfg)
    w_c_shape = {None: None, "full": (H, 3 * H), "diagonal": (3, H)}[cfg.peephole]
    _checks.check_cell_args(where or default_where, params, LSTMParams, lambda n: {
        "w_x": (n, 4 * H), "w_h": (R, 4 * H), "b": (4 * H,), "w_c": w_c_shape,
        "w_p": None if cfg.proj_size is None else (H, R)},
                            state, LSTMState, {"h": R, "c": H}, x)


def _initial_state(cfg: CellConfig, check: Any, params: LSTMParams, batch_shape: BatchShape = ()) -> LSTMState:
    check(params, where=check.keywords["default_where"] + ".initial_state")
    batch_shape = batch_tuple(batch_shape)
    state_dtype = carry_dtype(params.w_h.dtype, cfg.dtype)
    return LSTMState(h=jnp.zeros(batch_shape + (_recurrent_size(cfg),), state_dtype),
                     c=jnp.zeros(batch_shape + (cfg.hidden_size,), state_dtype))


def _project(cfg: CellConfig, params: LSTMParams, x: jax.Array) -> jax.Array:
    return matmul(x, params.w_x, cfg.dtype) + params.b.astype(cfg.dtype or params.b.dtype)


def _step_projected(cfg: CellConfig, params: LSTMParams, state: LSTMState, xp: jax.Array,
                    recurrent_mask: jax.Array | None = None, *,
                    decoupled: bool = False) -> tuple[LSTMState, jax.Array]:
    dtype, peephole = cfg.dtype, cfg.peephole
    h, c = state.h, state.c
    h_in = h if recurrent_mask is None else h * recurrent_mask
    z = xp + recurrent_matmul(h_in, params.w_h, dtype, blocks=4, decoupled=decoupled)
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    cf = c.astype(z.dtype)
    w_c, w_p = params.w_c, params.w_p  # present exactly when the config says so (checked)
    if peephole == "full" and w_c is not None:
        pi, pf, po = jnp.split(recurrent_matmul(cf, w_c, dtype, blocks=3, decoupled=decoupled), 3, axis=-1)
        zi, zf, zo = zi + pi, zf + pf, zo + po
    elif peephole == "diagonal" and w_c is not None:
        w_c = w_c.astype(z.dtype)
        zi, zf = zi + w_c[0] * cf, zf + w_c[1] * cf
    i, f, g = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg)
    c_new = f * cf + i * g
    if cfg.cell_clip is not None:
        c_new = jnp.clip(c_new, -cfg.cell_clip, cfg.cell_clip)
    if peephole == "diagonal" and w_c is not None:
        zo = zo + w_c[2] * c_new
    o = jax.nn.sigmoid(zo)
    h_new = o * jnp.tanh(c_new)
    if cfg.proj_size is not None and w_p is not None:
        h_new = matmul(h_new, w_p, dtype)
    new = LSTMState(h=h_new.astype(h.dtype), c=c_new.astype(c.dtype))
    return new, output(h_new, dtype)
