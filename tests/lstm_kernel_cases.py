"""Shared by the LSTM kernel tests (``tests/kernels/test_pallas_lstm*.py``, ``test_fused_lstm.py``): one LSTM
problem, its loss and gradients, a leaf-by-leaf comparison, and a routing plan with a spy on a kernel."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jlstm
import jlstm._scan as _scan_mod


def setup(T: int, B: int, I: int, H: int, seed: int = 0):  # noqa: E741
    """``(cell, params, xs, state, ct)``: an LSTM(H) with a non-zero bias, inputs [T, B, I], a random
    initial state and a random output cotangent [T, B, H]."""
    cell = jlstm.lstm(H)
    k = jax.random.split(jax.random.key(seed), 6)
    params = cell.init(k[0], I)
    params = params._replace(b=params.b + 0.3 * jax.random.normal(k[1], params.b.shape))
    xs = jax.random.normal(k[2], (T, B, I))
    state = jlstm.LSTMState(h=0.5 * jax.random.normal(k[3], (B, H)), c=0.5 * jax.random.normal(k[4], (B, H)))
    ct = jax.random.normal(k[5], (T, B, H))
    return cell, params, xs, state, ct


def loss_and_grads(run, params, xs, state, ct):
    """``((loss, ys), grads)`` of ``sum(ys·ct) + 1.3·sum(h_T) + 0.7·sum(c_T)`` for ``run(p, x, s) -> (final, ys)``,
    the gradients with respect to the params, the inputs and the initial state, as one compiled program
    (differentiating eagerly would compile each of its operations on its own)."""
    def loss(p, x, s):
        final, ys = run(p, x, s)
        return jnp.sum(ys * ct) + jnp.sum(1.3 * final.h) + jnp.sum(0.7 * final.c), ys

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, state)


def outputs_jvp(run, params, xs, state, tangent):
    """``jax.jvp`` of the outputs ``ys`` of ``run(params, x, state) -> (final, ys)`` in the inputs ``x``
    at ``xs`` along ``tangent``: ``(ys, ys_dot)``, as one compiled program."""
    return jax.jit(lambda x, t: jax.jvp(lambda x: run(params, x, state)[1], (x,), (t,)))(xs, tangent)


def close(a: Any, b: Any, tol: float = 2e-5) -> None:
    """Two pytrees with the same leaves, equal within ``tol`` (absolute and relative), compared in float32."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=tol, atol=tol)


def route_with_spy(monkeypatch, plan, module, name: str) -> list:
    """Route ``jlstm.scan`` by ``plan`` and wrap ``module.name``: the returned list gets each call's last
    argument (the kernel's static options), so a test can see which path ran."""
    monkeypatch.setattr(_scan_mod, "current_plan", lambda: plan)
    calls: list = []
    real = getattr(module, name)

    def spy(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(module, name, spy)
    return calls
