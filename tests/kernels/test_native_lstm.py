"""The native CPU LSTM kernel (``jlstm.kernels.native_lstm``): what ``jlstm.lstm`` runs on CPU from batch 4.

Checked against references that share no code with it: a NumPy float64 transcription of the
equations, the plain ``lax.scan`` of ``cell.step`` (``fast=False``), and for resets every episode run
alone by a Python loop (``tests/episodes.py``). Forward mode, second order and ``vmap`` (both batching
rules: the mapped axis folded into the batch, and mapped weights) are compared with the fused XLA
loops it replaces. Thread counts must not change a bit of the result; a failed build must leave the
pure-JAX path running, with a warning. Under ``CI=true`` the kernel must build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

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
from np_reference import lstm_step

import jlstm
import jlstm.kernels.fused_lstm as fused
import jlstm.kernels.native_lstm as native
from jlstm.core.plan import current_plan


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    if not native.available():
        if os.environ.get("CI"):
            pytest.fail(f"the native LSTM kernel must build in CI: {native.why_unavailable()}")
        pytest.skip(f"the native LSTM kernel is unavailable here: {native.why_unavailable()}")


def _case(B, T, I, H, seed=0, peephole=None):
    cell = jlstm.lstm(H, peephole=peephole)
    k = jax.random.split(jax.random.key(seed), 5)
    params = cell.init(k[0], I)
    params = params._replace(b=params.b + 0.3 * jax.random.normal(k[1], params.b.shape))
    if peephole:  # the initializer's zeros would hide a wrong peephole term
        params = params._replace(w_c=0.5 * jax.random.normal(k[0], params.w_c.shape))
    xs = jax.random.normal(k[2], (T, B, I))
    state = jlstm.LSTMState(h=0.5 * jax.random.normal(k[3], (B, H)), c=0.5 * jax.random.normal(k[4], (B, H)))
    return cell, params, xs, state


def _uses_kernel(fn, *args) -> bool:
    return "jlstm_lstm_forward" in str(jax.make_jaxpr(fn)(*args))


# Batches below the plan's lstm_inloop_from_batch (8 on CPU) project the inputs before the loop, the rest
# inside it: both layouts of the kernel's forward are covered, without peepholes, with diagonal ones and
# with the article's full matrices.
@pytest.mark.parametrize("B,T,I,H,peephole", [
    (1, 7, 5, 16, None), (4, 6, 3, 8, "diagonal"), (5, 9, 7, 24, "full"), (7, 5, 16, 72, None),
    (11, 6, 9, 24, None), (11, 6, 9, 24, "diagonal"), (11, 6, 9, 24, "full")])
def test_forward_matches_the_numpy_equations(B, T, I, H, peephole):
    cell, params, xs, state = _case(B, T, I, H, peephole=peephole)
    run = jax.jit(lambda p, x, s: jlstm.scan(cell, p, x, s))
    assert _uses_kernel(run, params, xs, state)
    final, ys = run(params, xs, state)
    h, c = np.asarray(state.h, np.float64), np.asarray(state.c, np.float64)
    want = []
    for t in range(T):
        h, c = lstm_step(params, h, c, np.asarray(xs[t]), peephole=peephole)
        want.append(h)
    np.testing.assert_allclose(np.asarray(ys), np.stack(want), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(final.h), h, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(final.c), c, rtol=2e-5, atol=2e-6)


def _loss(cell, ct, fast, **kw):
    def loss(p, x, s):
        final, ys = jlstm.scan(cell, p, x, s, fast=fast, **kw)
        return jnp.sum(ys * ct) + jnp.sum(1.3 * final.h) + jnp.sum(0.7 * jnp.sin(final.c))
    return loss


@pytest.mark.parametrize("flags,B,peephole", [("none", 6, None), ("lengths", 6, None), ("mask", 6, None),
                                              ("mask", 9, None), ("mask", 9, "diagonal"), ("mask", 9, "full")])
def test_values_and_gradients_match_the_step_loop(flags, B, peephole):
    T, I, H = 8, 5, 16
    cell, params, xs, state = _case(B, T, I, H, seed=1, peephole=peephole)
    ct = jax.random.normal(jax.random.key(9), (T, B, H))
    kw = {}
    if flags == "lengths":
        kw["lengths"] = jnp.array([8, 0, 3, 5, 8, 1][:B])
    elif flags == "mask":
        kw["mask"] = jax.random.uniform(jax.random.key(3), (T, B)) > 0.35
    fast = jax.jit(jax.value_and_grad(_loss(cell, ct, True, **kw), argnums=(0, 1, 2)))
    assert "jlstm_lstm_adjoint" in str(jax.make_jaxpr(fast)(params, xs, state))
    ref = jax.jit(jax.value_and_grad(_loss(cell, ct, False, **kw), argnums=(0, 1, 2)))
    close(fast(params, xs, state), ref(params, xs, state), 2e-5)


def test_resets_match_each_episode_run_alone():
    cell, params, xs, state = _case(5, 10, 4, 16, seed=2)
    resets_match_episodes("lstm", cell, params, xs, state, lambda final: jnp.sum(final.h * final.c))


def _engines(B, T, I, H, seed=3, masked=True, peephole=None):
    """``f(engine)``: the fused LSTM's loss on one engine, as a function of (w_h, xs, h0)."""
    cell, params, xs, state = _case(B, T, I, H, seed=seed, peephole=peephole)
    w_c = params.w_c if peephole else None
    m = jax.random.uniform(jax.random.key(7), (T, B)) > 0.3 if masked else None
    r = (jax.random.uniform(jax.random.key(8), (T, B)) > 0.75) & m if masked else None

    def f(engine):
        opts = fused.Options(engine=engine, peephole=peephole)

        def loss(w_h, x, h0):
            hT, cT, ys = fused._lstm_sequence(params.w_x, w_h, params.b, x, h0, state.c, m, w_c, r, opts)
            return jnp.sum(jnp.tanh(ys)) + jnp.sum(hT * cT)
        return loss

    return f, (params.w_h, xs, state.h)


