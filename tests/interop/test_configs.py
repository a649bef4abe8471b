"""Interop decides what it can convert from model configs, both directions included, never from names."""

from __future__ import annotations

import jax
import pytest

import jlstm
from jlstm import interop


def _params(model, n_in=3):
    return model.init(jax.random.key(0), n_in)


@pytest.mark.parametrize("backward, message", [
    (jlstm.lstm(4, cell_clip=2.0), "clips its cell state"),
    (jlstm.lstm(4, peephole="diagonal"), "peephole='diagonal'"),
])
def test_bidirectional_with_a_different_backward_cell_is_rejected(backward, message):
    model = jlstm.stack(jlstm.bidirectional(jlstm.lstm(4), backward))
    params = _params(model)
    with pytest.raises(ValueError, match=message):
        interop.to_torch_lstm(model, params, as_numpy=True)
    layer = jlstm.bidirectional(jlstm.lstm(4), backward)
    with pytest.raises(ValueError, match=message):
        interop.to_keras_lstm(layer, layer.init(jax.random.key(0), 3))


def test_bidirectional_with_equal_cells_converts_and_merge_is_read_from_config():
    model = jlstm.stack(jlstm.bidirectional(jlstm.lstm(4), jlstm.lstm(4)))
    sd = interop.to_torch_lstm(model, _params(model), as_numpy=True)
    assert sd["weight_hh_l0_reverse"].shape == (16, 4)
    summed = jlstm.stack(jlstm.bidirectional(jlstm.lstm(4), merge="sum"))
    with pytest.raises(ValueError, match="merges its directions with 'sum'"):
        interop.to_torch_lstm(summed, _params(summed), as_numpy=True)


def test_a_name_alone_no_longer_decides():
    # A user model whose *name* mentions options but whose config says nothing is not rejected.
    base = jlstm.recurrent(jlstm.lstm(4))
    renamed = base._replace(name="recurrent(lstm(4, peephole='full', cell_clip=1.0), reverse=True)")
    interop.to_torch_lstm(renamed, base.init(jax.random.key(0), 3), as_numpy=True)
    reversed_layer = jlstm.recurrent(jlstm.lstm(4), reverse=True)
    with pytest.raises(ValueError, match="reversed unidirectional layer"):
        interop.to_torch_lstm(reversed_layer, reversed_layer.init(jax.random.key(0), 3), as_numpy=True)
