"""The wide persistent Pallas LSTM (``jlstm.kernels.pallas_lstm_wide``), in Pallas interpret mode on CPU.

The kernels split the hidden units over column blocks (here 4 of 4 or 8 units) and the batch over
tiles (3 rows padded to 2 tiles of 2). Values and gradients are compared with jlstm's reference
path (``fast=False``: a ``lax.scan`` of ``cell.step`` differentiated by JAX), with a mask, with
resets (each episode run alone by a Python loop over ``cell.step``), and in bf16 with a
transcription of the equations whose matmul operands are rounded to bf16. ``jlstm.lstm`` takes
the kernel where a plan allows it, under ``jax.grad``, ``jax.jvp`` and ``jax.vmap``; no shipped
plan does yet. The GPU limits of :func:`options` are checked against the shared-memory count.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from episodes import run_episodes
from lstm_kernel_cases import close, loss_and_grads, outputs_jvp, route_with_spy, setup

import jlstm
from jlstm.core.plan import PLANS
from jlstm.kernels import pallas_lstm_wide as _wide

CPU = PLANS["cpu"]


def _kernel(st, mask=None, resets=None):
    def run(p, x, s):
        hT, cT, ys = _wide.lstm_wide(p.w_x, p.w_h, p.b, x, s.h, s.c, mask, resets, st=st)
        return jlstm.LSTMState(hT, cT), ys
    return run


def test_kernels_equal_reference_with_a_mask():
    """Both kernels directly (4 column blocks, 2 batch tiles): values and gradients of the reference."""
    T, B, I, H = 4, 3, 2, 16
    cell, params, xs, state, ct = setup(T, B, I, H)
    mask = jnp.asarray(np.random.default_rng(0).random((T, B)) < 0.6).at[:, 2].set(False)
    st = _wide.options(B, H, plan=CPU, block=4, tile=2)
    assert st is not None and st.interpret

    got = loss_and_grads(_kernel(st, mask), params, xs, state, ct)
    want = loss_and_grads(lambda p, x, s: jlstm.scan(cell, p, x, s, mask=mask, fast=False), params, xs, state, ct)
    close(got, want)
    ys, grads = got[0][1], got[1]
    assert float(jnp.max(jnp.abs(ys[:, 2]))) == 0.0            # a fully masked row outputs zeros
    assert float(jnp.max(jnp.abs(grads[0].w_h))) > 0
    # The fully masked row passes the final-state gradient straight to the initial state.
    np.testing.assert_allclose(np.asarray(grads[2].h[2]), 1.3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[2].c[2]), 0.7, rtol=1e-6)


def test_kernels_with_resets_equal_episodes_run_alone():
    """Resets inside the sequence, at t=0, consecutive, at the last step and at a masked step; 6 units
    padded to 2 blocks of 4 (the padding changes nothing)."""
    T, B, I, H = 5, 3, 2, 6
    cell, params, xs, state, ct = setup(T, B, I, H, seed=3)
    resets = np.zeros((T, B), bool)
    resets[[0, 3], 0] = True
    resets[[2, 3, T - 1], 1] = True
    mask = np.ones((T, B), bool)
    mask[[1, 4], 2] = False
    resets[4, 2] = True               # at a masked step: ignored
    st = _wide.options(B, H, plan=CPU, block=4, tile=2)
    got = loss_and_grads(_kernel(st, jnp.asarray(mask), jnp.asarray(resets & mask)), params, xs, state, ct)
    want = loss_and_grads(lambda p, x, s: run_episodes(cell, p, x, resets, valid=mask, state=s),
                           params, xs, state, ct)
    close(got[0], want[0], 2e-5)
    close(got[1], want[1], 1e-4)
    assert float(jnp.max(jnp.abs(got[1][2].h[0]))) == 0   # row 0 restarts at t=0: nothing reaches h0


def _bf16_transcription(p, xs, h0, c0):
    """The LSTM's equations with bf16 matmul operands and float32 accumulation, gates and state."""
    bf = jnp.bfloat16

    def mm(a, w):
        return jnp.matmul(a.astype(bf), w.astype(bf), preferred_element_type=jnp.float32)

    h, c, ys = h0, c0, []
    for t in range(xs.shape[0]):
        z = mm(xs[t], p.w_x) + p.b + mm(h, p.w_h)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        ys.append(h)
    return jlstm.LSTMState(h, c), jnp.stack(ys)


def test_bf16_operands_match_the_transcription():
    """bf16 weights and operands, float32 accumulation: within bf16 rounding of the transcription, and
    measurably not the float32 kernel (the rounding happens)."""
    T, B, I, H = 4, 3, 4, 16
    cell, params, xs, state, ct = setup(T, B, I, H, seed=6)
    params = params._replace(w_h=3.0 * params.w_h)       # a recurrence that the rounding visibly moves
    st = _wide.options(B, H, jnp.bfloat16, plan=CPU, block=8, tile=2)
    assert st is not None and st.matmul_dtype == jnp.bfloat16
    got = loss_and_grads(_kernel(st), params, xs, state, ct)
    want = loss_and_grads(lambda p, x, s: _bf16_transcription(p, x, s.h, s.c), params, xs, state, ct)
    close(got[0], want[0], 3e-3)
    close(got[1], want[1], 3e-2)
    f32 = jax.jit(_kernel(_wide.options(B, H, plan=CPU, block=8, tile=2)))(params, xs, state)[1]
    assert float(jnp.max(jnp.abs(got[0][1] - f32))) > 1e-4


