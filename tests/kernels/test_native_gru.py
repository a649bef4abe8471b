"""The native CPU GRU kernel (``jlstm.kernels.native_gru``): what ``jlstm.gru`` runs on CPU.

Checked against references that share no code with it: a NumPy float64 transcription of the
equations, the plain ``lax.scan`` of ``cell.step`` (``fast=False``), and for resets every episode run
alone by a Python loop (``tests/episodes.py``). Forward mode, second order and ``vmap`` (the mapped
axis folded into the batch, and mapped weights) are compared with the fused XLA loops it replaces.
Thread counts must not change a bit of the result. Under ``CI=true`` the kernel must build.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from native_checks import (
    close,
    forward_mode_and_second_order_agree,
    resets_match_episodes,
    route_by,
    threads_change_no_bit,
    vmap_agrees,
)
from np_reference import gru_step

import jlstm
import jlstm.kernels.fused_gru as fused
import jlstm.kernels.native_gru as native
from jlstm.core.plan import current_plan


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    if not native.available():
        if os.environ.get("CI"):
            pytest.fail("the native GRU kernel must build in CI")
        pytest.skip("the native kernels are unavailable here")


def _case(B, T, I, H, seed=0):
    cell = jlstm.gru(H)
    k = jax.random.split(jax.random.key(seed), 6)
    params = cell.init(k[0], I)
    # Non-zero biases exercise every gate, b_hn (inside the reset product) included.
    params = params._replace(b_x=0.3 * jax.random.normal(k[4], params.b_x.shape),
                             b_h=0.3 * jax.random.normal(k[5], params.b_h.shape))
    xs = jax.random.normal(k[1], (T, B, I))
    state = jlstm.GRUState(h=0.5 * jax.random.normal(k[2], (B, H)))
    return cell, params, xs, state


def _uses_kernel(fn, *args, loop="forward") -> bool:
    return f"jlstm_gru_{loop}" in str(jax.make_jaxpr(fn)(*args))



# Batches below the plan's lstm_inloop_from_batch (8 on CPU) project the inputs before the loop, the rest
# inside it. H = 72 is 9 unit blocks (uneven thread shares); B = 7 and 11 end in partial register tiles.
@pytest.mark.parametrize("B,T,I,H", [(1, 7, 5, 16), (7, 5, 16, 72), (11, 6, 9, 24)])
def test_forward_matches_the_numpy_equations(B, T, I, H):
    cell, params, xs, state = _case(B, T, I, H)
    run = jax.jit(lambda p, x, s: jlstm.scan(cell, p, x, s))
    assert _uses_kernel(run, params, xs, state)
    final, ys = run(params, xs, state)
    h = np.asarray(state.h, np.float64)
    want = []
    for t in range(T):
        h = gru_step(params, h, np.asarray(xs[t]))
        want.append(h)
    np.testing.assert_allclose(np.asarray(ys), np.stack(want), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(final.h), h, rtol=2e-5, atol=2e-6)


def _loss(cell, ct, fast, **kw):
    def loss(p, x, s):
        final, ys = jlstm.scan(cell, p, x, s, fast=fast, **kw)
        return jnp.sum(ys * ct) + jnp.sum(jnp.sin(1.3 * final.h))
    return loss


@pytest.mark.parametrize("flags,B", [("none", 3), ("lengths", 6), ("mask", 9)])
def test_values_and_gradients_match_the_step_loop(flags, B):
    T, I, H = 8, 5, 16
    cell, params, xs, state = _case(B, T, I, H, seed=1)
    ct = jax.random.normal(jax.random.key(9), (T, B, H))
    kw = {}
    if flags == "lengths":
        kw["lengths"] = jnp.array([8, 0, 3, 5, 8, 1][:B])
    elif flags == "mask":
        kw["mask"] = jax.random.uniform(jax.random.key(3), (T, B)) > 0.35
    fast = jax.jit(jax.value_and_grad(_loss(cell, ct, True, **kw), argnums=(0, 1, 2)))
    assert _uses_kernel(fast, params, xs, state, loop="adjoint")
    ref = jax.jit(jax.value_and_grad(_loss(cell, ct, False, **kw), argnums=(0, 1, 2)))
    close(fast(params, xs, state), ref(params, xs, state), 2e-5)


def test_resets_match_each_episode_run_alone():
    cell, params, xs, state = _case(5, 10, 4, 16, seed=2)
    resets_match_episodes("gru", cell, params, xs, state, lambda final: jnp.sum(final.h ** 2))


def _engines(B, T, I, H, seed=3):
    """``f(engine)``: the fused GRU's loss on one engine, as a function of (w_h, xs, h0), masked and reset."""
    cell, params, xs, state = _case(B, T, I, H, seed=seed)
    m = jax.random.uniform(jax.random.key(7), (T, B)) > 0.3
    r = (jax.random.uniform(jax.random.key(8), (T, B)) > 0.75) & m

    def f(engine):
        opts = fused.Options(engine=engine)

        def loss(w_h, x, h0):
            hT, ys = fused._gru_sequence(params.w_x, w_h, params.b_x, params.b_h, x, h0, m, r, opts)
            return jnp.sum(jnp.tanh(ys)) + jnp.sum(hT * hT)
        return loss

    return f, (params.w_h, xs, state.h)


