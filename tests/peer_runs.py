"""What the interop tests compare against a peer library: a jlstm run's outputs, final state and input gradient."""

import jax
import jax.numpy as jnp

import jlstm


def jlstm_run(cell, params, xs, state, cot):
    """``jlstm.scan`` of ``cell`` from ``state`` over time-major ``xs``: ``(ys, final, d sum(ys·cot) / d xs)``."""
    def run(xs):
        final, ys = jlstm.scan(cell, params, xs, state)
        return jnp.sum(ys * cot), (ys, final)

    (_, (ys, final)), dx = jax.jit(jax.value_and_grad(run, has_aux=True))(jnp.asarray(xs))
    return ys, final, dx
