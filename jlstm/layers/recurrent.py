"""A recurrent sequence layer built from any cell, with dropout and zoneout."""

from __future__ import annotations

import functools
from typing import Any, Union

import jax

from jlstm._scan import ScanOptions, eager_call, run_scan
from jlstm.core import checks as _checks
from jlstm.core.types import Cell, CellConfig, Method, RematPolicy, SequenceModel
from jlstm.layers.dropout import check_key, dropout, variational_mask
from jlstm.strategies.base import StepRegularisers
from jlstm.strategies.sequential import check_remat, check_unroll


def recurrent(
    cell: Cell,
    *,
    reverse: bool = False,
    unroll: Union[int, bool] | None = None,
    remat: RematPolicy = None,
    input_dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout: float = 0.0,
    fast: bool = True,
    method: Method = "auto",
) -> SequenceModel:
    """Turn a cell into a sequence layer: ``apply`` runs :func:`jlstm.scan`.

    Args:
      cell: any :class:`jlstm.Cell`.
      reverse: process each sequence (each valid prefix, given lengths) backwards.
      unroll, remat, fast, method: passed to :func:`jlstm.scan`.
      input_dropout: rate of inverted dropout on the inputs, per element and step.
      recurrent_dropout: rate of variational dropout on ``h_{t-1}`` inside the recurrent
        matmul; one mask per sequence (Gal & Ghahramani 2016).
      zoneout: probability that a state unit keeps its previous value (Krueger et al.
        2017). At inference (no key) the update is its expectation.

    The regularisers act only when ``apply`` gets a ``key``; ``apply(params, xs)``
    without one is deterministic.

    Returns:
      A :class:`jlstm.SequenceModel` whose params are the cell's params and whose
      state is the cell's state. ``apply(params, xs, state=None, *, lengths=None,
      mask=None, resets=None, key=None, time_major=True) -> (final_state, ys)``.

    Example:
      >>> layer = jlstm.recurrent(jlstm.lstm(32), recurrent_dropout=0.25)
      >>> params = layer.init(jax.random.key(0), 8)
      >>> state, ys = layer.apply(params, jnp.ones((20, 4, 8)), key=jax.random.key(1))
    """
    _check_options(cell, input_dropout, recurrent_dropout, zoneout, unroll, remat)
    name = f"recurrent({cell.name}" + (", reverse=True" if reverse else "") + ")"
    options = ScanOptions(reverse=reverse, unroll=unroll, remat=remat, fast=fast, method=method)
    config = CellConfig("recurrent", cell=cell, reverse=reverse, unroll=unroll, remat=remat,
                        input_dropout=input_dropout, recurrent_dropout=recurrent_dropout, zoneout=zoneout,
                        fast=fast, method=method)

    return SequenceModel(init=cell.init, apply=functools.partial(_apply, config, options, name),
                         initial_state=cell.initial_state, output_size=cell.output_size, name=name, config=config)


def _apply(config: CellConfig, options: ScanOptions, name: str, params: Any, xs: jax.Array, state: Any = None, *,
           lengths=None, mask=None, resets=None, key=None, time_major: bool = True) -> tuple[Any, jax.Array]:
    """The layer's ``apply``; eagerly, compiled once per layer and shapes (:func:`jlstm._scan.eager_call`)."""
    final, ys, _ = eager_call(_run, (config, options, name, time_major),
                              (params, xs, state, lengths, mask, resets, key),
                              method=options.method, time_major=time_major, where=name + ".apply")
    return final, ys


def _run(config: CellConfig, options: ScanOptions, name: str, time_major: bool, params: Any, xs: jax.Array,
         state: Any, lengths: Any, mask: Any, resets: Any, key: Any) -> tuple[Any, jax.Array, Any]:
    """The regularisers drawn from ``key``, then :func:`jlstm.scan`: ``(final, ys, info)``."""
    where = name + ".apply"
    check_key(key, where)
    cell = config.cell
    rec_mask = zo_key = None
    if key is not None:
        k_in, k_rec, zo_key = jax.random.split(key, 3)
        if config.input_dropout:
            _checks.check_array("xs", xs, where)
            xs = dropout(k_in, config.input_dropout, xs)
        if config.recurrent_dropout:
            batch = xs.shape[:-2] if not time_major else xs.shape[1:-1]
            rec_mask = variational_mask(k_rec, config.recurrent_dropout, tuple(batch) + (cell.output_size,),
                                        xs.dtype)
    regs = StepRegularisers(recurrent_mask=rec_mask, zoneout=config.zoneout, zoneout_key=zo_key)
    return run_scan(cell, params, xs, state, lengths, mask, options._replace(time_major=time_major), regs,
                    where, resets=resets)


def _check_options(cell: Any, input_dropout: float, recurrent_dropout: float, zoneout: float,
                   unroll: Any, remat: Any) -> None:
    """The layer's trace-free checks: the cell, the rates, and what the cell can support."""
    if not isinstance(cell, Cell):
        raise TypeError(f"recurrent: cell must be a jlstm.Cell such as jlstm.lstm(32), got "
                        f"{type(cell).__name__}.")
    _checks.check_rate("input_dropout", input_dropout)
    _checks.check_rate("recurrent_dropout", recurrent_dropout)
    _checks.check_rate("zoneout", zoneout)
    check_unroll(unroll)
    check_remat(remat)
    if recurrent_dropout and (cell.fast is None or cell.fast.step_projected is None):
        raise ValueError(
            f"recurrent: recurrent_dropout acts on h_(t-1) inside the recurrent matmul, which needs a cell "
            f"with fast.project and fast.step_projected (build it with jlstm.make_cell); {cell.name} has "
            f"only a step. Use input_dropout or zoneout instead.")
    if zoneout and cell.fast is not None and not cell.fast.mixable_state:
        raise ValueError(
            f"recurrent: zoneout mixes the previous and the new state unit by unit, but {cell.name} declares "
            f"that a mix of two of its states is no state (its state carries a log-space stabiliser). "
            f"Use input_dropout (or a stack's inter_layer_dropout) instead.")
