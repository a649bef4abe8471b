"""jlstm.cells.initializers: the defaults are pure functions of the key, cheap, and have the right distributions.

References: NumPy (orthonormality, the Glorot limit), the same call under jit and vmap (bit-equal),
and JAX's own compile events (no program is compiled for a new shape).
"""

import math

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm.cells import initializers as init

KEY = jax.random.key(0)


@pytest.mark.parametrize("shape", [(6, 6), (9, 4), (3, 7), (2, 3, 5)])
def test_orthogonal_has_orthonormal_columns_or_rows(shape):
    w = np.asarray(init.orthogonal(KEY, shape), np.float64)
    assert w.shape == shape and w.dtype == np.float64 or w.dtype == np.float32
    m = w.reshape(-1, shape[-1])
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, np.eye(len(gram)), atol=1e-6)


def test_orthogonal_float64_is_exact_to_float64():
    with jax.enable_x64(True):
        w = np.asarray(init.orthogonal(KEY, (8, 8), jnp.float64))
    assert w.dtype == np.float64
    np.testing.assert_allclose(w.T @ w, np.eye(8), atol=1e-13)


def test_draws_are_pure_functions_of_the_key():
    a, b = init.orthogonal(KEY, (5, 5)), init.orthogonal(KEY, (5, 5))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, init.orthogonal(jax.random.key(1), (5, 5)))
    # old-style uint32 keys work too
    np.testing.assert_array_equal(init.glorot_uniform(jax.random.PRNGKey(3), (4, 2)),
                                  init.glorot_uniform(jax.random.PRNGKey(3), (4, 2)))


def test_glorot_uniform_range_and_variance():
    fan_in, fan_out = 300, 100
    w = np.asarray(init.glorot_uniform(KEY, (fan_in, fan_out)), np.float64)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    np.testing.assert_allclose(w.var(), limit ** 2 / 3, rtol=0.03)  # 30,000 draws: ~1% standard error
    # values beyond one compiled block (4096) are fresh draws, not a repeat of the first block
    flat = w.ravel()
    assert not np.allclose(flat[:4096], flat[4096:8192])


def test_uniform_and_zeros():
    u = np.asarray(init.uniform(0.25)(KEY, (50, 40)))
    assert np.abs(u).max() <= 0.25 and np.abs(u).max() > 0.24
    z = init.zeros(KEY, (3, 2), jnp.bfloat16)
    assert z.dtype == jnp.bfloat16 and not np.asarray(z, np.float32).any()


def test_scaled_initialisers_are_values():
    """``uniform(s)`` and ``normal(s)`` equal and hash alike when rebuilt (a cell's config may hold one), and
    differ by kind and scale."""
    assert init.uniform(0.25) == init.uniform(0.25) and hash(init.normal(0.5)) == hash(init.normal(0.5))
    assert init.uniform(0.25) != init.uniform(0.5) and init.uniform(0.25) != init.normal(0.25)
    np.testing.assert_array_equal(init.normal(0.5)(KEY, (3, 4)), init.normal(0.5)(KEY, (3, 4)))


def test_add_to_slice_eager_and_traced():
    x = init.zeros(KEY, (8,))
    want = np.array([0, 0, 1, 1, 1, 0, 0, 0], np.float32)
    np.testing.assert_array_equal(init.add_to_slice(x, 2, 5, 1.0), want)
    np.testing.assert_array_equal(jax.jit(lambda v: init.add_to_slice(v, 2, 5, 1.0))(x), want)


def test_eager_jit_and_vmap_inits_are_bit_equal():
    cell = jlstm.lstm(4, proj_size=3, peephole="diagonal")  # glorot, wide orthogonal, uniform, zeros + forget bias
    eager = cell.init(KEY, 3)
    jitted = jax.jit(cell.init, static_argnums=1)(KEY, 3)
    keys = jax.random.split(KEY, 2)
    vmapped = jax.jit(jax.vmap(lambda k: cell.init(k, 3)))(keys)
    second = cell.init(keys[1], 3)
    for e, j, v, s in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), jax.tree.leaves(vmapped),
                          jax.tree.leaves(second)):
        assert e.dtype == j.dtype == v.dtype
        np.testing.assert_array_equal(e, j)
        np.testing.assert_array_equal(v[1], s)


def test_per_gate_blocks_are_orthogonal_in_bf16_too():
    w = init.per_gate(init.orthogonal, KEY, 4, 4, 3, jnp.bfloat16)
    assert w.shape == (4, 12) and w.dtype == jnp.bfloat16
    for g in range(3):
        blk = np.asarray(w[:, 4 * g:4 * g + 4], np.float64)
        np.testing.assert_allclose(blk.T @ blk, np.eye(4), atol=2e-2)  # bf16 rounding


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="at least 2 axes"):
        init.orthogonal(KEY, (5,))
    with pytest.raises(TypeError, match=r"tuple of ints.*glorot_uniform\(key, \(rows, cols\)"):
        init.glorot_uniform(KEY, "big")
    with pytest.raises(ValueError, match="non-negative"):
        init.zeros(KEY, (2, -1))


def test_a_new_shape_compiles_nothing():
    compiles = []

    def listen(name, secs, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    def listen_hits(name, **kw):        # a program read from the suite's compilation cache
        if name == "/jax/compilation_cache/cache_hits":
            compiles.append(name)

    for kind in ("normal", "uniform"):  # the two block programs, compiled once per process
        init._draw(KEY, 1, kind)
    init.per_gate(init.orthogonal, KEY, 2, 2, 3, jnp.float32)  # split(key, 3)
    jax.monitoring.register_event_duration_secs_listener(listen)
    jax.monitoring.register_event_listener(listen_hits)
    try:
        init.orthogonal(KEY, (13, 11))
        init.per_gate(init.orthogonal, KEY, 17, 7, 3, jnp.float32)
        init.glorot_uniform(KEY, (19, 23))
        init.uniform(0.1)(KEY, (3, 29))
        init.zeros(KEY, (31,))
        init.add_to_slice(init.zeros(KEY, (37,)), 3, 9, 1.0)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
        jax.monitoring.unregister_event_listener(listen_hits)
    assert compiles == []
