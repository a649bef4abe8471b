"""The Pallas LSTM kernels (forward and backward), run in Pallas interpret mode on CPU.

Values and gradients (params, inputs, initial state) are compared with jlstm's reference
path (``fast=False``: a ``lax.scan`` of ``cell.step`` differentiated by JAX), with lengths,
a mask, reverse and a batch that the kernel pads (3 rows to 16); with resets, with each
episode run alone by a Python loop over ``cell.step`` (``tests/episodes.py``). ``jlstm.lstm``
is checked to take the kernel when the routing plan allows it and the shape fits, and only
then, under ``jax.grad``, ``jax.jvp`` and ``jax.vmap``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from episodes import run_episodes
from lstm_kernel_cases import close, loss_and_grads, outputs_jvp, route_with_spy, setup

import jlstm
from jlstm.core.plan import PLANS, current_plan
from jlstm.kernels import pallas_lstm as _pallas_lstm


def test_kernels_equal_reference_with_a_mask():
    """lstm_pallas(interpret=True) directly: forward kernel values, backward kernel gradients."""
    T, B, I, H = 5, 3, 2, 4
    cell, params, xs, state, ct = setup(T, B, I, H)
    mask = jnp.asarray(np.random.default_rng(0).random((T, B)) < 0.6).at[:, 2].set(False)

    def pallas(p, x, s):
        hT, cT, ys = _pallas_lstm.lstm_pallas(p.w_x, p.w_h, p.b, x, s.h, s.c, mask, True)
        return jlstm.LSTMState(hT, cT), ys

    def ref(p, x, s):
        return jlstm.scan(cell, p, x, s, mask=mask, fast=False)

    got, want = loss_and_grads(pallas, params, xs, state, ct), loss_and_grads(ref, params, xs, state, ct)
    close(got, want)
    ys = got[0][1]
    assert float(jnp.max(jnp.abs(ys[:, 2]))) == 0.0  # a fully masked row outputs zeros
    grads = got[1]
    assert float(jnp.max(jnp.abs(grads[0].w_h))) > 0 and float(jnp.max(jnp.abs(grads[2].c))) > 0
    # The fully masked row passes the final-state gradient straight to the initial state.
    np.testing.assert_allclose(np.asarray(grads[2].h[2]), 1.3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[2].c[2]), 0.7, rtol=1e-6)


def test_kernels_with_resets_equal_episodes_run_alone():
    """Both kernels (lstm_pallas's custom_vjp) with resets and a mask: each episode run alone."""
    T, B, I, H = 6, 3, 2, 4
    cell, params, xs, state, ct = setup(T, B, I, H, seed=3)
    resets = np.zeros((T, B), bool)
    resets[[0, 3], 0] = True          # at t=0, and mid-sequence
    resets[[2, 3, T - 1], 1] = True   # consecutive, and at the last step
    mask = np.ones((T, B), bool)
    mask[[1, 4], 2] = False
    resets[4, 2] = True               # at a masked step: ignored
    m, r = jnp.asarray(mask), jnp.asarray(resets & mask)

    def pallas(p, x, s):
        hT, cT, ys = _pallas_lstm.lstm_pallas(p.w_x, p.w_h, p.b, x, s.h, s.c, m, True, resets=r)
        return jlstm.LSTMState(hT, cT), ys

    got = loss_and_grads(pallas, params, xs, state, ct)
    def alone(p, x, s):
        return run_episodes(cell, p, x, resets, valid=mask, state=s)

    want = loss_and_grads(alone, params, xs, state, ct)
    close(got[0], want[0], 2e-5)
    close(got[1], want[1], 1e-4)
    assert float(jnp.max(jnp.abs(got[1][2].h[0]))) == 0  # row 0 restarts at t=0
    assert float(jnp.max(jnp.abs(got[1][0].w_h))) > 0


# The backend's own plan with the kernel allowed: on CPU it runs in interpret mode (the native CPU kernel off).
PALLAS_PLAN = current_plan()._replace(pallas=True, pallas_max_hidden=64, pallas_max_batch=64,
                                      native_from_batch=None)


@pytest.fixture
def pallas_plan(monkeypatch):
    """Route jlstm.scan by PALLAS_PLAN; record each run of the forward kernel (its interpret flag)."""
    return route_with_spy(monkeypatch, PALLAS_PLAN, _pallas_lstm, "forward")


def test_jlstm_lstm_takes_the_kernel_where_the_plan_allows(pallas_plan):
    """Through jlstm.scan with lengths, a mask and reverse: the kernel, equal to the reference path
    under jax.grad and jax.jvp (the kernel is the primal loop of the fused custom_jvp)."""
    T, B, I, H = 4, 2, 3, 16
    cell, params, xs, state, ct = setup(T, B, I, H, seed=1)
    kw = {"lengths": jnp.array([4, 2]), "mask": jnp.array([[1, 1], [0, 1], [1, 1], [1, 0]], bool),
          "reverse": True}

    def run(fast):
        return lambda p, x, s: jlstm.scan(cell, p, x, s, fast=fast, **kw)

    got = loss_and_grads(run(True), params, xs, state, ct)
    assert pallas_plan and pallas_plan[0] is _pallas_lstm.interpret_mode(PALLAS_PLAN)
    close(got, loss_and_grads(run(False), params, xs, state, ct))
    del pallas_plan[:]
    tangent = jax.random.normal(jax.random.key(9), xs.shape)
    got = outputs_jvp(run(True), params, xs, state, tangent)
    assert pallas_plan  # forward mode runs the kernel too
    close(got, outputs_jvp(run(False), params, xs, state, tangent))


def test_resets_through_the_kernel_route_equal_episodes(pallas_plan):
    """jlstm.scan(resets=) on the Pallas route: values, gradients and jvp equal each episode run alone."""
    T, B, I, H = 5, 2, 2, 16
    cell, params, xs, state, ct = setup(T, B, I, H, seed=4)
    resets = np.zeros((T, B), bool)
    resets[[0, 2, 3], 0] = True
    resets[[1, T - 1], 1] = True
    lengths = np.array([5, 4])           # row 1's reset at the last step is padding
    valid = np.arange(T)[:, None] < lengths[None]

    def kernel(p, x, s):
        return jlstm.scan(cell, p, x, s, lengths=jnp.asarray(lengths), resets=jnp.asarray(resets))

    def alone(p, x, s):
        return run_episodes(cell, p, x, resets, valid=valid, state=s)

    got = loss_and_grads(kernel, params, xs, state, ct)
    assert pallas_plan
    want = loss_and_grads(alone, params, xs, state, ct)
    close(got[0], want[0], 2e-5)
    close(got[1], want[1], 1e-4)
    tangent = jax.random.normal(jax.random.key(8), xs.shape)
    close(outputs_jvp(kernel, params, xs, state, tangent), outputs_jvp(alone, params, xs, state, tangent), 1e-4)


def test_vmap_of_grad_through_the_kernel_route(pallas_plan):
    """jax.vmap of a training step (as jlstm.population does) runs through the kernel's route."""
    T, B, I, H = 3, 2, 2, 16
    cell, params, xs, state, ct = setup(T, B, I, H, seed=5)
    members = jnp.stack([xs, 2.0 * xs])

    def grad(fast):
        loss = lambda p, x: jnp.sum(jlstm.scan(cell, p, x, state, fast=fast)[1] * ct)  # noqa: E731
        return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, members)

    got = grad(True)
    assert pallas_plan
    close(got, grad(False))