@pytest.mark.parametrize("peephole", [None, "diagonal", "full"])
def test_forward_mode_and_second_order_match_the_xla_loops(peephole):
    """jvp, a Hessian-vector product (jvp of grad) and the Hessian in w_h, each one compiled program per engine."""
    f, args = _engines(3, 6, 4, 8, peephole=peephole)
    forward_mode_and_second_order_agree(f, args)


def test_vmap_folds_the_batch_and_maps_over_weights():
    f, (w_h, xs, h0) = _engines(3, 5, 4, 8, seed=4)
    vmap_agrees(f, w_h, xs, h0)


@pytest.mark.parametrize("peephole", [None, "full"])
def test_thread_count_does_not_change_a_bit(monkeypatch, peephole):
    B, T, I, H = 5, 7, 6, 72  # 9 unit blocks: uneven shares, and a single-vector group in the adjoint
    cell, params, xs, state = _case(B, T, I, H, seed=5, peephole=peephole)
    ct = jax.random.normal(jax.random.key(10), (T, B, H))
    run = jax.jit(jax.value_and_grad(_loss(cell, ct, True), argnums=(0, 1, 2)))
    threads_change_no_bit(monkeypatch, run, params, xs, state)


@pytest.mark.parametrize("change", ["below the plan's batch", "cell_clip", "bf16", "H=12", "JLSTM_NATIVE=0"])
def test_routing_keeps_the_xla_loops_where_the_kernel_does_not_apply(change, monkeypatch):
    B, H, kw = 8, 16, {}
    if change == "below the plan's batch":
        B = 2
        route_by(monkeypatch, current_plan()._replace(native_from_batch=4))
    elif change == "cell_clip":  # not the fused kernel's cell
        kw = {"cell_clip": 3.0}
    elif change == "bf16":
        kw = {"dtype": jnp.bfloat16}
    elif change == "H=12":
        H = 12
    else:
        monkeypatch.setenv("JLSTM_NATIVE", "0")
    cell = jlstm.lstm(H, **kw)
    params = cell.init(jax.random.key(0), 3)
    xs = jnp.ones((4, B, 3))
    assert not _uses_kernel(lambda p, x: jlstm.scan(cell, p, x), params, xs)
    assert _uses_kernel(lambda p, x: jlstm.scan(jlstm.lstm(16), p, x), jlstm.lstm(16).init(jax.random.key(0), 3),
                        jnp.ones((4, 8, 3))) == (change != "JLSTM_NATIVE=0")



def _training_and_reference(cell, params, xs, state):
    """The gradient of ``sum(ys)`` (params, inputs) as a function, and its values against the step loop's."""
    train = jax.grad(lambda p, x: jnp.sum(jlstm.scan(cell, p, x, state)[1]), argnums=(0, 1))
    ref = jax.grad(lambda p, x: jnp.sum(jlstm.scan(cell, p, x, state, fast=False)[1]), argnums=(0, 1))
    return train, (jax.jit(train)(params, xs), jax.jit(ref)(params, xs))


def test_training_at_any_batch_from_the_plans_start_runs_the_kernel():
    """The CPU plan sends training to the kernel at every batch from ``native_from_batch`` on (it won up to
    B = 256 in ``benchmarks/results/native_lstm_cpu_epyc.json``), and the gradients stay right."""
    cell, params, xs, state = _case(40, 3, 4, 8)
    train, (got, want) = _training_and_reference(cell, params, xs, state)
    assert "jlstm_lstm_adjoint" in str(jax.make_jaxpr(train)(params, xs))
    close(got, want, 2e-5)



