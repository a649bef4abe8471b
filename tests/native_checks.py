"""Checks the native CPU kernels' tests share (``tests/kernels/test_native_lstm.py``, ``test_native_gru.py``).

Each takes ``f(engine)``: a loss of ``(w_h, xs, h0)`` computed by a fused kernel on one engine
(``"native"`` or ``"xla"``), so that the native loops are compared with the XLA loops they replace.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from episodes import run_episodes

import jlstm
import jlstm._scan as scan_mod


def close(a, b, tol):
    """Every leaf of ``a`` within ``tol`` (relative and absolute) of ``b``'s."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def route_by(monkeypatch, plan) -> None:
    """Trace ``jlstm.scan`` under ``plan`` for the rest of the test."""
    monkeypatch.setattr(scan_mod, "current_plan", lambda: plan)


def forward_mode_and_second_order_agree(f, args) -> None:
    """jvp, a Hessian-vector product (jvp of grad) and the Hessian in ``w_h``, one compiled program per engine."""
    tangents = tuple(0.1 * jnp.ones_like(a) for a in args)

    def jvp(g):
        return jax.jit(lambda a, t: jax.jvp(g, a, t))(args, tangents)

    close(jvp(f("native")), jvp(f("xla")), 2e-5)
    hvp = [jvp(jax.grad(f(e), argnums=(0, 1, 2)))[1] for e in ("native", "xla")]
    close(hvp[0], hvp[1], 3e-5)
    close(jax.jit(jax.hessian(f("native")))(*args), jax.jit(jax.hessian(f("xla")))(*args), 3e-5)


def vmap_agrees(f, w_h, xs, h0) -> None:
    """Gradients under ``vmap`` over the batch (folded into the kernel's batch) and over the weights (mapped)."""
    xs_b, h0_b, w_b = jnp.stack([xs, -0.5 * xs]), jnp.stack([h0, 2.0 * h0]), jnp.stack([w_h, 0.5 * w_h])
    for in_axes, args in (((None, 0, 0), (w_h, xs_b, h0_b)), ((0, None, None), (w_b, xs, h0))):
        grads = [jax.jit(jax.vmap(jax.grad(f(e), argnums=(0, 1, 2)), in_axes=in_axes))(*args)
                 for e in ("native", "xla")]
        close(grads[0], grads[1], 2e-5)


def threads_change_no_bit(monkeypatch, run, *args) -> None:
    """``run(*args)`` gives bit-identical results on 1, 2 and 3 threads (``JLSTM_NATIVE_THREADS``)."""
    out = {}
    for n in ("1", "2", "3"):
        monkeypatch.setenv("JLSTM_NATIVE_THREADS", n)
        out[n] = jax.tree.map(np.asarray, run(*args))
    for n in ("2", "3"):
        for a, b in zip(jax.tree.leaves(out["1"]), jax.tree.leaves(out[n])):
            np.testing.assert_array_equal(a, b)


def resets_match_episodes(family, cell, params, xs, state, final_term) -> None:
    """Values and gradients of a masked run with resets on the native kernels (their forward in the run's
    program, their adjoint in the gradient's) equal those of every episode run alone; the loss adds
    ``final_term(final)``."""
    T, B = xs.shape[:2]
    resets = np.asarray(jax.random.uniform(jax.random.key(4), (T, B)) < 0.25)
    valid = np.asarray(jax.random.uniform(jax.random.key(5), (T, B)) < 0.85)
    ct = jax.random.normal(jax.random.key(6), (T, B, state.h.shape[-1]))

    def loss(scan_fn):
        def f(p, x):
            final, ys = scan_fn(p, x)
            return jnp.sum(ys * ct) + final_term(final)
        return f

    def native_run(p, x):
        return jlstm.scan(cell, p, x, state, resets=jnp.asarray(resets), mask=jnp.asarray(valid))

    def episodes(p, x):
        return run_episodes(cell, p, x, resets, valid=valid, state=state)

    assert f"jlstm_{family}_forward" in str(jax.make_jaxpr(native_run)(params, xs))
    assert f"jlstm_{family}_adjoint" in str(jax.make_jaxpr(jax.grad(loss(native_run), argnums=(0, 1)))(params, xs))
    close(jax.jit(native_run)(params, xs), jax.jit(episodes)(params, xs), 2e-5)
    got = jax.jit(jax.grad(loss(native_run), argnums=(0, 1)))(params, xs)
    close(got, jax.jit(jax.grad(loss(episodes), argnums=(0, 1)))(params, xs), 3e-5)