def test_fits():
    assert not _pallas_lstm.fits(8, 64, None, None, plan=PLANS["cpu"])
    assert _pallas_lstm.interpret_mode(PLANS["cpu"]) and not _pallas_lstm.interpret_mode(PLANS["gpu"])


@pytest.mark.parametrize("batch,hidden,dtype,peephole,ok", [
    (1, 64, None, None, True), (1, 128, None, None, False), (64, 16, jnp.float32, None, True),
    (65, 64, None, None, False), (8, 256, None, None, False), (8, 96, None, None, False),
    (8, 8, None, None, False),
    (8, 64, jnp.bfloat16, None, False), (8, 64, None, "diagonal", False)])
def test_fits_on_gpu(batch, hidden, dtype, peephole, ok):
    assert _pallas_lstm.fits(batch, hidden, dtype, peephole, plan=PLANS["gpu"]) is ok


def test_large_shapes_keep_the_fused_scan(pallas_plan):
    cell, params, xs, state, _ = setup(2, 65, 2, 16)
    jax.eval_shape(lambda p: jlstm.scan(cell, p, xs, state), params)
    assert pallas_plan == []


def test_env_switch_turns_the_kernel_off(monkeypatch):
    assert _pallas_lstm.fits(8, 64, None, None, plan=PLANS["gpu"])
    monkeypatch.setenv("JLSTM_PALLAS", "0")
    assert not _pallas_lstm.fits(8, 64, None, None, plan=PLANS["gpu"])
