"""No retracing: lengths and masks are data, not shapes (property 9 of docs/testing.md; jax#837).

A jitted function that calls jlstm with lengths must trace once, whatever the length values.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rel_common as rc

import jlstm

T, B, I = 7, 3, 2
LENGTH_SETS = [[7, 7, 7], [0, 0, 0], [1, 5, 7], [3, 0, 6], [7, 2, 1]]


@pytest.mark.parametrize("name", ["lstm", "lstm_full", "gru", "layer_norm_lstm"])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_traces_once_across_lengths(name, reverse):
    cell = rc.make_cell(name, 3)
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    traces = []

    @jax.jit
    def f(p, xs, lengths):
        traces.append(1)                       # Python side effect: runs once per trace
        final, ys = jlstm.scan(cell, p, xs, lengths=lengths, reverse=reverse)
        return final, ys

    outs = [f(params, xs, jnp.asarray(L, jnp.int32)) for L in LENGTH_SETS]
    assert len(traces) == 1, f"retraced {len(traces)} times for {len(LENGTH_SETS)} length arrays"
    # and the lengths were honoured as data: different lengths, different outputs
    assert not np.allclose(outs[0][1], outs[2][1])
    np.testing.assert_array_equal(outs[1][1], 0.0)


def test_masks_and_grads_trace_once_with_chex():
    cell = jlstm.lstm(4)
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss_and_grad(p, xs, lengths, mask):
        def loss(p):
            return jnp.sum(jlstm.scan(cell, p, xs, lengths=lengths, mask=mask)[1] ** 2)

        return jax.value_and_grad(loss)(p)

    rng = np.random.default_rng(0)
    for L in LENGTH_SETS:
        mask = jnp.asarray(rng.random((T, B)) < 0.7)
        chex.assert_tree_all_finite(loss_and_grad(params, xs, jnp.asarray(L, jnp.int32), mask))


@pytest.mark.parametrize("kind", ["recurrent", "stack", "bidirectional"])
def test_layers_trace_once_across_lengths_and_keys(kind):
    cell = jlstm.gru(3)
    if kind == "recurrent":
        model = jlstm.recurrent(cell, input_dropout=0.2, recurrent_dropout=0.2, zoneout=0.1)
    elif kind == "stack":
        model = jlstm.stack(jlstm.recurrent(cell), jlstm.recurrent(jlstm.lstm(2)), inter_layer_dropout=0.3)
    else:
        model = jlstm.bidirectional(cell, recurrent_dropout=0.2)
    params = model.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    traces = []

    @jax.jit
    def f(p, xs, lengths, key):
        traces.append(1)
        return model.apply(p, xs, lengths=lengths, key=key)

    for k, L in enumerate(LENGTH_SETS):
        f(params, xs, jnp.asarray(L, jnp.int32), jax.random.key(k))
    assert len(traces) == 1
