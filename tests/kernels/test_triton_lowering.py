"""Every Pallas kernel lowers to Triton for CUDA, on a machine without a GPU.

``jax.export`` with ``platforms=["cuda"]`` runs Pallas's Triton lowering (the kernel body to
Triton IR) on any host, so a primitive Triton has no rule for, a shape it rejects at lowering, or
a typo in a GPU-only branch (the wide kernel's grid barrier, which interpret mode never runs) fails
here rather than on the first GPU run. What this cannot check is Triton's own compilation to PTX
(shared-memory limits, minimum dot sizes) and the kernels' behaviour on a device:
``benchmarks/gpu_check.py`` does that. The forward kernel and, through ``jax.grad``, the backward
kernel are lowered for each: the one-program LSTM, the sLSTM, and the wide LSTM in float32 and bf16.
"""

import jax
import jax.numpy as jnp
import pytest
from jax import export

import jlstm
from jlstm.core.plan import PLANS
from jlstm.kernels import pallas_lstm as _pallas_lstm
from jlstm.kernels import pallas_lstm_wide as _wide
from jlstm.kernels import pallas_slstm as _slstm

TRITON = "__gpu$xla.gpu.triton"


def _triton_calls(fn, *args) -> int:
    """Lower ``fn`` for CUDA and count its Triton kernels (their custom calls carry no compatibility
    guarantee, so the check against serialising them is turned off: nothing is serialised)."""
    exported = export.export(jax.jit(fn), platforms=["cuda"],
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON)])(*args)
    return exported.mlir_module().count(TRITON)


def _lstm_inputs(T, B, I, H):
    params = jlstm.lstm(H).init(jax.random.key(0), I)
    return params, jnp.ones((T, B, I)), jnp.zeros((B, H))


def _forward_and_grad(run, params, xs, h):
    def grad(p):
        return jax.grad(lambda q: jnp.sum(run(q, xs, h)[2]))(p)
    return _triton_calls(run, params, xs, h), _triton_calls(grad, params)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_wide_lstm_lowers(dtype):
    """The grid-barrier kernels (atomics, block barriers, the polling loop) at H=256, 16 column blocks."""
    T, B, I, H = 3, 16, 8, 256
    st = _wide.options(B, H, dtype, plan=PLANS["gpu"], sms=132)
    assert st is not None and not st.interpret

    def run(p, xs, h):
        return _wide.lstm_wide(p.w_x, p.w_h, p.b, xs, h, h, None, None, st=st)

    assert _forward_and_grad(run, *_lstm_inputs(T, B, I, H)) == (1, 2)


def test_the_one_program_lstm_lowers():
    T, B, I, H = 3, 16, 8, 64

    def run(p, xs, h):
        return _pallas_lstm.lstm_pallas(p.w_x, p.w_h, p.b, xs, h, h, None, False)

    assert _forward_and_grad(run, *_lstm_inputs(T, B, I, H)) == (1, 2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_slstm_lowers(dtype):
    T, B, heads, d = 3, 16, 2, 32
    st = _slstm.route(PLANS["gpu"], d, dtype)
    assert st is not None and st.backward_kernel and not st.interpret
    xp = jnp.ones((T, B, 4 * heads * d))
    w = jnp.full((heads, d, 4 * d), 0.01, dtype)
    state = tuple(jnp.zeros((B, heads * d)) for _ in range(3)) + (jnp.zeros((B, heads * d)),)

    def run(x, w):
        final, ys = _slstm.slstm_pallas(x, w, state, None, None, st)
        return final, None, ys

    def grad(x, w):
        return jax.grad(lambda a, b: jnp.sum(run(a, b)[2]), argnums=(0, 1))(x, w)

    assert _triton_calls(run, xp, w) == 1
    assert _triton_calls(grad, xp, w) == 2
