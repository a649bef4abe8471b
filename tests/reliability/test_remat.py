"""Rematerialisation changes memory, never results (property 12 of docs/testing.md; jax#2139).

``remat`` in {None, "step", "segment", int (dividing T or not), True} gives the same
outputs, final state and gradients as no remat, with lengths and reverse, for every cell
and through the recurrent layer. No remat on the plain LSTM also takes the fused path, so
this compares the fused custom VJP with the checkpointed plain loop as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
import rel_common as rc

import jlstm

T, B, I = 10, 3, 2
REMATS = [None, "step", "segment", 3]   # 3 does not divide T = 10: the last segment is padded


@pytest.mark.parametrize("name,reverse", [(n, k % 2 == 1) for k, n in enumerate(rc.CELL_NAMES)])
def test_remat_same_values_and_grads(name, reverse):
    cell = rc.make_cell(name, 3)
    k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
    params = cell.init(k1, I)
    xs = jax.random.normal(k2, (T, B, I))
    w = jax.random.normal(k3, (T, B, cell.output_size))
    lengths = jnp.array([T, 7, 0])

    def make(remat, reverse):
        def loss(p, xs):
            final, ys = jlstm.scan(cell, p, xs, lengths=lengths, reverse=reverse, remat=remat)
            return jnp.sum(ys * w) + sum(jnp.sum(jnp.tanh(a)) for a in jax.tree.leaves(final)), (final, ys)

        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)

    @jax.jit
    def everything(p, xs):
        return {str(r): make(r, reverse)(p, xs) for r in REMATS}

    out = everything(params, xs)
    for r in REMATS[1:]:
        rc.assert_tree_close(out[str(r)], out["None"], atol=1e-5, rtol=1e-5, err_msg=f"remat={r!r}")


@pytest.mark.parametrize("remat", [True, "segment", 4])
def test_recurrent_layer_remat_matches(remat):
    cell = jlstm.lstm(4, peephole="diagonal")
    base, rem = jlstm.recurrent(cell), jlstm.recurrent(cell, remat=remat)
    params = base.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    lengths = jnp.array([T, 3, 1])

    def grads(model):
        def loss(p):
            final, ys = model.apply(p, xs, lengths=lengths)
            return jnp.sum(ys ** 2) + jnp.sum(final.c)

        return jax.jit(jax.value_and_grad(loss))(params)

    rc.assert_tree_close(grads(rem), grads(base), atol=1e-5, rtol=1e-5)


def test_remat_segment_on_one_step_and_zero_steps():
    cell = jlstm.gru(3)
    params = cell.init(jax.random.key(0), I)
    for T_ in (0, 1, 2):
        xs = jax.random.normal(jax.random.key(1), (T_, B, I))
        rc.assert_tree_close(jlstm.scan(cell, params, xs, remat="segment"), jlstm.scan(cell, params, xs))
