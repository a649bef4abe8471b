"""The Pallas sLSTM kernels (forward, backward, tangent recurrence), run in Pallas interpret mode on CPU.

``jlstm.scan`` is routed to the kernels by a plan that allows them (the CPU plan with
``pallas_slstm=True``: interpret mode), and its values, gradients and forward-mode derivatives are
compared with the cell's own step loop (``fast=False``), with valid-step masks, resets, fresh units
(``n = 0``), several heads and head sizes, batches padded to whole tiles, float32 and bf16.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
import jlstm._scan as _scan_mod
from jlstm.core.plan import PLANS
from jlstm.kernels import pallas_slstm as ps

T, B = 5, 3


def _setup(H, heads, I, seed=0, **options):
    cell = jlstm.slstm(H, num_heads=heads, **options)
    k = jax.random.split(jax.random.key(seed), 8)
    params = cell.init(k[0], I)
    params = params._replace(b=jax.random.normal(k[1], params.b.shape), w_h=params.w_h * 1.5)
    xs = 1.5 * jax.random.normal(k[2], (T, B, I))
    n0 = (jnp.abs(jax.random.normal(k[3], (B, H))) + 0.5).at[0, :3].set(0.0)   # three fresh units
    state = jlstm.SLSTMState(h=0.5 * jax.random.normal(k[4], (B, H)),
                             c=jnp.where(n0 == 0, 0.0, jax.random.normal(k[5], (B, H))), n=n0,
                             m=jax.random.normal(k[6], (B, H)))
    flags = np.random.default_rng(seed).random((2, T, B))
    mask, resets = jnp.asarray(flags[0] < 0.75).at[:, 2].set(True), jnp.asarray(flags[1] < 0.3)
    return cell, params, xs, state, mask, resets, jax.random.normal(k[7], (T, B, H))


@pytest.fixture
def kernel_plan(monkeypatch):
    """Route jlstm.scan by a plan that allows the kernels (interpret mode here), with 2-row tiles."""
    plan = PLANS["cpu"]._replace(pallas_slstm=True, pallas_slstm_tile=2)
    monkeypatch.setattr(_scan_mod, "current_plan", lambda: plan)
    return plan


def _loss(cell, mask, resets, ct, fast):
    def loss(p, x, s):
        final, ys = jlstm.scan(cell, p, x, s, mask=mask, resets=resets, method=jlstm.Sequential(fast=fast))
        extra = sum((k + 1.0) * jnp.sum(a) for k, a in enumerate(final))
        return jnp.sum(ys.astype(jnp.float32) * ct) + extra, (final, ys)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _close(got, want, rtol, atol):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name, H, heads, I, options, tol", [
    ("float32", 8, 2, 3, {}, (2e-5, 1e-4)),
    ("bf16", 48, 3, 6, dict(dtype=jnp.bfloat16, forget_gate="exponential", headwise_input=True), (1e-3, 3e-2)),
])
def test_kernels_equal_the_step_loop(kernel_plan, name, H, heads, I, options, tol):
    """Values through the forward kernel, gradients (params, inputs, state) through the backward kernel."""
    cell, params, xs, state, mask, resets, ct = _setup(H, heads, I, **options)
    kernel, loop = _loss(cell, mask, resets, ct, True), _loss(cell, mask, resets, ct, False)
    assert str(jax.make_jaxpr(kernel)(params, xs, state)).count("pallas_call") == 2   # forward and backward
    (value, (final, ys)), grads = kernel(params, xs, state)
    (want_value, want_out), want_grads = loop(params, xs, state)
    _close((final, ys), want_out, rtol=tol[0], atol=tol[0])
    _close(grads, want_grads, rtol=tol[1], atol=tol[1])
    assert ys.dtype == want_out[1].dtype and final.c.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(ys[~mask]))) == 0.0          # invalid steps output zeros


def test_forward_mode_and_grad_of_vmap_take_the_tangent_scan(kernel_plan):
    """jax.jvp evaluates the tangent recurrence in XLA; grad of a vmapped loss transposes that scan."""
    cell, params, xs, state, mask, resets, _ = _setup(6, 1, 2, seed=1)
    tangents = jax.tree.map(lambda a: jax.random.normal(jax.random.key(9), a.shape), (params, xs, state))

    def run(fast):
        return lambda p, x, s: jlstm.scan(cell, p, x, s, mask=mask, resets=resets,
                                          method=jlstm.Sequential(fast=fast))

    got = jax.jit(lambda *a: jax.jvp(run(True), a, tangents))(params, xs, state)
    want = jax.jit(lambda *a: jax.jvp(run(False), a, tangents))(params, xs, state)
    _close(got, want, rtol=1e-4, atol=1e-4)

    stacked = jax.tree.map(lambda a: jnp.stack([a, 0.8 * a]), params)

    def total(fast):
        per = jax.vmap(lambda p, x, s: jnp.sum(run(fast)(p, x, s)[1] ** 2), in_axes=(0, None, None))
        return jax.jit(jax.grad(lambda ps_, x, s: jnp.sum(per(ps_, x, s)), argnums=(0, 1, 2)))

    _close(total(True)(stacked, xs, state), total(False)(stacked, xs, state), rtol=1e-4, atol=1e-4)


def test_backward_without_its_kernel_transposes_the_tangent_scan():
    """Where the backward kernel does not fit, reverse mode is the XLA scan's transpose: same gradients."""
    cell, params, xs, state, mask, resets, ct = _setup(8, 2, 3, seed=2)

    def grads(backward_kernel):
        st = ps.Static(exponential=False, tile=4, interpret=True, backward_kernel=backward_kernel)

        def loss(p, x, s):
            final, ys = ps.slstm_pallas(cell.fast.project(p, x), p.w_h, tuple(s), mask, resets, st)
            return jnp.sum(ys * ct) + jnp.sum(final[3])

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

    def reference(p, x, s):
        final, ys = jlstm.scan(cell, p, x, s, mask=mask, resets=resets, fast=False)
        return jnp.sum(ys * ct) + jnp.sum(final.m)

    without = grads(False)                    # traced once: make_jaxpr and the call share the trace
    assert str(jax.make_jaxpr(without)(params, xs, state)).count("pallas_call") == 1   # the forward only
    _close(without(params, xs, state), jax.jit(jax.grad(reference, argnums=(0, 1, 2)))(params, xs, state),
           rtol=1e-4, atol=1e-4)