@pytest.fixture
def wide_plan(monkeypatch):
    """Route jlstm.scan by a CPU plan that allows the wide kernel (and not the one-program kernel);
    record each run of its forward kernel."""
    plan = CPU._replace(pallas=False, pallas_wide=True, pallas_wide_block=8, pallas_wide_tile=2,
                        native_from_batch=None)
    return route_with_spy(monkeypatch, plan, _wide, "forward")


def test_jlstm_lstm_takes_the_wide_kernel_where_a_plan_allows(wide_plan):
    """Through jlstm.scan with lengths, a mask and reverse: values, gradients (jax.grad), jax.jvp and
    jax.vmap of a gradient equal the reference path; the kernel is the fused custom_jvp's primal loop."""
    T, B, I, H = 4, 2, 3, 16
    cell, params, xs, state, ct = setup(T, B, I, H, seed=1)
    kw = {"lengths": jnp.array([4, 2]), "mask": jnp.array([[1, 1], [0, 1], [1, 1], [1, 0]], bool),
          "reverse": True}

    def run(fast):
        return lambda p, x, s: jlstm.scan(cell, p, x, s, fast=fast, **kw)

    got = loss_and_grads(run(True), params, xs, state, ct)
    assert wide_plan and wide_plan[0] == _wide.Static(8, 2, jnp.dtype(jnp.float32), True)
    close(got, loss_and_grads(run(False), params, xs, state, ct))
    del wide_plan[:]
    tangent = jax.random.normal(jax.random.key(9), xs.shape)
    got = outputs_jvp(run(True), params, xs, state, tangent)
    assert wide_plan
    close(got, outputs_jvp(run(False), params, xs, state, tangent))
    del wide_plan[:]

    def grad(fast):
        loss = lambda p, x: jnp.sum(jlstm.scan(cell, p, x, state, fast=fast)[1] * ct)  # noqa: E731
        return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, jnp.stack([xs, 2.0 * xs]))

    got = grad(True)
    assert wide_plan
    close(got, grad(False))


def test_a_bf16_lstm_takes_the_wide_kernel(wide_plan):
    """``jlstm.lstm(H, dtype=bfloat16)`` (float32 params and state, bf16 matmuls) on the wide route agrees
    with its own XLA scan to bf16 precision."""
    T, B, I, H = 3, 2, 3, 16
    _, params, xs, state, _ = setup(T, B, I, H, seed=2)
    cell = jlstm.lstm(H, dtype=jnp.bfloat16)
    final, ys = jax.jit(lambda p, x, s: jlstm.scan(cell, p, x, s))(params, xs, state)
    assert wide_plan and wide_plan[0].matmul_dtype == jnp.bfloat16
    want_final, want_ys = jax.jit(lambda p, x, s: jlstm.scan(cell, p, x, s, fast=False))(params, xs, state)
    assert ys.dtype == want_ys.dtype
    close((final, ys), (want_final, want_ys), 2e-2)


def test_no_shipped_plan_routes_to_the_wide_kernel():
    assert not any(plan.pallas_wide for plan in PLANS.values())


def test_shared_bytes_and_the_gpu_limits():
    """The documented footprints, and which shapes the GPU plan's options accept (132 SMs)."""
    f32, bf16 = jnp.float32, jnp.bfloat16
    gpu = PLANS["gpu"]
    st = _wide.Static(16, 16, jnp.dtype(f32), False)
    assert _wide.shared_bytes(512, st) == 131_072 + 32_768 + 4_096
    assert _wide.shared_bytes(1024, st) > _wide.SM_SHARED_BYTES
    assert _wide.shared_bytes(1024, st._replace(matmul_dtype=jnp.dtype(bf16))) == 131_072 + 32_768 + 4_096

    def ok(B, H, dt=f32, **kw):
        return _wide.options(B, H, dt, plan=gpu, sms=132, **kw) is not None

    assert ok(1, 256) and ok(1, 512) and ok(64, 512)          # grid 32 x 4 = 128 programs
    assert not ok(1, 1024)                                     # float32 H=1024: the block is too big
    assert ok(1, 1024, bf16) and ok(32, 1024, bf16)            # 64 x 2 programs
    assert not ok(64, 1024, bf16)                              # 64 x 4 > 132: not all resident
    assert not ok(1, 256, tile=8) and not ok(1, 256, jnp.float64) and not ok(1, 256, block=12)
    assert ok(1, 96) and ok(1, 200) and ok(1, 300)             # padded to 128, 256 and 512
    # Interpret mode takes any block, padding the units to a multiple of it.
    st = _wide.options(3, 12, plan=CPU, block=5, tile=2)
    assert st is not None and _wide.padded_hidden(12, st) == 15
    # On a GPU the units are padded to a power of two: 768 runs as 1024 (bf16 only).
    gpu_bf16 = _wide.options(16, 768, bf16, plan=gpu, sms=132)
    assert gpu_bf16 is not None and _wide.padded_hidden(768, gpu_bf16) == 1024
    assert not ok(16, 768)
