"""jlstm.linear_recurrence against Python loops: every method, resets, reverse, complex decays,
gradients, and clear errors."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm

METHODS = ("loop", "blocked", "associative", "auto")


def loop_reference(a, b, h0, resets, reverse):
    """The recurrence one step at a time, in NumPy or jnp alike (``xp``): resets are segment starts in
    time order; backwards, the step before a segment start ends its segment."""
    xp = jnp if isinstance(b, jax.Array) else np
    T = b.shape[0]
    h, out = h0, [None] * T
    for t in range(T - 1, -1, -1) if reverse else range(T):
        cut = resets[t + 1] if reverse and t + 1 < T else resets[t] if not reverse else None
        if cut is not None:
            h = xp.where(cut[..., None], 0.0, h)
        h = a[t] * h + b[t]
        out[t] = h
    return xp.stack(out)


def _data(T, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.3, 1.0, (T, 2, 3)).astype(dtype)
    b = rng.normal(size=(T, 2, 3)).astype(dtype)
    h0 = rng.normal(size=(2, 3)).astype(dtype)
    resets = rng.random((T, 2)) < 0.25
    resets[min(4, T - 1), 0] = resets[0, 1] = True
    return a, b, h0, resets


@pytest.mark.parametrize("reverse", [False, True])
def test_every_method_with_resets_matches_a_loop_values_and_grads(reverse):
    a, b, h0, resets = _data(37)
    want = loop_reference(a, b, h0, resets, reverse)
    w = jnp.asarray(np.cos(np.arange(b.size)).reshape(b.shape), jnp.float32)
    args = tuple(jnp.asarray(v, jnp.float32) for v in (a, b, h0))
    flags = jnp.asarray(resets)

    def ref_loss(a, b, h0):
        return jnp.sum(w * loop_reference(a, b, h0, flags, reverse))

    want_grads = jax.jit(jax.grad(ref_loss, argnums=(0, 1, 2)))(*args)
    for method in METHODS:
        run = functools.partial(jlstm.linear_recurrence, resets=flags, reverse=reverse, method=method)
        got, grads = jax.jit(lambda *v, run=run: (run(*v), jax.grad(lambda *u: jnp.sum(w * run(*u)),
                                                                          argnums=(0, 1, 2))(*v)))(*args)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5, err_msg=method)
        for g, gw in zip(grads, want_grads):
            np.testing.assert_allclose(g, gw, atol=1e-4, rtol=1e-4, err_msg=method)


@pytest.mark.parametrize("T", [0, 1, 5])
def test_short_and_empty_sequences(T):
    a, b, h0, resets = _data(max(T, 1), seed=T)
    a, b, resets = a[:T], b[:T], resets[:T]
    for method in ("loop", "blocked", "auto"):
        got = jlstm.linear_recurrence(a, b, h0, resets=jnp.asarray(resets), method=method)
        assert got.shape == b.shape
        np.testing.assert_allclose(got, loop_reference(a, b, h0, resets, False) if T else b, atol=1e-6)


def test_discounted_returns_over_episodes_and_broadcast_decay():
    """G_t = r_t + γ G_{t+1} within each episode: a number for a, resets at the episode starts."""
    rewards = jnp.asarray(np.random.default_rng(1).normal(size=(9, 2)), jnp.float32)
    starts = np.zeros((9, 2), bool)
    starts[[3, 7], 0] = starts[5, 1] = True
    got = jlstm.linear_recurrence(0.9, rewards, resets=jnp.asarray(starts), reverse=True)
    want = np.zeros((9, 2))
    for col in range(2):
        g = 0.0
        for t in range(8, -1, -1):
            g = (0.0 if t + 1 < 9 and starts[t + 1, col] else g) * 0.9 + float(rewards[t, col])
            want[t, col] = g
    np.testing.assert_allclose(got, want, atol=1e-5)
    # one decay per step broadcasts as a[:, None]
    per_step = jlstm.linear_recurrence(jnp.full((9, 1), 0.9), rewards, resets=jnp.asarray(starts), reverse=True)
    np.testing.assert_allclose(per_step, want, atol=1e-5)


def test_complex_decays_like_an_lru():
    rng = np.random.default_rng(2)
    lam = 0.95 * np.exp(1j * rng.uniform(0, np.pi, (20, 1, 4)))
    b = rng.normal(size=(20, 1, 4)) + 1j * rng.normal(size=(20, 1, 4))
    resets = np.zeros((20, 1), bool)
    resets[11] = True
    want = loop_reference(lam, b, np.zeros((1, 4)), resets, False)
    for method in ("loop", "blocked"):
        got = jlstm.linear_recurrence(jnp.asarray(lam, jnp.complex64), jnp.asarray(b, jnp.complex64),
                                      resets=jnp.asarray(resets), method=method)
        assert got.dtype == jnp.complex64
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_deprecated_associative_flag_still_works():
    a, b, h0, _ = _data(6)
    for flag in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = jlstm.linear_recurrence(a, b, h0, associative=flag)
        assert caught and caught[0].category is DeprecationWarning and "method=" in str(caught[0].message)
        np.testing.assert_allclose(got, loop_reference(a, b, h0, np.zeros((6, 2), bool), False), atol=1e-6)
    with pytest.raises(TypeError, match="got both method='loop' and associative=True"):
        jlstm.linear_recurrence(a, b, associative=True, method="loop")


def test_clear_errors():
    a, b = jnp.ones((5, 2, 3)), jnp.ones((5, 2, 3))
    lr = jlstm.linear_recurrence
    with pytest.raises(TypeError, match="b must hold floating point"):
        lr(a, jnp.ones((5, 2, 3), jnp.int32))
    with pytest.raises(TypeError, match="a must be an array"):
        lr([1.0, 2.0], b)
    with pytest.raises(ValueError, match=r"a has shape \(5,\), which does not broadcast to b's shape \(5, 2, 3\)"):
        lr(jnp.ones(5), b)
    with pytest.raises(ValueError, match=r"h0 has shape \(3, 2\)"):
        lr(a, b, jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="leading time axis"):
        lr(jnp.ones(()), jnp.ones(()))
    with pytest.raises(TypeError, match="resets must be a bool array"):
        lr(a, b, resets=jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"resets has shape \(2, 5\), expected a leading part"):
        lr(a, b, resets=jnp.zeros((2, 5), bool))
    with pytest.raises(ValueError, match="method='scan' is not one of"):
        lr(a, b, method="scan")
    with pytest.raises(TypeError, match="reverse must be True or False"):
        lr(a, b, reverse=1)