def test_route():
    gpu, cpu = PLANS["gpu"], PLANS["cpu"]
    assert ps.route(cpu, 64, jnp.float32) is None                      # the CPU plan keeps the step loop
    st = ps.route(gpu, 64, jnp.float32)
    assert st == ps.Static(exponential=False, tile=16, interpret=False, backward_kernel=True)
    assert ps.route(gpu, 128, jnp.bfloat16) is None                    # above the plan's head cap
    wide = gpu._replace(pallas_slstm_max_head=256)
    assert ps.route(wide, 128, jnp.float32) is None                    # 262,144 bytes of W alone
    assert ps.route(wide, 128, jnp.bfloat16).backward_kernel is False  # forward fits, backward does not
    assert ps.route(gpu, 48, jnp.float32) is None and ps.route(gpu, 8, jnp.float32) is None  # Triton: 2^k >= 16
    assert ps.route(gpu._replace(pallas_slstm_tile=8), 64, jnp.float32) is None
    assert ps.route(gpu, 64, jnp.float16) is None
    interp = cpu._replace(pallas_slstm=True, pallas_slstm_tile=2)
    assert ps.route(interp, 3, jnp.float32, True) == ps.Static(True, 2, True, True)   # interpret: any size
    # the module docstring's arithmetic (tile 16): float32 d=64, bf16 d=64 and d=128
    assert [ps.shared_bytes(64, 16, 4), ps.shared_bytes(64, 16, 4, True)] == [86_016, 167_936]
    assert [ps.shared_bytes(64, 16, 2), ps.shared_bytes(64, 16, 2, True)] == [51_200, 92_160]
    assert [ps.shared_bytes(128, 16, 2), ps.shared_bytes(128, 16, 2, True)] == [167_936, 315_392]


def test_default_cpu_plan_and_float64_keep_the_step_loop(monkeypatch):
    cell, params, xs, state, mask, resets, _ = _setup(8, 2, 3)

    def kernels_in(p, x, s):
        return str(jax.make_jaxpr(lambda *a: jlstm.scan(cell, *a, mask=mask, resets=resets))(p, x, s)).count(
            "pallas_call")

    assert kernels_in(params, xs, state) == 0
    plan = PLANS["cpu"]._replace(pallas_slstm=True)
    monkeypatch.setattr(_scan_mod, "current_plan", lambda: plan)
    with jax.enable_x64(True):
        cell64 = jlstm.slstm(8, num_heads=2, param_dtype=jnp.float64)
        p64 = cell64.init(jax.random.key(0), 3)
        x64 = xs.astype(jnp.float64)
        assert str(jax.make_jaxpr(lambda p, x: jlstm.scan(cell64, p, x))(p64, x64)).count("pallas_call") == 0
