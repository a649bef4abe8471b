"""Initial states and chunking (property 14 of docs/testing.md).

No initial state == zeros. Carrying the state across chunks == one long run, with and
without lengths (each chunk gets the part of every length that falls inside it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rel_common as rc

import jlstm

T, B, I = 12, 3, 2
CHUNKS = [(0, 5), (5, 9), (9, 12)]     # uneven on purpose


@pytest.mark.parametrize("name", rc.CELL_NAMES)
def test_no_state_equals_zeros_and_chunks_equal_one_run(name):
    cell = rc.make_cell(name, 3)
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    lengths = np.array([T, 7, 0])
    run = jax.jit(lambda p, x, s, L: jlstm.scan(cell, p, x, s, lengths=L))
    zeros = cell.initial_state(params, (B,))
    explicit = jax.tree.map(jnp.zeros_like, zeros)
    full_none = jlstm.scan(cell, params, xs)
    rc.assert_tree_equal(full_none, jlstm.scan(cell, params, xs, zeros))
    rc.assert_tree_equal(full_none, jlstm.scan(cell, params, xs, explicit))
    for use_len in (False, True):
        L = jnp.asarray(lengths if use_len else np.full(B, T))
        whole = run(params, xs, zeros, L)
        state, pieces = zeros, []
        for a, b in CHUNKS:
            chunk_len = jnp.asarray(np.clip((lengths if use_len else np.full(B, T)) - a, 0, b - a))
            state, ys = run(params, xs[a:b], state, chunk_len)
            pieces.append(ys)
        rc.assert_tree_close(state, whole[0], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(jnp.concatenate(pieces), whole[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["recurrent", "stack"])
def test_layers_chunks_equal_one_run(kind):
    if kind == "recurrent":
        model = jlstm.recurrent(jlstm.lstm(3))
    else:
        model = jlstm.stack(jlstm.recurrent(jlstm.lstm(3, proj_size=2)), jlstm.recurrent(jlstm.gru(2)))
    params = model.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    apply = jax.jit(model.apply)
    whole = apply(params, xs)
    rc.assert_tree_equal(whole, apply(params, xs, model.initial_state(params, (B,))))
    state, pieces = None, []
    for a, b in CHUNKS:
        state, ys = apply(params, xs[a:b], state)
        pieces.append(ys)
    rc.assert_tree_close(state, whole[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(jnp.concatenate(pieces), whole[1], atol=1e-5, rtol=1e-5)


def test_bidirectional_no_state_equals_zeros():
    model = jlstm.bidirectional(jlstm.lstm(3), jlstm.gru(2))
    params = model.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    lengths = jnp.array([T, 4, 0])
    rc.assert_tree_equal(model.apply(params, xs, lengths=lengths),
                         model.apply(params, xs, model.initial_state(params, (B,)), lengths=lengths))
