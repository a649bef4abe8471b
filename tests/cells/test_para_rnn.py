"""ParaRNN's cells (jlstm.para_gru, jlstm.para_lstm): multi-head projections, the contract, Newton in a few steps.

The single-head cells run through the generic cell cases (tests/cell_cases.py) against NumPy
transcriptions; here: the multi-head projection against the same transcriptions, layers,
streaming and checkpoints, and Newton's method, which is exact at the cost of the diagonal / 2×2
blocks for these cells, against the sequential scan at T=4096 in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import np_reference as ref
import numpy as np
import pytest

import jlstm
from jlstm import streaming

FACTORIES = {"para_gru": jlstm.para_gru, "para_lstm": jlstm.para_lstm}


def _numpy_run(name, params, xs, heads):
    h = np.zeros(xs.shape[1:-1] + (params.a.shape[1],))
    c, ys = np.zeros_like(h), []
    for x in np.asarray(xs):
        if name == "para_gru":
            h = ref.para_gru_step(params, h, x, heads)
        else:
            h, c = ref.para_lstm_step(params, h, c, x, heads)
        ys.append(h)
    return np.stack(ys)


@pytest.mark.parametrize("name", FACTORIES)
def test_multi_head_projection_matches_numpy(name):
    cell = FACTORIES[name](6, heads=3)
    params = cell.init(jax.random.key(0), 9)
    assert params.w_x.shape == (9, 6) and cell.config.heads == 3
    params = params._replace(b=params.b + 0.3 * jax.random.normal(jax.random.key(1), params.b.shape))
    xs = jax.random.normal(jax.random.key(2), (20, 2, 9))
    _, ys = jlstm.scan(cell, params, xs)
    np.testing.assert_allclose(ys, _numpy_run(name, params, xs, 3), atol=2e-5)
    np.testing.assert_allclose(params.b[:6], -np.linspace(0, 1, 6) + 0.3 * np.asarray(
        jax.random.normal(jax.random.key(1), params.b.shape))[:6], atol=1e-6)   # ParaRNN's first-gate bias


def test_bad_heads_are_refused():
    with pytest.raises(ValueError, match="heads=4 must divide hidden_size=6"):
        jlstm.para_gru(6, heads=4)
    with pytest.raises(ValueError, match="heads must divide the input size, got 5"):
        jlstm.para_lstm(6, heads=2).init(jax.random.key(0), 5)
    with pytest.raises(TypeError):
        jlstm.para_lstm(6, no_such_option=1)


@pytest.mark.parametrize("name", FACTORIES)
def test_layers_streaming_and_checkpoint(name, tmp_path):
    cell = FACTORIES[name](4)
    xs = jax.random.normal(jax.random.key(3), (9, 3, 2))
    lengths = jnp.array([9, 4, 1])
    model = jlstm.stack(jlstm.recurrent(cell), jlstm.bidirectional(cell, merge="sum"))
    mp = model.init(jax.random.key(4), 2)
    _, ys = model.apply(mp, xs, lengths=lengths)
    _, y0 = jlstm.scan(cell, mp[0], xs, lengths=lengths)
    _, yf = jlstm.scan(cell, mp[1].forward, y0, lengths=lengths)
    _, yb = jlstm.scan(cell, mp[1].backward, y0, lengths=lengths, reverse=True)
    np.testing.assert_allclose(ys, yf + yb, atol=1e-6)
    step = jax.jit(streaming.make_stream_step(cell))
    outs = list(streaming.stream(step, mp[0], [xs[:5], xs[5:]], lengths=lengths))
    np.testing.assert_allclose(jnp.concatenate([o[1] for o in outs]), y0, atol=1e-6)
    jlstm.checkpoint.save(tmp_path / "p.ckpt", mp[0])
    loaded, _ = jlstm.checkpoint.load(tmp_path / "p.ckpt", like=mp[0])
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(mp[0])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", FACTORIES)
def test_newton_converges_in_a_few_iterations_at_T_4096(name):
    cell = FACTORIES[name](32)
    params = cell.init(jax.random.key(0), 8)
    xs = jax.random.normal(jax.random.key(1), (4096, 2, 8))

    @jax.jit
    def run(p, x):
        _, y_seq = jlstm.scan(cell, p, x)
        out = {m: jlstm.scan(cell, p, x, method=jlstm.Newton(m, on_failure="ignore"), return_info=True)
               for m in ("deer", "quasi_deer")}
        return y_seq, {m: (o[1], o[2].iterations, o[2].converged) for m, o in out.items()}

    y_seq, out = run(params, xs)
    for m, (ys, iterations, converged) in out.items():
        assert bool(converged) and int(iterations) <= 6, (m, int(iterations))
        assert float(jnp.max(jnp.abs(ys - y_seq))) <= 2e-5, m


@pytest.mark.parametrize("name", FACTORIES)
def test_newton_converges_in_a_few_iterations_after_training(name):
    """The issue's target after training: ≤ 6 iterations at T=4096 within 2e-5. Trained, the first DEER
    update from zeros overshoots (to 5e7 on the ParaGRU); projected onto the state box it lands in
    [-1, 1] (12-16 iterations without the projection)."""
    from jlstm.examples.tasks import adding_problem, train_on_adding

    cell = FACTORIES[name](32)
    params, losses = train_on_adding(cell)        # 400 clipped Adam steps at T=64, B=32 (notebook 07's training)
    assert float(losses[-20:].mean()) < 0.05 < float(losses[:20].mean())   # it learned (1/6: the mean)
    xs = adding_problem(jax.random.key(8), 2, 4096).xs

    @jax.jit
    def run(p, x):
        _, y_seq = jlstm.scan(cell, p, x)
        _, ys, info = jlstm.scan(cell, p, x, method=jlstm.Newton("deer", on_failure="ignore"), return_info=True)
        return y_seq, ys, info.iterations, info.converged

    y_seq, ys, iterations, converged = run(params, xs)
    assert bool(converged) and int(iterations) <= 6, int(iterations)
    assert float(jnp.max(jnp.abs(ys - y_seq))) <= 2e-5


@pytest.mark.parametrize("name", FACTORIES)
def test_newton_gradient_through_the_blocks_equals_sequential(name):
    """For these cells the adjoint recurrence runs on the exact blocks (no dense D×D Jacobians)."""
    from jlstm.newton.step import FlatState, structure

    cell = FACTORIES[name](5)
    params = cell.init(jax.random.key(5), 3)
    st = structure(cell, FlatState.of(cell.initial_state(params, (2,)), (2,)), dense=True)
    assert st.exact and st.kind == ("diag" if name == "para_gru" else "block")
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        xs = jax.random.normal(jax.random.key(6), (30, 2, 3), jnp.float64)

        def loss(p, method):
            final, ys = jlstm.scan(cell, p, xs, lengths=jnp.array([30, 17]), method=method)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(a) for a in jax.tree.leaves(final))

        grad = jax.jit(jax.grad(loss), static_argnums=1)
        g_seq, g_newton = grad(params, "sequential"), grad(params, "deer")
        for a, b in zip(jax.tree.leaves(g_newton), jax.tree.leaves(g_seq)):
            np.testing.assert_allclose(a, b, atol=1e-9)
