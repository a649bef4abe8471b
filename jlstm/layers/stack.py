"""Stacking sequence layers, with dropout between them (stax's ``serial`` for sequences)."""

from __future__ import annotations

import functools
from typing import Any

import jax

from jlstm.core import checks as _checks
from jlstm.core.deprecation import renamed_keyword
from jlstm.core.types import CellConfig, SequenceModel
from jlstm.layers.dropout import check_key, dropout


@renamed_keyword("dropout_rate", "inter_layer_dropout")
def stack(*layers: SequenceModel, inter_layer_dropout: float = 0.0) -> SequenceModel:
    """Compose sequence layers: each layer reads the outputs of the one before.

    Args:
      *layers: :class:`jlstm.SequenceModel` s, applied first to last.
      inter_layer_dropout: the rate of inverted dropout between layers, on the outputs of
        every layer but the last: the semantics of PyTorch's ``nn.LSTM(dropout=)``. Active only
        when ``apply`` gets a key. Within a layer, :func:`jlstm.recurrent` has
        ``input_dropout``, ``recurrent_dropout`` and ``zoneout``. ``dropout_rate=``, the former
        name, still works but is deprecated (a ``DeprecationWarning``).

    Returns:
      A sequence model whose params and state are tuples with one entry per layer.
      ``apply(params, xs, state=None, *, lengths=None, mask=None, key=None,
      time_major=True) -> (final_states, ys)``.

    Example:
      >>> model = jlstm.stack(jlstm.recurrent(jlstm.lstm(64)),
      ...                     jlstm.recurrent(jlstm.lstm(32)), inter_layer_dropout=0.1)
      >>> params = model.init(jax.random.key(0), 16)
    """
    if not layers:
        raise ValueError("stack needs at least one layer, e.g. stack(recurrent(lstm(32))).")
    for k, layer in enumerate(layers):
        if not isinstance(layer, SequenceModel):
            raise TypeError(
                f"stack: layer {k} must be a jlstm.SequenceModel (e.g. jlstm.recurrent(cell)), "
                f"got {type(layer).__name__}; wrap cells with jlstm.recurrent.")
    _checks.check_rate("inter_layer_dropout", inter_layer_dropout)
    name = "stack(" + ", ".join(layer.name for layer in layers) + ")"
    config = CellConfig("stack", layers=tuple(layers), inter_layer_dropout=inter_layer_dropout)
    return SequenceModel(init=functools.partial(_init, layers), apply=functools.partial(_apply, config, name),
                         initial_state=functools.partial(_initial_state, layers, name),
                         output_size=layers[-1].output_size, name=name, config=config)


def _check_tuple(name: str, n: int, what: str, value: Any) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != n:
        got = len(value) if isinstance(value, (tuple, list)) else type(value).__name__
        raise ValueError(
            f"{name}: {what} must be a tuple with one entry per layer ({n}), got {got}; "
            f"build it with this model's init / initial_state.")


def _init(layers: tuple[SequenceModel, ...], key: jax.Array, input_size: int) -> tuple:
    _checks.check_size("input_size", input_size)
    params, size = [], input_size
    for layer, k in zip(layers, jax.random.split(key, len(layers))):
        params.append(layer.init(k, size))
        size = layer.output_size
    return tuple(params)


def _initial_state(layers: tuple[SequenceModel, ...], name: str, params: Any, batch_shape: Any = ()) -> tuple:
    _check_tuple(name, len(layers), "params", params)
    return tuple(layer.initial_state(p, batch_shape) for layer, p in zip(layers, params))


def _apply(config: CellConfig, name: str, params: Any, xs: jax.Array, state: Any = None, *, lengths=None,
           mask=None, resets=None, key=None, time_major: bool = True) -> tuple[tuple, jax.Array]:
    layers, rate = config.layers, config.inter_layer_dropout
    n = len(layers)
    _check_tuple(name, n, "params", params)
    check_key(key, name + ".apply")
    if state is not None:
        _check_tuple(name, n, "state", state)
    keys = [None] * (2 * n) if key is None else list(jax.random.split(key, 2 * n))
    extra = {} if resets is None else {"resets": resets}
    finals, ys = [], xs
    for k, layer in enumerate(layers):
        final, ys = layer.apply(params[k], ys, None if state is None else state[k], lengths=lengths, mask=mask,
                                key=keys[2 * k], time_major=time_major, **extra)
        finals.append(final)
        drop_key = keys[2 * k + 1]
        if k < n - 1 and drop_key is not None and rate:
            ys = dropout(drop_key, rate, ys)
    return tuple(finals), ys
