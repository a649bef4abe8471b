"""The Pallas LSTM kernels (forward and backward), run in Pallas interpret mode on CPU.

Values and gradients (params, inputs, initial state) are compared with jlstm's reference
path (``fast=False``: a ``lax.scan`` of ``cell.step`` differentiated by JAX), with lengths,
a mask, reverse and a batch that the kernel pads (3 rows to 16). ``jlstm.lstm`` is checked
to take the kernel when the backend reports a GPU and the shape fits, and only then.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm.kernels import pallas_lstm as _pallas_lstm


def _setup(T, B, I, H, seed=0):
    cell = jlstm.lstm(H)
    k = jax.random.split(jax.random.key(seed), 6)
    params = cell.init(k[0], I)
    params = params._replace(b=params.b + 0.3 * jax.random.normal(k[1], params.b.shape))
    xs = jax.random.normal(k[2], (T, B, I))
    state = jlstm.LSTMState(h=0.5 * jax.random.normal(k[3], (B, H)), c=0.5 * jax.random.normal(k[4], (B, H)))
    ct = jax.random.normal(k[5], (T, B, H))
    return cell, params, xs, state, ct


def _loss_and_grads(run, params, xs, state, ct):
    def loss(p, x, s):
        final, ys = run(p, x, s)
        return jnp.sum(ys * ct) + jnp.sum(1.3 * final.h) + jnp.sum(0.7 * final.c), ys

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, state)


def _close(a, b, tol=2e-5):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_kernels_equal_reference_with_a_mask():
    """lstm_pallas(interpret=True) directly: forward kernel values, backward kernel gradients."""
    T, B, I, H = 5, 3, 2, 4
    cell, params, xs, state, ct = _setup(T, B, I, H)
    mask = jnp.asarray(np.random.default_rng(0).random((T, B)) < 0.6).at[:, 2].set(False)

    def pallas(p, x, s):
        hT, cT, ys = _pallas_lstm.lstm_pallas(p.w_x, p.w_h, p.b, x, s.h, s.c, mask, True)
        return jlstm.LSTMState(hT, cT), ys

    def ref(p, x, s):
        return jlstm.scan(cell, p, x, s, mask=mask, fast=False)

    got, want = _loss_and_grads(pallas, params, xs, state, ct), _loss_and_grads(ref, params, xs, state, ct)
    _close(got, want)
    ys = got[0][1]
    assert float(jnp.max(jnp.abs(ys[:, 2]))) == 0.0  # a fully masked row outputs zeros
    grads = got[1]
    assert float(jnp.max(jnp.abs(grads[0].w_h))) > 0 and float(jnp.max(jnp.abs(grads[2].c))) > 0
    # The fully masked row passes the final-state gradient straight to the initial state.
    np.testing.assert_allclose(np.asarray(grads[2].h[2]), 1.3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[2].c[2]), 0.7, rtol=1e-6)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make jlstm.lstm believe it runs on a GPU; the kernel then runs in interpret mode on CPU."""
    monkeypatch.setattr(_pallas_lstm, "_on_gpu", lambda: True)
    calls = []
    real = _pallas_lstm.lstm_pallas

    def spy(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(_pallas_lstm, "lstm_pallas", spy)
    return calls


def test_jlstm_lstm_takes_the_kernel_on_gpu(fake_gpu):
    """Through jlstm.scan with lengths, a mask and reverse: the kernel, equal to the reference path."""
    T, B, I, H = 4, 2, 3, 16
    cell, params, xs, state, ct = _setup(T, B, I, H, seed=1)
    kw = {"lengths": jnp.array([4, 2]), "mask": jnp.array([[1, 1], [0, 1], [1, 1], [1, 0]], bool),
          "reverse": True}

    def run(fast):
        return lambda p, x, s: jlstm.scan(cell, p, x, s, fast=fast, **kw)

    got = _loss_and_grads(run(True), params, xs, state, ct)
    assert fake_gpu and fake_gpu[0] is (jax.default_backend() == "cpu")  # taken; interpret mode on CPU
    _close(got, _loss_and_grads(run(False), params, xs, state, ct))


def test_fits():
    assert not _pallas_lstm.fits(8, 256, None, None) or jax.default_backend() == "gpu"


@pytest.mark.parametrize("batch,hidden,dtype,peephole,ok", [
    (1, 64, None, None, True), (1, 128, None, None, False), (64, 16, jnp.float32, None, True),
    (65, 64, None, None, False), (8, 256, None, None, False), (8, 96, None, None, False),
    (8, 8, None, None, False),
    (8, 64, jnp.bfloat16, None, False), (8, 64, None, "diagonal", False)])
def test_fits_on_gpu(monkeypatch, batch, hidden, dtype, peephole, ok):
    monkeypatch.setattr(_pallas_lstm, "_on_gpu", lambda: True)
    assert _pallas_lstm.fits(batch, hidden, dtype, peephole) is ok


def test_large_shapes_keep_the_fused_scan(fake_gpu):
    cell, params, xs, state, _ = _setup(2, 65, 2, 16)
    jax.eval_shape(lambda p: jlstm.scan(cell, p, xs, state), params)
    assert fake_gpu == []


def test_forward_mode_on_gpu_takes_the_fused_scan(fake_gpu):
    """jax.jvp cannot enter the kernel's custom_vjp; jlstm.lstm then runs the fused scan's custom_jvp."""
    T, B, I, H = 3, 2, 2, 16
    cell, params, xs, state, _ = _setup(T, B, I, H, seed=2)
    lengths = jnp.array([3, 1])

    def run(fast):
        return lambda x: jlstm.scan(cell, params, x, state, lengths=lengths, fast=fast)[1]

    got = jax.jvp(run(True), (xs,), (jnp.ones_like(xs),))
    assert fake_gpu  # the kernel was tried first
    _close(got, jax.jvp(run(False), (xs,), (jnp.ones_like(xs),)))


def test_env_switch_turns_the_kernel_off(monkeypatch):
    monkeypatch.setattr(_pallas_lstm, "_on_gpu", lambda: True)
    assert _pallas_lstm.fits(8, 64, None, None)
    monkeypatch.setenv("JLSTM_PALLAS", "0")
    assert not _pallas_lstm.fits(8, 64, None, None)
