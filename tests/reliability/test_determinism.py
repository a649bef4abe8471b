"""Determinism (property 15 of docs/testing.md): same key, same params; same gradients on a repeat;
dropout repeats under the same key, differs under another, and is off without a key."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rel_common as rc

import jlstm

T, B, I = 6, 3, 2


def _models():
    return {
        **{name: jlstm.recurrent(rc.make_cell(name, 3)) for name in rc.CELL_NAMES},
        "stack": jlstm.stack(jlstm.recurrent(jlstm.lstm(3)), jlstm.recurrent(jlstm.gru(2))),
        "bidirectional": jlstm.bidirectional(jlstm.lstm(3, peephole="full"), jlstm.simple_rnn(2)),
    }


def test_same_key_same_params_other_key_other_params():
    for name, model in _models().items():
        a = model.init(jax.random.key(11), I)
        b = model.init(jax.random.key(11), I)
        c = model.init(jax.random.key(12), I)
        rc.assert_tree_equal(a, b, err_msg=name)
        diff = [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c))]
        assert any(diff), f"{name}: another key gave identical params"
        # legacy uint32 keys are accepted and deterministic too
        rc.assert_tree_equal(model.init(jax.random.PRNGKey(3), I), model.init(jax.random.PRNGKey(3), I))


@pytest.mark.parametrize("name", ["lstm", "lstm_full", "gru", "layer_norm_lstm"])
def test_same_gradients_on_repeat(name):
    cell = rc.make_cell(name, 3)
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))

    def loss(p):
        final, ys = jlstm.scan(cell, p, xs, lengths=jnp.array([T, 2, 4]))
        return jnp.sum(ys ** 2) + jnp.sum(final.h)

    first = jax.jit(jax.grad(loss))(params)
    again = jax.jit(jax.grad(loss))                                      # a fresh compile
    rc.assert_tree_equal(again(params), first)
    rc.assert_tree_equal(again(params), first)                           # and a repeat of it


DROPOUT_MODELS = {
    "recurrent": lambda: jlstm.recurrent(jlstm.lstm(4), input_dropout=0.3, recurrent_dropout=0.3),
    "zoneout": lambda: jlstm.recurrent(jlstm.gru(4), zoneout=0.3),
    "stack": lambda: jlstm.stack(jlstm.recurrent(jlstm.lstm(4)), jlstm.recurrent(jlstm.gru(4)),
                              inter_layer_dropout=0.5),
    "bidirectional": lambda: jlstm.bidirectional(jlstm.simple_rnn(4), recurrent_dropout=0.3, zoneout=0.2),
}


@pytest.mark.parametrize("kind", sorted(DROPOUT_MODELS))
def test_dropout_repeats_with_a_key_and_is_off_without(kind):
    model = DROPOUT_MODELS[kind]()
    params = model.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    lengths = jnp.array([T, 3, 0])
    apply = jax.jit(model.apply)
    a = apply(params, xs, lengths=lengths, key=jax.random.key(5))
    b = apply(params, xs, lengths=lengths, key=jax.random.key(5))
    c = apply(params, xs, lengths=lengths, key=jax.random.key(6))
    rc.assert_tree_equal(a, b)
    assert not np.allclose(a[1], c[1]), "another key gave the same dropout"
    np.testing.assert_array_equal(np.asarray(a[1])[:, 2], 0.0)   # padding stays zero under dropout
    # without a key: deterministic, and repeated calls agree exactly
    d = apply(params, xs, lengths=lengths)
    rc.assert_tree_equal(d, apply(params, xs, lengths=lengths))
    assert not np.allclose(a[1], d[1])
    if kind in ("recurrent", "stack"):
        # dropout off: the layer is the plain one
        if kind == "recurrent":
            plain = jlstm.recurrent(jlstm.lstm(4))
        else:
            plain = jlstm.stack(jlstm.recurrent(jlstm.lstm(4)), jlstm.recurrent(jlstm.gru(4)))
        rc.assert_tree_close(d, plain.apply(params, xs, lengths=lengths), atol=1e-6, rtol=1e-6)


def test_zoneout_without_key_is_its_expectation():
    """At inference zoneout mixes old and new state with weights (rate, 1 - rate)."""
    rate = 0.3
    cell = jlstm.gru(4)
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    final, ys = jlstm.recurrent(cell, zoneout=rate).apply(params, xs)
    h = cell.initial_state(params, (B,))
    for t in range(T):
        new, _ = cell.step(params, h, xs[t])
        h = jlstm.GRUState(rate * h.h + (1 - rate) * new.h)
        np.testing.assert_allclose(ys[t], h.h, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(final.h, h.h, atol=1e-6, rtol=1e-6)
