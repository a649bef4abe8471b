"""A Pallas LSTM for small batches on GPU: the loop over time runs inside one kernel.

At batch ≤ 64 a GPU LSTM is latency-bound: an XLA while-loop iteration costs several µs,
more than the step's (B, H)×(H, 4H) GEMM. Here the loop over T runs inside the kernel
(a persistent kernel: one launch for the whole sequence), and ``W_h`` stays on chip
across the steps (see ``KERNEL_MAX_HIDDEN`` for the sizes where it fits).

* Forward kernel (:func:`_forward_kernel`): from the hoisted input projection
  ``xp = X W_x + b`` ([T, B, 4H], one GEMM outside the kernel), each step does the four
  gate GEMMs ``h W_h[:, k]`` and the cell update, and stores the states and the gates
  (the backward pass's residuals).
* Backward kernel (:func:`_backward_kernel`): the reverse loop carries ``(dh, dc)``, does
  the gate derivatives and the recurrent GEMMs ``dz W_hᵀ``, and returns ``dZ``
  [T, B, 4H]; the weight and input gradients are single GEMMs over all T·B rows outside
  the kernel: ``dW_h = H_prevᵀ dZ``, ``dW_x = Xᵀ dZ``, ``db = Σ dZ``, ``dX = dZ W_xᵀ``.

Masked steps (padding or a False mask) keep the state, output zeros and pass the
gradient through, as everywhere in jlstm. A reset step (``resets``) starts from zeros, and
the backward kernel stops the gradient there. The batch is padded to a power of two ≥ 16
(Triton's smallest dot) with masked rows. ``jlstm.lstm`` takes this path where the routing
plan allows it and :func:`fits` (B ≤ ``plan.pallas_max_batch``, H a power of two from 16 to
``plan.pallas_max_hidden``, float32, no peepholes), else the fused scan of
:mod:`jlstm.kernels.fused_lstm`. On CPU it runs in Pallas interpret mode, which is how the
tests check it against the reference path.

Derivatives: :func:`lstm_pallas` is a ``custom_vjp`` over both kernels (reverse mode only).
``jlstm.lstm`` runs :func:`forward` as the primal loop of the fused LSTM's ``custom_jvp``
instead, so ``jax.jvp`` works and ``jax.grad`` transposes the fused XLA tangent loop. The
backward kernel stays out of that route: the only JAX hook that gives a linear function a
custom transpose (``jax.custom_derivatives.linear_call``) has no ``vmap`` rule in jax 0.10,
and ``jax.vmap`` of a training step (``jlstm.population``) has to keep working.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jlstm.core.plan import Plan, current_plan

# The kernel is one program that holds W_h and its working blocks in one SM's shared memory.
# Measured on an H200 (jax 0.11.2, 2026-12-04, benchmarks/results/check_gpu.json): H = 64 runs and
# matches the reference; H = 128 asks Triton for 532,480 bytes of the 232,448 an SM has and fails
# with RESOURCE_EXHAUSTED. Wider layers need the kernel tiled over H and spread over the SMs (not
# written yet), so the GPU plan (jlstm.core.plan, pallas_max_hidden) routes only up to 64;
# benchmarks.peers' jlstm_pallas tries it wider.
KERNEL_MAX_HIDDEN = 1024


def enabled() -> bool:
    """``JLSTM_PALLAS=0`` in the environment turns the kernel off (it has not yet been timed on a GPU)."""
    return os.environ.get("JLSTM_PALLAS", "1").strip().lower() not in ("0", "false", "no", "off")


def interpret_mode(plan: Plan | None = None) -> bool:
    """Pallas interpret mode everywhere but on a GPU (the kernels are written for Triton).

    ``plan``: the routing table of the backend the kernel runs on (``None``: the default backend's).
    """
    return (plan or current_plan()).backend != "gpu"


def fits(batch: int, hidden: int, dtype, peephole: str | None, max_hidden: int | None = None, *,
         plan: Plan | None = None) -> bool:
    """Whether ``jlstm.lstm`` takes the Pallas kernel: where ``plan`` (``None``: the default backend's)
    allows it, for the small-batch shapes it serves (``max_hidden``: the plan's ``pallas_max_hidden``)."""
    plan = plan or current_plan()
    max_hidden = plan.pallas_max_hidden if max_hidden is None else max_hidden
    pow2 = hidden >= 16 and hidden & (hidden - 1) == 0
    f32 = dtype is None or jnp.dtype(dtype) == jnp.float32
    shape_ok = 1 <= batch <= plan.pallas_max_batch and pow2 and hidden <= max_hidden
    return enabled() and plan.pallas and peephole is None and f32 and shape_ok


def _call(kernel, out_shape, interpret: bool):
    """``pl.pallas_call`` for Triton on a GPU (named, since some JAX versions default to Mosaic GPU,
    for which these kernels are not written; Triton's default warps and stages), interpret mode elsewhere."""
    if interpret:
        return pl.pallas_call(kernel, out_shape=out_shape, interpret=True)
    from jax.experimental.pallas import triton as pltriton

    return pl.pallas_call(kernel, out_shape=out_shape, compiler_params=pltriton.CompilerParams())


def _padded_batch(B: int) -> int:
    return max(16, 1 << (B - 1).bit_length())


def _sigmoid(z):
    return 0.5 * jnp.tanh(0.5 * z) + 0.5  # tanh lowers everywhere (Triton: libdevice)


def _forward_kernel(xp_ref, w_ref, h0_ref, c0_ref, m_ref, r_ref, hs_ref, cs_ref, acts_ref, *, T: int, H: int):
    """The loop over T: per step four (B, H)×(H, H) gate GEMMs and the cell update."""

    def step(t, carry):
        h, c = carry
        fresh = r_ref[t] > 0  # [B, 1]: a reset starts the step from zeros
        h, c = jnp.where(fresh, 0.0, h), jnp.where(fresh, 0.0, c)
        z = [xp_ref[t, :, k * H:(k + 1) * H]
             + jnp.dot(h, w_ref[:, k * H:(k + 1) * H], preferred_element_type=jnp.float32) for k in range(4)]
        i, f, g, o = _sigmoid(z[0]), _sigmoid(z[1]), jnp.tanh(z[2]), _sigmoid(z[3])
        c_new = f * c + i * g
        h_new = o * jnp.tanh(c_new)
        valid = m_ref[t] > 0  # [B, 1]
        h_next, c_next = jnp.where(valid, h_new, h), jnp.where(valid, c_new, c)
        hs_ref[t] = h_next
        cs_ref[t] = c_next
        for k, a in enumerate((i, f, g, o)):
            acts_ref[t, :, k * H:(k + 1) * H] = a
        return h_next, c_next

    lax.fori_loop(0, T, step, (h0_ref[...], c0_ref[...]))


def _backward_kernel(dys_ref, acts_ref, cs_ref, c0_ref, m_ref, r_ref, w_ref, dhT_ref, dcT_ref,
                     dz_ref, dh0_ref, dc0_ref, *, T: int, H: int):
    """The reverse loop: gate derivatives, ``dZ`` out, and ``dz W_hᵀ`` per step; a reset stops the gradient."""

    def step(s, carry):
        dh, dc = carry
        t = T - 1 - s
        i, f, g, o = (acts_ref[t, :, k * H:(k + 1) * H] for k in range(4))
        c = cs_ref[t]
        fresh = r_ref[t] > 0
        c_prev = jnp.where(fresh, 0.0, jnp.where(t > 0, cs_ref[jnp.maximum(t - 1, 0)], c0_ref[...]))
        tc = jnp.tanh(c)
        valid = m_ref[t] > 0
        u = dh + dys_ref[t]
        d = dc + u * o * (1.0 - tc * tc)
        dz = (d * g * i * (1.0 - i), d * c_prev * f * (1.0 - f), d * i * (1.0 - g * g), u * tc * o * (1.0 - o))
        back = jnp.zeros_like(dh)
        for k, dz_k in enumerate(dz):
            dz_k = jnp.where(valid, dz_k, 0.0)
            dz_ref[t, :, k * H:(k + 1) * H] = dz_k
            back = back + lax.dot_general(dz_k, w_ref[:, k * H:(k + 1) * H], (((1,), (1,)), ((), ())),
                                          preferred_element_type=jnp.float32)  # dz_k W_kᵀ
        dh_prev, dc_prev = jnp.where(valid, back, dh), jnp.where(valid, d * f, dc)
        return jnp.where(fresh, 0.0, dh_prev), jnp.where(fresh, 0.0, dc_prev)

    dh0, dc0 = lax.fori_loop(0, T, step, (dhT_ref[...], dcT_ref[...]))
    dh0_ref[...] = dh0
    dc0_ref[...] = dc0


def _pad(a, Bp, axis):
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, Bp - a.shape[axis])
    return jnp.pad(a, pad)


def _flags(flags, T, B, Bp, default):
    """A bool [T, B] (``None``: all ``default``) as float [T, Bp, 1], the padded rows 0 (invalid, no reset)."""
    f = jnp.full((T, B), float(default), jnp.float32) if flags is None else flags.astype(jnp.float32)
    return _pad(f, Bp, 1)[..., None]


def _run_forward(w_x, w_h, b, xs, h0, c0, m, r, interpret):
    """Padded forward: ``(hs, cs, acts, mf, rf)`` over the padded batch (flags as float [T, Bp, 1])."""
    T, B, _ = xs.shape
    H = h0.shape[-1]
    Bp = _padded_batch(B)
    xp = _pad(jnp.matmul(xs, w_x) + b, Bp, 1)
    mf, rf = _flags(m, T, B, Bp, True), _flags(r, T, B, Bp, False)
    f32 = jnp.float32
    shapes = (jax.ShapeDtypeStruct((T, Bp, H), f32), jax.ShapeDtypeStruct((T, Bp, H), f32),
              jax.ShapeDtypeStruct((T, Bp, 4 * H), f32))
    hs, cs, acts = _call(functools.partial(_forward_kernel, T=T, H=H), shapes, interpret)(
        xp, w_h, _pad(h0, Bp, 0), _pad(c0, Bp, 0), mf, rf)
    return hs, cs, acts, mf, rf


def forward(w_x, w_h, b, xs, h0, c0, m, r, interpret: bool):
    """The forward kernel alone: ``(h_T, c_T, ys, (hs, cs, acts))``, the residuals the fused LSTM's
    ``custom_jvp`` reads (``acts`` as [T, B, 4, H]); ``m``, ``r``: None or bool [T, B]."""
    T, B = xs.shape[:2]
    H = h0.shape[-1]
    out, (hs, cs, acts, _, _) = _primal(w_x, w_h, b, xs, h0, c0, m, r, interpret)
    return (*out, (hs[:, :B], cs[:, :B], acts[:, :B].reshape(T, B, 4, H)))


def lstm_pallas(w_x, w_h, b, xs, h0, c0, m=None, interpret: bool = False, resets=None):
    """The LSTM over ``xs`` [T, B, I] from ``(h0, c0)`` [B, H], float32; ``m`` None or bool [T, B].

    Returns ``(h_T, c_T, ys)`` like :func:`jlstm.lstm_sequence`. ``resets`` (None or bool
    [T, B], False at invalid steps) starts step t from zeros where True. ``interpret=True``
    runs the kernels in Pallas interpret mode (any backend). Reverse mode only (a
    ``custom_vjp`` whose backward is :func:`_backward_kernel`); ``jlstm.lstm`` reaches the
    forward kernel through the fused LSTM's ``custom_jvp`` instead, which serves both modes.
    """
    return _lstm_pallas(w_x, w_h, b, xs, h0, c0, m, resets, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _lstm_pallas(w_x, w_h, b, xs, h0, c0, m, r, interpret: bool):
    return _primal(w_x, w_h, b, xs, h0, c0, m, r, interpret)[0]


def _primal(w_x, w_h, b, xs, h0, c0, m, r, interpret):
    B = xs.shape[1]
    hs, cs, acts, mf, rf = _run_forward(w_x, w_h, b, xs, h0, c0, m, r, interpret)
    ys = (hs * mf)[:, :B]  # a valid step outputs h_t, a masked one zeros
    out = (hs[-1, :B], cs[-1, :B], ys) if xs.shape[0] else (h0, c0, ys)
    return out, (hs, cs, acts, mf, rf)


def _fwd(w_x, w_h, b, xs, h0, c0, m, r, interpret):
    out, res = _primal(w_x, w_h, b, xs, h0, c0, m, r, interpret)
    return out, (w_x, w_h, xs, h0, c0) + res


def _bwd(interpret, saved, cts):
    w_x, w_h, xs, h0, c0, hs, cs, acts, mf, rf = saved
    dhT, dcT, dys = cts
    T, B, I = xs.shape
    Bp, H = hs.shape[1], hs.shape[2]
    f32 = jnp.float32
    shapes = (jax.ShapeDtypeStruct((T, Bp, 4 * H), f32), jax.ShapeDtypeStruct((Bp, H), f32),
              jax.ShapeDtypeStruct((Bp, H), f32))
    dz, dh0, dc0 = _call(functools.partial(_backward_kernel, T=T, H=H), shapes, interpret)(
        _pad(dys.astype(f32), Bp, 1), acts, cs, _pad(c0, Bp, 0), mf, rf, w_h,
        _pad(dhT.astype(f32), Bp, 0), _pad(dcT.astype(f32), Bp, 0))
    dz = dz[:, :B]
    h_prev = jnp.concatenate([h0[None], hs[:-1, :B]], axis=0) * (1.0 - rf[:, :B])  # zeros at a reset
    dz2 = dz.reshape(T * B, 4 * H)
    dw_h = jnp.matmul(h_prev.reshape(T * B, H).T, dz2)
    dw_x = jnp.matmul(xs.reshape(T * B, I).T, dz2)
    dxs = jnp.matmul(dz, w_x.T)
    return (dw_x, dw_h, jnp.sum(dz2, axis=0), dxs, dh0[:B], dc0[:B], None, None)


_lstm_pallas.defvjp(_fwd, _bwd)
