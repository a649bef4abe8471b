"""jlstm.scan: a Python loop over step, lengths, masks, reverse and the JAX transforms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cell_cases import CASES, NAMES, perturb

import jlstm

H, I, B, T = 4, 3, 3, 9


def _setup(name, seed=0):
    cell = CASES[name][0](H)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = perturb(cell.init(k1, I), k2)
    xs = jax.random.normal(k3, (T, B, I))
    return cell, params, xs


@functools.cache
def _jit_step(cell):
    """``cell.step`` compiled once per cell and shape (eagerly, each of its operations compiles alone)."""
    return jax.jit(cell.step)


def _loop(cell, params, xs, state=None):
    state = cell.initial_state(params, xs.shape[1:-1]) if state is None else state
    step = _jit_step(cell)
    ys = []
    for t in range(xs.shape[0]):
        state, y = step(params, state, xs[t])
        ys.append(y)
    if not ys:
        return state, jnp.zeros((0,) + xs.shape[1:-1] + (cell.output_size,))
    return state, jnp.stack(ys)


def _close(a, b, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=atol)


@pytest.mark.parametrize("name", NAMES)
def test_scan_equals_python_loop_per_example(name):
    cell, params, xs = _setup(name)
    final, ys = jlstm.scan(cell, params, xs)
    for b in range(B):
        f_b, y_b = _loop(cell, params, xs[:, b])
        _close(jax.tree.map(lambda a: a[b], final), f_b)
        _close(ys[:, b], y_b)


@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_equals_each_sequence_alone_with_gradients(name):
    cell, params, xs = _setup(name)
    lengths = jnp.array([T, 5, 1])
    garbage = xs.at[5:, 1].set(jnp.nan).at[1:, 2].set(jnp.inf)

    def loss_padded(p, x):
        final, ys = jlstm.scan(cell, p, x, lengths=lengths)
        return jnp.sum(ys ** 2) + sum(jnp.sum(a) for a in jax.tree.leaves(final)), (final, ys)

    (_, (final, ys)), (g_p, g_x) = jax.jit(jax.value_and_grad(loss_padded, argnums=(0, 1), has_aux=True))(
        params, garbage)
    assert np.isfinite(np.asarray(g_x)).all()
    g_total = jax.tree.map(jnp.zeros_like, params)

    def loss_alone(p, x):
        f, y = jlstm.scan(cell, p, x)
        return jnp.sum(y ** 2) + sum(jnp.sum(a) for a in jax.tree.leaves(f)), (f, y)

    grad_alone = jax.jit(jax.value_and_grad(loss_alone, argnums=(0, 1), has_aux=True))  # one program per length
    for b in range(B):
        L = int(lengths[b])
        (_, (f_b, y_b)), (gp_b, gx_b) = grad_alone(params, xs[:L, b])
        _close(jax.tree.map(lambda a: a[b], final), f_b)
        _close(ys[:L, b], y_b)
        np.testing.assert_array_equal(ys[L:, b], 0.0)
        _close(g_x[:L, b], gx_b)
        np.testing.assert_array_equal(g_x[L:, b], 0.0)
        g_total = jax.tree.map(jnp.add, g_total, gp_b)
    _close(g_p, g_total, atol=1e-4)


@pytest.mark.parametrize("name", ["lstm", "gru", "lstm_full_peephole"])
def test_zero_length_keeps_initial_state(name):
    cell, params, xs = _setup(name)
    s0 = jax.tree.map(lambda a: a + 0.25, cell.initial_state(params, (B,)))
    final, ys = jlstm.scan(cell, params, xs, s0, lengths=jnp.zeros(B, jnp.int32))
    _close(final, s0)
    np.testing.assert_array_equal(ys, 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_mask_keeps_state_at_missing_steps(name):
    cell, params, xs = _setup(name)
    mask = jnp.ones((T, B), bool).at[2, 0].set(False).at[4:6, 1].set(False)
    final, ys = jlstm.scan(cell, params, xs.at[2, 0].set(jnp.nan), mask=mask)
    for b in range(B):
        keep = np.asarray(mask[:, b])
        f_b, y_b = _loop(cell, params, xs[keep, b])
        _close(jax.tree.map(lambda a: a[b], final), f_b)
        _close(ys[keep, b], y_b)
        np.testing.assert_array_equal(ys[~keep, b], 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_reverse_with_lengths_reverses_only_the_valid_prefix(name):
    cell, params, xs = _setup(name)
    lengths = jnp.array([T, 6, 0])
    final, ys = jlstm.scan(cell, params, xs, lengths=lengths, reverse=True)
    for b in range(B):
        L = int(lengths[b])
        f_b, y_b = _loop(cell, params, xs[:L, b][::-1])
        _close(jax.tree.map(lambda a: a[b], final), f_b)
        _close(ys[:L, b], y_b[::-1])
        np.testing.assert_array_equal(ys[L:, b], 0.0)


def test_reverse_without_lengths_flips_time():
    cell, params, xs = _setup("gru")
    final, ys = jlstm.scan(cell, params, xs, reverse=True)
    f2, y2 = jlstm.scan(cell, params, xs[::-1])
    _close(final, f2)
    _close(ys, y2[::-1])


@pytest.mark.parametrize("name", ["lstm", "lstm_diagonal_peephole", "gru", "simple_rnn"])
def test_jit_vmap_and_unroll_are_invariant(name):
    cell, params, xs = _setup(name)
    lengths = jnp.array([T, 3, 7])
    ref = jlstm.scan(cell, params, xs, lengths=lengths)
    jitted = jax.jit(lambda p, x, L: jlstm.scan(cell, p, x, lengths=L))(params, xs, lengths)
    _close(ref, jitted)
    per_seq = jax.vmap(lambda x, L: jlstm.scan(cell, params, x, lengths=L), in_axes=(1, 0),
                       out_axes=(0, 1))(xs, lengths)
    _close(ref, per_seq)
    for unroll in (2, 4, True):
        _close(ref, jlstm.scan(cell, params, xs, lengths=lengths, unroll=unroll))
    g = jax.jit(jax.grad(lambda p: jnp.sum(jlstm.scan(cell, p, xs, lengths=lengths, unroll=3)[1])))(params)
    g1 = jax.jit(jax.grad(lambda p: jnp.sum(jlstm.scan(cell, p, xs, lengths=lengths, unroll=1)[1])))(params)
    _close(g, g1)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_batch_major_layout_and_several_batch_dims(name):
    cell, params, _ = _setup(name)
    xs = jax.random.normal(jax.random.key(3), (T, 2, 3, I))
    lengths = jnp.array([[9, 1, 4], [0, 5, 9]])
    mask = jax.random.bernoulli(jax.random.key(4), 0.8, (T, 2, 3))
    final, ys = jlstm.scan(cell, params, xs, lengths=lengths, mask=mask)
    assert ys.shape == (T, 2, 3, cell.output_size)
    flat_final, flat_ys = jlstm.scan(cell, params, xs.reshape(T, 6, I), lengths=lengths.reshape(6),
                                     mask=mask.reshape(T, 6))
    _close(jax.tree.map(lambda a: a.reshape(6, -1), final), flat_final)
    _close(ys.reshape(T, 6, -1), flat_ys)
    bm_final, bm_ys = jlstm.scan(cell, params, jnp.moveaxis(xs, 0, 2), lengths=lengths,
                                 mask=jnp.moveaxis(mask, 0, 2), time_major=False)
    _close(bm_final, final)
    _close(jnp.moveaxis(bm_ys, 2, 0), ys)


def test_unbatched_single_sequence():
    cell, params, xs = _setup("lstm")
    final, ys = jlstm.scan(cell, params, xs[:, 0])
    assert ys.shape == (T, H) and final.c.shape == (H,)
    _close((final, ys), _loop(cell, params, xs[:, 0]))


def test_new_lengths_do_not_recompile():
    cell, params, xs = _setup("lstm")
    traces = []

    @jax.jit
    def f(p, x, L):
        traces.append(1)
        return jlstm.scan(cell, p, x, lengths=L)[1]

    for L in ([9, 1, 2], [3, 3, 3], [0, 9, 5]):
        f(params, xs, jnp.array(L)).block_until_ready()
    assert len(traces) == 1


@pytest.mark.parametrize("remat", ["step", "segment", 4])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_remat_gives_the_same_values_and_gradients(name, remat):
    cell, params, xs = _setup(name)
    lengths = jnp.array([T, 2, 6])

    def loss(p, remat):
        final, ys = jlstm.scan(cell, p, xs, lengths=lengths, remat=remat)
        return jnp.sum(ys ** 2) + jnp.sum(final.h)

    _close(jax.value_and_grad(loss)(params, remat), jax.value_and_grad(loss)(params, None))


def test_zero_length_time_axis():
    cell, params, xs = _setup("lstm")
    final, ys = jlstm.scan(cell, params, xs[:0])
    assert ys.shape == (0, B, H)
    _close(final, cell.initial_state(params, (B,)))


def test_default_unroll_per_backend():
    assert jlstm.default_unroll("cpu") >= 1
    assert jlstm.default_unroll("gpu") >= 1