def test_forward_mode_and_second_order_match_the_xla_loops():
    """jvp, a Hessian-vector product (jvp of grad) and the Hessian in w_h, each one compiled program per engine."""
    f, args = _engines(3, 6, 4, 8)
    forward_mode_and_second_order_agree(f, args)


def test_vmap_folds_the_batch_and_maps_over_weights():
    f, (w_h, xs, h0) = _engines(3, 5, 4, 8, seed=4)
    vmap_agrees(f, w_h, xs, h0)


def test_thread_count_does_not_change_a_bit(monkeypatch):
    B, T, I, H = 5, 7, 6, 72  # 9 unit blocks: uneven shares, and a single-vector group in the adjoint
    cell, params, xs, state = _case(B, T, I, H, seed=5)
    ct = jax.random.normal(jax.random.key(10), (T, B, H))
    run = jax.jit(jax.value_and_grad(_loss(cell, ct, True), argnums=(0, 1, 2)))
    threads_change_no_bit(monkeypatch, run, params, xs, state)


@pytest.mark.parametrize("change", ["below the plan's batch", "bf16", "H=12", "reset before", "JLSTM_NATIVE=0"])
def test_routing_keeps_the_xla_loops_where_the_kernel_does_not_apply(change, monkeypatch):
    B, H, kw = 8, 16, {}
    if change == "below the plan's batch":
        B = 2
        route_by(monkeypatch, current_plan()._replace(gru_native_from_batch=4))
    elif change == "bf16":
        kw = {"dtype": jnp.bfloat16}
    elif change == "H=12":
        H = 12
    elif change == "reset before":
        kw = {"reset_after": False}
    else:
        monkeypatch.setenv("JLSTM_NATIVE", "0")
    cell = jlstm.gru(H, **kw)
    params = cell.init(jax.random.key(0), 3)
    xs = jnp.ones((4, B, 3))
    assert not _uses_kernel(lambda p, x: jlstm.scan(cell, p, x), params, xs)
    assert _uses_kernel(lambda p, x: jlstm.scan(jlstm.gru(16), p, x), jlstm.gru(16).init(jax.random.key(0), 3),
                        jnp.ones((4, 8, 3))) == (change != "JLSTM_NATIVE=0")



def test_a_float64_state_keeps_the_xla_loops():
    """The kernel computes in float32; where a float64 state would make XLA promote the step, the XLA loops run."""
    cell = jlstm.gru(16)
    params = cell.init(jax.random.key(0), 3)
    with jax.enable_x64(True):
        xs, state = jnp.ones((4, 8, 3), jnp.float32), jlstm.GRUState(h=jnp.zeros((8, 16), jnp.float64))
        assert not _uses_kernel(lambda p, x, s: jlstm.scan(cell, p, x, s), params, xs, state)
        assert _uses_kernel(lambda p, x, s: jlstm.scan(cell, p, x, s), params, xs,
                            jax.tree.map(lambda a: a.astype(jnp.float32), state))

def test_training_above_a_plans_cap_keeps_the_xla_loops(monkeypatch):
    """``Plan.gru_native_train_to_batch``: above it, training takes the fused XLA loops while a forward-only
    call still runs the kernel; the gradients stay right."""
    route_by(monkeypatch, current_plan()._replace(gru_native_train_to_batch=32))
    cell, params, xs, state = _case(40, 3, 4, 8)
    assert _uses_kernel(lambda p, x: jlstm.scan(cell, p, x, state), params, xs)
    train = jax.grad(lambda p, x: jnp.sum(jlstm.scan(cell, p, x, state)[1] ** 2), argnums=(0, 1))
    ref = jax.grad(lambda p, x: jnp.sum(jlstm.scan(cell, p, x, state, fast=False)[1] ** 2), argnums=(0, 1))
    assert "jlstm_gru" not in str(jax.make_jaxpr(train)(params, xs))
    close(jax.jit(train)(params, xs), jax.jit(ref)(params, xs), 2e-5)


def test_the_kernel_rejects_shapes_it_cannot_serve():
    state, seq = jax.ShapeDtypeStruct((2, 16), jnp.float32), jax.ShapeDtypeStruct((3, 2, 16), jnp.float32)
    empty_out = jax.ShapeDtypeStruct((0,), jnp.float32)
    call = jax.ffi.ffi_call("jlstm_gru_forward", [state, seq] + [empty_out] * 6)
    empty = jnp.zeros((0,), jnp.bool_)
    with pytest.raises(Exception, match=r"jlstm native GRU: forward.*w_h \[H, 3H\]"):  # an LSTM's 4H-wide w_h
        jax.block_until_ready(call(jnp.ones((3, 2, 4)), jnp.ones((4, 48)), jnp.ones((16, 64)), jnp.ones(48),
                                   jnp.ones(48), jnp.ones((2, 16)), empty, empty))
    call = jax.ffi.ffi_call("jlstm_gru_tangent", [state, seq])
    with pytest.raises(Exception, match=r"jlstm native GRU: tangent"):  # a_n of the wrong length
        jax.block_until_ready(call(jnp.ones((3, 2, 48)), jnp.ones((2, 2, 16)), *[jnp.ones((3, 2, 16))] * 5,
                                   empty, empty, jnp.ones((16, 48)), jnp.ones((2, 16))))
