"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201).

The gates read ``x_t`` alone, so each step is a linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t``
whose coefficients are known for the whole sequence at once. Row-vector convention; with
``g(x) = x + ½`` for ``x ≥ 0`` and ``σ(x)`` otherwise (the paper's positivity map)::

    minGRU   (column blocks h̃, z of w_x):
        z_t = σ(x_t W_z + b_z)
        h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ g(x_t W_h + b_h)

    minLSTM  (column blocks h̃, f, i of w_x):
        f_t = σ(x_t W_f + b_f),  i_t = σ(x_t W_i + b_i)
        f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)
        h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ g(x_t W_h + b_h)

The block order and ``g`` follow the reference implementation (``minGRU_pytorch``,
``to_hidden_and_gate`` and ``to_hidden_and_f_i_gate``, which have no bias; ours starts at
zero). ``g`` exists in the paper for its log-space form, where ``h`` must stay positive; it
is kept here so that the weights mean the same thing as the reference's.

Both forms compute the coefficients ``(a_t, b_t)`` with the same function, from log-sigmoids
that are exact in float32 at pre-activations of ±50 and beyond, so neither overflows:

* ``step`` (and ``method="sequential"``): ``h = a ⊙ h + b``, one step at a time.
* ``method="parallel"``: :func:`jlstm.linear_recurrence` composes the pairs ``(a, b)`` over the
  whole sequence (the cells declare them as ``CellFast.linear``; :func:`jlstm.core.linear.linear_form`
  turns that into the form, resets included: a reset sets ``a_t = 0``). The composition cannot
  overflow (``0 < a ≤ 1`` and the weights of the ``b`` sum to at most 1), so it needs no
  logarithms, and the initial state, which enters linearly, may have any sign (the log-space
  form of the paper and of ``minGRU_pytorch`` needs ``h_0 > 0``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jlstm.cells import initializers as _initializers
from jlstm.cells.make_cell import h_output, make_cell
from jlstm.cells.options import MinCellOptions, Unpack, resolve
from jlstm.core import checks as _checks
from jlstm.core.linear import linear_form
from jlstm.core.math import carry_dtype, matmul, output
from jlstm.core.plan import current_plan
from jlstm.core.types import Cell, CellConfig, batch_tuple


class MinGRUParams(NamedTuple):
    """minGRU parameters: ``w_x`` [input, 2H] and ``b`` [2H], column blocks (h̃, z)."""

    w_x: jax.Array
    b: jax.Array


class MinGRUState(NamedTuple):
    """minGRU state: ``h`` of shape [*batch, H]."""

    h: jax.Array


class MinLSTMParams(NamedTuple):
    """minLSTM parameters: ``w_x`` [input, 3H] and ``b`` [3H], column blocks (h̃, f, i)."""

    w_x: jax.Array
    b: jax.Array


class MinLSTMState(NamedTuple):
    """minLSTM state: ``h`` of shape [*batch, H]."""

    h: jax.Array


def g(x: jax.Array) -> jax.Array:
    """The positivity map of minGRU/minLSTM: ``x + ½`` for ``x ≥ 0``, else ``σ(x)``."""
    return jnp.where(x >= 0, jnp.maximum(x, 0) + 0.5, jax.nn.sigmoid(x))


def _sigmoid_pair(k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(σ(-k), σ(k))`` from one ``exp(-|k|)``: each exact in its own tail, none rounds to 1 - tiny."""
    e = jnp.exp(-jnp.abs(k))
    big, small = 1.0 / (1.0 + e), e / (1.0 + e)
    pos = k >= 0
    return jnp.where(pos, small, big), jnp.where(pos, big, small)


def _gru_coeffs(xp: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(a, b)`` of minGRU's ``h_t = a h_{t-1} + b``: ``a = 1 - z = σ(-k_z)``, ``b = z g(h̃)``."""
    k_h, k_z = jnp.split(xp, 2, axis=-1)
    one_minus_z, z = _sigmoid_pair(k_z)
    return one_minus_z, z * g(k_h)


def _lstm_coeffs(xp: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(a, b) = (f', i' g(h̃))`` of minLSTM.

    With ``d = log(i/f) = softplus(-k_f) - softplus(-k_i)``, ``f' = σ(-d)`` and ``i' = σ(d)``:
    the ratio stays finite where both sigmoids underflow (pre-activations below -100 in
    float32), and ``f' + i' = 1`` holds to rounding.
    """
    k_h, k_f, k_i = jnp.split(xp, 3, axis=-1)
    f_norm, i_norm = _sigmoid_pair(jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i))
    return f_norm, i_norm * g(k_h)


def _auto(T: int) -> str:
    """The plan's choice: sequential on CPU (the parallel form measured 0.8-1.25x its speed there),
    parallel on accelerators from ``plan.parallel_from_T`` steps."""
    start = current_plan().parallel_from_T
    return "parallel" if start is not None and T >= start else "sequential"


class _Kind(NamedTuple):
    """What distinguishes minGRU from minLSTM: gate blocks, the tuples, the coefficients."""

    blocks: int
    params_type: type
    state_type: type
    coeffs: Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def _kinds() -> dict[str, _Kind]:
    return {"min_gru": _Kind(2, MinGRUParams, MinGRUState, _gru_coeffs),
            "min_lstm": _Kind(3, MinLSTMParams, MinLSTMState, _lstm_coeffs)}


def _min_cell(kind: str, hidden_size: int, options: Mapping[str, Any]) -> Cell:
    _checks.check_size("hidden_size", hidden_size)
    opts = resolve(kind, options, MinCellOptions)
    cfg = CellConfig(kind, hidden_size=int(hidden_size), **opts.config())
    check = functools.partial(_check, cfg)
    step = functools.partial(_step_projected, cfg)
    cell = make_cell(init=functools.partial(_init, cfg), initial_state=functools.partial(_initial_state, cfg),
                     project=functools.partial(_project, cfg), step_projected=step, output_size=cfg.hidden_size,
                     name=_where(cfg), config=cfg, check=check, auto_method=_auto,
                     step_decoupled=step,   # already elementwise in h
                     output_of_state=h_output, linear=functools.partial(_linear, cfg),
                     jacobian_blocks=1, jacobian_exact=True)
    # the parallel form: jlstm.linear_recurrence over the declared coefficients
    fast = cell.fast
    assert fast is not None  # make_cell always builds one
    return dataclasses.replace(cell, fast=fast._replace(methods=(("parallel", linear_form(cell)),)))


def _where(cfg: CellConfig) -> str:
    return f"{cfg.kind}({cfg.hidden_size})"


def _init(cfg: CellConfig, key: jax.Array, input_size: int) -> Any:
    _checks.check_size("input_size", input_size)
    kind, H = _kinds()[cfg.kind], cfg.hidden_size
    kx, kb = jax.random.split(key)
    return kind.params_type(w_x=_initializers.per_gate(cfg.kernel_init, kx, input_size, H, kind.blocks,
                                                       cfg.param_dtype),
                            b=cfg.bias_init(kb, (kind.blocks * H,), cfg.param_dtype))


def _check(cfg: CellConfig, params: Any, state: Any = None, x: Any = None, where: str | None = None) -> None:
    kind, H = _kinds()[cfg.kind], cfg.hidden_size

    def shapes(n: int) -> dict:
        return {"w_x": (n, kind.blocks * H), "b": (kind.blocks * H,)}

    _checks.check_cell_args(where or _where(cfg), params, kind.params_type, shapes, state, kind.state_type,
                            {"h": H}, x)


def _initial_state(cfg: CellConfig, params: Any, batch_shape: Any = ()) -> Any:
    _check(cfg, params, where=_where(cfg) + ".initial_state")
    h = jnp.zeros(batch_tuple(batch_shape) + (cfg.hidden_size,), carry_dtype(params.w_x.dtype, cfg.dtype))
    return _kinds()[cfg.kind].state_type(h=h)


def _project(cfg: CellConfig, params: Any, x: jax.Array) -> jax.Array:
    return matmul(x, params.w_x, cfg.dtype) + params.b.astype(cfg.dtype or params.b.dtype)


def _linear(cfg: CellConfig, params: Any, xp: jax.Array) -> tuple[jax.Array, jax.Array]:
    del params
    return _kinds()[cfg.kind].coeffs(xp)


def _step_projected(cfg: CellConfig, params: Any, state: Any, xp: jax.Array,
                    recurrent_mask: jax.Array | None = None) -> tuple[Any, jax.Array]:
    if recurrent_mask is not None:
        raise ValueError(
            f"{_where(cfg)}: recurrent dropout does not apply to {cfg.kind}: its gates read x_t alone, so there "
            f"is no recurrent matmul on h_(t-1) to drop units from. Use input_dropout or zoneout instead.")
    h = state.h
    wide = jnp.promote_types(xp.dtype, h.dtype)
    a, b = _linear(cfg, params, xp.astype(wide))
    h_new = a * h.astype(wide) + b
    return type(state)(h=h_new.astype(h.dtype)), output(h_new, cfg.dtype)


def min_gru(hidden_size: int, **options: Unpack[MinCellOptions]) -> Cell:
    """Build a minGRU cell (see the module docstring for the equations).

    ``jlstm.scan(cell, params, xs, method=...)`` takes ``"sequential"`` (a loop over the step),
    ``"parallel"`` (:func:`jlstm.linear_recurrence` over the whole sequence) or ``"auto"``
    (sequential on CPU, where it measured about as fast; parallel from T = 32 on GPU and TPU). Both
    forms compute the same function, with lengths, masks, resets and reverse, and agree at T = 100,000
    with gate pre-activations of ±50. There is no recurrent matmul, so recurrent dropout
    raises an error.

    Args:
      hidden_size: number of units H.
      **options: ``kernel_init`` (of ``w_x``, per block), ``bias_init``, ``dtype`` (of the
        input matmul and the outputs) and ``param_dtype``: see :class:`jlstm.MinCellOptions`.

    Returns:
      A :class:`jlstm.Cell` whose ``step(params, state, x)`` returns ``(MinGRUState, h_t)``.

    Example:
      >>> cell = jlstm.min_gru(16)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> xs = jnp.ones((100, 2, 4))
      >>> _, ys = jlstm.scan(cell, params, xs, method="parallel")
      >>> _, ys_loop = jlstm.scan(cell, params, xs, method="sequential")
      >>> bool(jnp.allclose(ys, ys_loop, atol=1e-5))
      True
    """
    return _min_cell("min_gru", hidden_size, options)


def min_lstm(hidden_size: int, **options: Unpack[MinCellOptions]) -> Cell:
    """Build a minLSTM cell (see the module docstring for the equations).

    The forms and arguments are those of :func:`jlstm.min_gru`; ``w_x`` has three blocks
    (h̃, f, i) and the normalised gates ``f' + i' = 1`` keep ``h`` on the scale of ``g(h̃)``.

    Returns:
      A :class:`jlstm.Cell` whose ``step(params, state, x)`` returns ``(MinLSTMState, h_t)``.

    Example:
      >>> cell = jlstm.min_lstm(8)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> state, ys = jlstm.scan(cell, params, jnp.ones((64, 3)), lengths=None, method="auto")
      >>> ys.shape, state.h.shape
      ((64, 8), (8,))
    """
    return _min_cell("min_lstm", hidden_size, options)
