"""Finite losses and gradients over 10,000 steps and on extreme inputs (property 11 of docs/testing.md).

Default initialisation (no perturbation), H = 8, B = 2; the loss reads both the outputs
and the final state, so gradients flow through all 10,000 steps.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest
import rel_common as rc

import jlstm

T_LONG = 10_000


def _loss(cell, **scan_options):
    def loss(p, xs):
        final, ys = jlstm.scan(cell, p, xs, **scan_options)
        return jnp.mean(ys ** 2) + sum(jnp.sum(a ** 2) for a in jax.tree.leaves(final))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize("name", rc.CELL_NAMES)
def test_ten_thousand_steps_finite_loss_and_grads(name):
    cell = rc.make_cell(name, 8)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = cell.init(k1, 3)
    xs = jax.random.normal(k2, (T_LONG, 2, 3))
    value, grads = _loss(cell)(params, xs)
    chex.assert_tree_all_finite((value, grads))
    # the first step still receives a (possibly tiny) gradient that is a number
    assert grads[1].shape == xs.shape


@pytest.mark.parametrize("name", ["lstm", "lstm_full", "gru", "simple_rnn", "layer_norm_lstm"])
def test_extreme_inputs_finite(name):
    """Inputs of magnitude 1e4 saturate every gate; nothing may overflow to inf/NaN."""
    cell = rc.make_cell(name, 8)
    k1, k2 = jax.random.split(jax.random.key(1))
    params = cell.init(k1, 3)
    xs = 1e4 * jnp.sign(jax.random.normal(k2, (300, 2, 3)))
    value, grads = _loss(cell, lengths=jnp.array([300, 17]), reverse=True)(params, xs)
    chex.assert_tree_all_finite((value, grads))


def test_long_sequence_with_segment_remat_finite():
    cell = jlstm.lstm(8, peephole="diagonal")
    params = cell.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (T_LONG, 2, 3))
    value, grads = _loss(cell, remat="segment", lengths=jnp.array([T_LONG, 4321]))(params, xs)
    chex.assert_tree_all_finite((value, grads))
