"""bfloat16 end to end (property 10 of docs/testing.md; levanter#569, jax#22045).

``dtype=jnp.bfloat16`` with ``param_dtype=jnp.bfloat16``: scan and grad run, outputs are
bf16, gradients have the params' dtype, the carry keeps its dtype across steps and
chunks (the state dtype never changes), and the values stay close to a float32 run of
the same weights at bf16 tolerance.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rel_common as rc

import jlstm

BF16 = jnp.bfloat16
T, B, I, H = 12, 3, 3, 8


def _bf16_params(name, key):
    """Params in bf16, built by each cell's own init(param_dtype=bf16)."""
    return rc.make_cell(name, H, param_dtype=BF16).init(key, I)


def test_bf16_param_dtype_init_every_cell():
    for name in rc.CELL_NAMES:
        params = rc.make_cell(name, H, param_dtype=BF16).init(jax.random.key(0), I)
        assert all(a.dtype == BF16 for a in jax.tree.leaves(params))


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-3)


@pytest.mark.parametrize("name", rc.CELL_NAMES)
def test_bf16_scan_and_grad_close_to_f32(name):
    cell = rc.make_cell(name, H, dtype=BF16, param_dtype=BF16)
    cell32 = rc.make_cell(name, H)
    k1, k2 = jax.random.split(jax.random.key(3))
    params = _bf16_params(name, k1)
    params32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    xs = jax.random.normal(k2, (T, B, I)).astype(BF16)
    lengths = jnp.array([T, 5, 0])
    state0 = cell.initial_state(params, (B,))
    dtypes0 = jax.tree.map(lambda a: a.dtype, state0)

    def loss(p, xs, cell):
        final, ys = jlstm.scan(cell, p, xs, lengths=lengths, reverse=True)
        return jnp.sum(ys.astype(jnp.float32) ** 2) + sum(
            jnp.sum(a.astype(jnp.float32)) for a in jax.tree.leaves(final)), (final, ys)

    run = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
    (value, (final, ys)), grads = run(params, xs, cell)
    (value32, (final32, ys32)), grads32 = run(params32, xs.astype(jnp.float32), cell32)

    assert ys.dtype == BF16
    assert jax.tree.map(lambda a: a.dtype, final) == dtypes0          # carry dtype unchanged
    assert jax.tree.map(lambda a: a.dtype, grads) == jax.tree.map(lambda a: a.dtype, params)
    chex.assert_tree_all_finite((value, grads, final, ys))
    assert _rel_err(ys, ys32) < 0.05
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(final32)):
        assert _rel_err(a, b) < 0.05
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads32)):
        assert _rel_err(a, b) < 0.1
    assert abs(float(value) - float(value32)) <= 0.05 * abs(float(value32)) + 1e-2


@pytest.mark.parametrize("name", ["lstm", "lstm_diagonal", "gru", "layer_norm_lstm"])
def test_bf16_carry_dtype_stable_across_steps_and_chunks(name):
    """A state fed back in keeps its dtype: per step, per chunk, and for a bf16 state given by the user."""
    cell = rc.make_cell(name, H, dtype=BF16, param_dtype=BF16)
    params = _bf16_params(name, jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, B, I)).astype(BF16)
    state = cell.initial_state(params, (B,))
    dtypes = jax.tree.map(lambda a: a.dtype, state)
    for t in range(3):
        state, y = cell.step(params, state, xs[t])
        assert jax.tree.map(lambda a: a.dtype, state) == dtypes and y.dtype == BF16
    for chunk in (xs[:4], xs[4:]):
        state, ys = jlstm.scan(cell, params, chunk, state)
        assert jax.tree.map(lambda a: a.dtype, state) == dtypes and ys.dtype == BF16
    user_state = jax.tree.map(lambda a: a.astype(BF16), cell.initial_state(params, (B,)))
    for remat in (None, "step"):
        final, _ = jlstm.scan(cell, params, xs, user_state, remat=remat, lengths=jnp.array([T, 2, 0]))
        assert all(a.dtype == BF16 for a in jax.tree.leaves(final))


@pytest.mark.parametrize("kind", ["stack", "bidirectional"])
def test_bf16_layers_end_to_end(kind):
    a = jlstm.lstm(H, dtype=BF16, param_dtype=BF16)
    b = jlstm.gru(H, dtype=BF16, param_dtype=BF16)
    if kind == "stack":
        model = jlstm.stack(jlstm.recurrent(a), jlstm.recurrent(b, reverse=True), inter_layer_dropout=0.1)
        f32_model = jlstm.stack(jlstm.recurrent(jlstm.lstm(H)), jlstm.recurrent(jlstm.gru(H)))
    else:
        model = jlstm.bidirectional(a, b, recurrent_dropout=0.1)
        f32_model = jlstm.bidirectional(jlstm.lstm(H), jlstm.gru(H))
    params = jax.tree.map(lambda a: a.astype(BF16), f32_model.init(jax.random.key(0), I))
    xs = jax.random.normal(jax.random.key(1), (T, B, I)).astype(BF16)

    def loss(p):
        final, ys = model.apply(p, xs, lengths=jnp.array([T, 4, 1]), key=jax.random.key(2))
        return jnp.mean(ys.astype(jnp.float32) ** 2), ys

    (value, ys), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert ys.dtype == BF16
    assert jax.tree.map(lambda a: a.dtype, grads) == jax.tree.map(lambda a: a.dtype, params)
    chex.assert_tree_all_finite((value, grads))
