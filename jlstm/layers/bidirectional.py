"""Bidirectional layers: a forward and a length-aware backward pass, merged per step."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jlstm.core import checks as _checks
from jlstm.core.types import Cell, CellConfig, Merge, SequenceModel
from jlstm.layers.dropout import check_key
from jlstm.layers.recurrent import recurrent

MERGES = ("concat", "sum", "mean")


class BidirectionalParams(NamedTuple):
    """Params of a bidirectional layer: one entry per direction."""

    forward: Any
    backward: Any


class BidirectionalState(NamedTuple):
    """State of a bidirectional layer. ``backward`` is the state after the first valid step."""

    forward: Any
    backward: Any


def bidirectional(
    cell: Cell,
    backward_cell: Cell | None = None,
    *,
    merge: Merge = "concat",
    **layer_options: Any,
) -> SequenceModel:
    """A bidirectional recurrent layer.

    The backward direction reads each sequence from its last valid step (given
    ``lengths``) to its first, and its outputs are put back in the original order
    before merging, so ``ys[t]`` combines both directions' views of step ``t``.

    Args:
      cell: the forward cell.
      backward_cell: the backward cell; defaults to ``cell`` (separate params).
      merge: ``"concat"`` (output size 2H), ``"sum"`` or ``"mean"``.
      **layer_options: options of :func:`jlstm.recurrent` (dropout, zoneout, unroll, remat).

    Returns:
      A sequence model with :class:`BidirectionalParams` and :class:`BidirectionalState`.

    Example:
      >>> layer = jlstm.bidirectional(jlstm.lstm(32))
      >>> params = layer.init(jax.random.key(0), 8)
      >>> state, ys = layer.apply(params, jnp.ones((10, 2, 8)), lengths=jnp.array([10, 3]))
      >>> ys.shape
      (10, 2, 64)
    """
    _checks.check_option("merge", merge, MERGES)
    backward_cell = cell if backward_cell is None else backward_cell
    if "reverse" in layer_options:
        raise ValueError("bidirectional sets the direction of each layer itself; drop reverse=.")
    fwd = recurrent(cell, **layer_options)
    bwd = recurrent(backward_cell, reverse=True, **layer_options)
    if merge != "concat" and fwd.output_size != bwd.output_size:
        raise ValueError(f"merge={merge!r} needs equal output sizes, got {fwd.output_size} and "
                         f"{bwd.output_size}; use merge='concat'.")
    out = fwd.output_size + bwd.output_size if merge == "concat" else fwd.output_size
    bwd_name = "" if backward_cell == cell else f", backward={backward_cell.name}"
    name = f"bidirectional({cell.name}{bwd_name}, merge={merge!r})"
    config = CellConfig("bidirectional", forward=fwd, backward=bwd, merge=merge)
    return SequenceModel(init=functools.partial(_init, fwd, bwd), apply=functools.partial(_apply, config, name),
                         initial_state=functools.partial(_initial_state, fwd, bwd, name), output_size=out,
                         name=name, config=config)


def _check_params(params: Any, name: str) -> None:
    if not isinstance(params, BidirectionalParams):
        raise TypeError(f"{name}: params must be BidirectionalParams(forward, backward), got "
                        f"{type(params).__name__}; build them with this layer's init.")


def _init(fwd: SequenceModel, bwd: SequenceModel, key: jax.Array, input_size: int) -> BidirectionalParams:
    kf, kb = jax.random.split(key)
    return BidirectionalParams(fwd.init(kf, input_size), bwd.init(kb, input_size))


def _initial_state(fwd: SequenceModel, bwd: SequenceModel, name: str, params: Any,
                   batch_shape: Any = ()) -> BidirectionalState:
    _check_params(params, name)
    return BidirectionalState(fwd.initial_state(params.forward, batch_shape),
                              bwd.initial_state(params.backward, batch_shape))


def _apply(config: CellConfig, name: str, params: Any, xs: jax.Array, state: Any = None, *, lengths=None,
           mask=None, resets=None, key=None, time_major: bool = True) -> tuple[BidirectionalState, jax.Array]:
    _check_params(params, name)
    check_key(key, name + ".apply")
    if state is not None and not isinstance(state, BidirectionalState):
        raise TypeError(f"{name}: state must be a BidirectionalState, got "
                        f"{type(state).__name__}; build it with this layer's initial_state.")
    kf, kb = (None, None) if key is None else jax.random.split(key)
    sf, sb = (None, None) if state is None else (state.forward, state.backward)
    extra = {} if resets is None else {"resets": resets}
    final_f, ys_f = config.forward.apply(params.forward, xs, sf, lengths=lengths, mask=mask, key=kf,
                                         time_major=time_major, **extra)
    final_b, ys_b = config.backward.apply(params.backward, xs, sb, lengths=lengths, mask=mask, key=kb,
                                          time_major=time_major, **extra)
    return BidirectionalState(final_f, final_b), _merge(config.merge, ys_f, ys_b)


def _merge(merge: str, ys_f: jax.Array, ys_b: jax.Array) -> jax.Array:
    """Combine the two directions' outputs per step."""
    if merge == "concat":
        return jnp.concatenate([ys_f, ys_b], axis=-1)
    if merge == "sum":
        return ys_f + ys_b
    return 0.5 * (ys_f + ys_b)
