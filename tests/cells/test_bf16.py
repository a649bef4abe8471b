"""bf16 through ``jlstm.scan`` for the sLSTM and the LSTM (its fused path): every matmul takes bf16
operands and accumulates in float32, the state stays float32, the outputs are bf16, and the values
follow the float32 cell to bf16 rounding; with ``param_dtype=bf16`` the parameters (and their
gradients) are stored in bf16 too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import subjaxprs

import jlstm

BF16 = jnp.dtype(jnp.bfloat16)
CELLS = {"lstm": lambda **kw: jlstm.lstm(8, **kw), "slstm": lambda **kw: jlstm.slstm(8, num_heads=2, **kw)}


def _dots(jaxpr):
    """Every ``dot_general`` of a jaxpr and its sub-jaxprs (loop bodies): ``(operand dtypes, output dtype)``."""
    out = [(tuple(v.aval.dtype for v in eqn.invars), eqn.outvars[0].aval.dtype)
           for eqn in jaxpr.eqns if eqn.primitive.name == "dot_general"]
    for sub in subjaxprs(jaxpr):
        out += _dots(sub)
    return out


@pytest.mark.parametrize("name", list(CELLS))
def test_bf16_matmuls_f32_state_bf16_outputs(name):
    cell, cell32 = CELLS[name](dtype=jnp.bfloat16), CELLS[name]()
    params = cell.init(jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (6, 2, 3))

    def run(c, p, x):
        return jlstm.scan(c, p, x)

    dots = _dots(jax.make_jaxpr(lambda p, x: run(cell, p, x))(params, xs).jaxpr)
    assert len(dots) >= 2                                         # the input projection and the recurrence
    assert all(ins == (BF16, BF16) and out == jnp.float32 for ins, out in dots), dots
    final, ys = run(cell, params, xs)
    assert ys.dtype == BF16 and all(a.dtype == jnp.float32 for a in final)
    want_final, want_ys = run(cell32, params, xs)
    np.testing.assert_allclose(np.asarray(ys, np.float32), want_ys, atol=3e-2)
    np.testing.assert_allclose(final.c, want_final.c, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("name", list(CELLS))
def test_bf16_storage_keeps_f32_state_and_bf16_gradients(name):
    cell = CELLS[name](dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    params = cell.init(jax.random.key(0), 3)
    assert all(a.dtype == BF16 for a in jax.tree.leaves(params))
    xs = jax.random.normal(jax.random.key(1), (6, 2, 3)).astype(jnp.bfloat16)
    final, ys = jlstm.scan(cell, params, xs)
    assert ys.dtype == BF16 and all(a.dtype == jnp.float32 for a in final)
    grads = jax.grad(lambda p: jnp.sum(jlstm.scan(cell, p, xs)[1].astype(jnp.float32) ** 2))(params)
    assert all(g.dtype == BF16 and bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    want = jax.grad(lambda p: jnp.sum(jlstm.scan(cell, p, xs, fast=False)[1].astype(jnp.float32) ** 2))(params)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        np.testing.assert_allclose(g, w, atol=3e-2 * max(1.0, float(np.abs(w).max())), rtol=3e-2)
