"""Every cell against an independent NumPy transcription of its equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cell_cases import CASES, NAMES, perturb
from jax.test_util import check_grads

import jlstm

H, I, B, T = 5, 4, 3, 50
# Over 50 float32 steps the layer-norm LSTM, which divides by the standard deviation of 5 units, drifts
# 1.0e-5 (op by op) to 1.6e-5 (one compiled program) from the float64 transcription; the others stay within 1e-5.
SCAN_TOL = {"layer_norm_lstm": 3e-5}


def _setup(name, seed=0):
    factory, np_step, fields = CASES[name]
    cell = factory(H)
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    params = perturb(cell.init(k1, I), k2)
    xs = jax.random.normal(k3, (T, B, I))
    state0 = cell.initial_state(params, (B,))
    state0 = type(state0)(*[0.5 * jax.random.normal(k, a.shape) for k, a in
                            zip(jax.random.split(k4, len(state0)), state0)])
    return cell, params, xs, state0, np_step(params), fields


@pytest.mark.parametrize("name", NAMES)
def test_step_matches_numpy(name):
    cell, params, xs, state0, np_step, fields = _setup(name)
    state, y = cell.step(params, state0, xs[0])
    want = np_step(tuple(np.asarray(getattr(state0, f)) for f in fields), np.asarray(xs[0]))
    np.testing.assert_allclose(y, want[0], atol=1e-5, rtol=1e-5)
    for f, w in zip(fields, want):
        np.testing.assert_allclose(getattr(state, f), w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("fast", [True, False])
def test_scan_50_steps_matches_numpy(name, fast):
    cell, params, xs, state0, np_step, fields = _setup(name)
    lengths = np.array([T, 17, 0])
    final, ys = jlstm.scan(cell, params, xs, state0, lengths=jnp.asarray(lengths), fast=fast)
    want_final, want_ys = _np_run(np_step, state0, fields, xs, lengths)
    tol = SCAN_TOL.get(name, 1e-5)
    np.testing.assert_allclose(ys, want_ys, atol=tol, rtol=tol)
    for f, w in zip(fields, want_final):
        np.testing.assert_allclose(getattr(final, f), w, atol=tol, rtol=tol)


def _np_run(np_step, state0, fields, xs, lengths):
    from np_reference import run

    return run(np_step, tuple(np.asarray(getattr(state0, f)) for f in fields), np.asarray(xs), lengths)


@pytest.mark.parametrize("name", NAMES)
def test_output_size_and_state_layout(name):
    cell, params, xs, state0, _, fields = _setup(name)
    assert type(state0)._fields == fields
    _, ys = jlstm.scan(cell, params, xs)
    assert ys.shape == (T, B, cell.output_size)
    assert cell.initial_state(params, (2, 7)).h.shape == (2, 7, cell.output_size)


@pytest.mark.parametrize("name", NAMES)
def test_check_grads_order_2_float64(name):
    with jax.enable_x64(True):
        factory, _, _ = CASES[name]
        cell = factory(3)
        k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), perturb(cell.init(k1, 2), k2))
        xs = jax.random.normal(k3, (4, 2, 2), jnp.float64)

        # The loop over cell.step (fast=False): its outputs and its final state (every leaf), so
        # the derivatives of each step, in both modes and to order 2, reach the checked value.
        @jax.jit
        def seq_ref(p, x):
            final, ys = jlstm.scan(cell, p, x, lengths=jnp.array([4, 2]), fast=False)
            return jnp.sum(jnp.tanh(ys)) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(final))

        check_grads(seq_ref, (params, xs), order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5, eps=1e-6)

        @jax.jit
        def seq_fast(p, x):
            return jnp.sum(jnp.tanh(jlstm.scan(cell, p, x, lengths=jnp.array([4, 2]))[1]))

        check_grads(seq_fast, (params, xs), order=2, modes=["rev"], atol=1e-5, rtol=1e-5, eps=1e-6)


def test_article_peephole_reads_previous_cell_state_in_all_gates():
    """With peephole='full', c_{t-1} reaches i, f and o; with 'diagonal', o reads the new c_t."""
    cell = jlstm.lstm(2, peephole="full")
    p = cell.init(jax.random.key(0), 1)
    p = p._replace(w_x=jnp.zeros_like(p.w_x), w_h=jnp.zeros_like(p.w_h), b=jnp.zeros_like(p.b),
                   w_c=jnp.ones_like(p.w_c))
    s = jlstm.LSTMState(h=jnp.zeros(2), c=jnp.array([1.0, -2.0]))
    new, _ = cell.step(p, s, jnp.zeros(1))
    gate = jax.nn.sigmoid(jnp.sum(s.c))  # every gate sees c_{t-1} @ ones
    np.testing.assert_allclose(new.c, gate * s.c, rtol=1e-6)          # g = tanh(0) = 0
    np.testing.assert_allclose(new.h, gate * jnp.tanh(new.c), rtol=1e-6)


def test_defaults_forget_bias_and_orthogonal_recurrent_blocks():
    cell = jlstm.lstm(8)
    p = cell.init(jax.random.key(0), 3)
    np.testing.assert_array_equal(p.b[8:16], 1.0)
    np.testing.assert_array_equal(p.b[:8], 0.0)
    for k in range(4):
        blk = p.w_h[:, 8 * k:8 * (k + 1)]
        np.testing.assert_allclose(blk.T @ blk, np.eye(8), atol=1e-5)
    assert jlstm.lstm(4, forget_bias=0.0).init(jax.random.key(0), 2).b.sum() == 0.0


def test_bf16_matmuls_keep_f32_state():
    cell = jlstm.lstm(8, dtype=jnp.bfloat16)
    p = cell.init(jax.random.key(0), 3)
    s = cell.initial_state(p, (2,))
    assert s.c.dtype == jnp.float32
    final, ys = jlstm.scan(cell, p, jnp.ones((5, 2, 3)))
    assert ys.dtype == jnp.bfloat16 and final.c.dtype == jnp.float32 and final.h.dtype == jnp.float32
    ref_final, ref_ys = jlstm.scan(jlstm.lstm(8), p, jnp.ones((5, 2, 3)))
    np.testing.assert_allclose(ys.astype(jnp.float32), ref_ys, atol=3e-2)