def test_a_float64_state_keeps_the_xla_loops():
    """The kernel computes in float32; where a float64 state would make XLA promote the step, the XLA loops run."""
    cell = jlstm.lstm(16)
    params = cell.init(jax.random.key(0), 3)
    with jax.enable_x64(True):
        zeros = jnp.zeros((8, 16), jnp.float64)
        xs, state = jnp.ones((4, 8, 3), jnp.float32), jlstm.LSTMState(h=zeros, c=zeros)
        assert not _uses_kernel(lambda p, x, s: jlstm.scan(cell, p, x, s), params, xs, state)
        assert _uses_kernel(lambda p, x, s: jlstm.scan(cell, p, x, s), params, xs,
                            jax.tree.map(lambda a: a.astype(jnp.float32), state))

def test_training_above_a_plans_cap_keeps_the_xla_loops(monkeypatch):
    """``Plan.native_train_to_batch``: above it, training takes the fused XLA loops while a forward-only
    call still runs the kernel."""
    route_by(monkeypatch, current_plan()._replace(native_train_to_batch=32))
    cell, params, xs, state = _case(40, 3, 4, 8)
    assert _uses_kernel(lambda p, x: jlstm.scan(cell, p, x, state), params, xs)
    train, (got, want) = _training_and_reference(cell, params, xs, state)
    assert "jlstm_lstm" not in str(jax.make_jaxpr(train)(params, xs))
    close(got, want, 2e-5)


def test_the_kernel_rejects_shapes_it_cannot_serve():
    state, seq = jax.ShapeDtypeStruct((2, 12), jnp.float32), jax.ShapeDtypeStruct((3, 2, 12), jnp.float32)
    empty_out = jax.ShapeDtypeStruct((0,), jnp.float32)
    call = jax.ffi.ffi_call("jlstm_lstm_forward", [state, state, seq] + [empty_out] * 8)
    empty, no_wc = jnp.zeros((0,), jnp.bool_), jnp.zeros((0,))
    with pytest.raises(Exception, match="jlstm native LSTM"):
        jax.block_until_ready(call(jnp.ones((3, 2, 4)), jnp.ones((4, 48)), jnp.ones((12, 48)), jnp.ones(48), no_wc,
                                   jnp.ones((2, 12)), jnp.ones((2, 12)), empty, empty))
    # Projected inputs (an empty w_x) must be [T, B, 4H]; peepholes [3, H] or [H, 3H].
    state, seq = jax.ShapeDtypeStruct((2, 16), jnp.float32), jax.ShapeDtypeStruct((3, 2, 16), jnp.float32)
    call = jax.ffi.ffi_call("jlstm_lstm_forward", [state, state, seq] + [empty_out] * 8)
    with pytest.raises(Exception, match=r"x W_x \[T, B, 4H\]"):
        jax.block_until_ready(call(jnp.ones((3, 2, 40)), jnp.zeros((0,)), jnp.ones((16, 64)), jnp.ones(64), no_wc,
                                   jnp.ones((2, 16)), jnp.ones((2, 16)), empty, empty))
    with pytest.raises(Exception, match=r"w_c \[3, H\] \(diagonal peepholes\), \[H, 3H\] \(full\)"):
        jax.block_until_ready(call(jnp.ones((3, 2, 4)), jnp.ones((4, 64)), jnp.ones((16, 64)), jnp.ones(64),
                                   jnp.ones((16, 16)), jnp.ones((2, 16)), jnp.ones((2, 16)), empty, empty))


def test_a_failed_build_warns_and_leaves_the_jax_path(tmp_path):
    script = textwrap.dedent("""
        import json, warnings
        import jax, jax.numpy as jnp
        import jlstm
        from jlstm.kernels import native_lstm
        cell = jlstm.lstm(16)
        p = cell.init(jax.random.key(0), 3)
        x = jax.random.normal(jax.random.key(1), (5, 8, 3))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, fast = jlstm.scan(cell, p, x)
        _, ref = jlstm.scan(cell, p, x, fast=False)
        jaxpr = str(jax.make_jaxpr(lambda p, x: jlstm.scan(cell, p, x))(p, x))
        print(json.dumps({"available": native_lstm.available(), "why": native_lstm.why_unavailable(),
                          "warnings": [str(w.message) for w in caught],
                          "diff": float(jnp.max(jnp.abs(fast - ref))), "kernel": "jlstm_lstm_forward" in jaxpr}))
    """)
    env = {**os.environ, "CXX": "/bin/false", "JLSTM_CACHE_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not out["available"] and "failed" in out["why"]
    assert any("native CPU kernels (LSTM, GRU) are unavailable" in w for w in out["warnings"])
    assert not out["kernel"] and out["diff"] < 1e-5
    assert not list(tmp_path.glob("*.so"))  # nothing half-written left in the cache


def test_the_library_is_cached_by_content():
    lib = native.library()
    assert lib is not None and lib["path"].parent == native.cache_dir() and lib["path"].suffix == ".so"
    assert lib["vector_width"] == 8
