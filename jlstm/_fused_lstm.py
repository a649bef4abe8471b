"""The fast path for the peephole-free LSTM: the cuDNN design in plain JAX.

Forward: one GEMM projects the inputs of all T steps, then a scan does one fused
(H, 4H) recurrent GEMM and one elementwise block per step.

Backward (``custom_vjp``): a reverse scan carries (dh, dc) and emits only the per-step
pre-activation gradients ``dz_t`` (4H). The weight and input gradients then come out
of single GEMMs over all T·B rows::

    dW_h = H_prevᵀ dZ      dW_x = Xᵀ dZ      db = Σ dZ      dX = dZ W_xᵀ

so the sequential critical path holds only ``dz_t W_hᵀ``. Masked steps (padding or a
False mask) keep the state, output zeros and pass the incoming gradient through.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jlstm._math import matmul


def _gates(z: jax.Array):
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    return jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)


def _forward(w_x, w_h, b, xs, h0, c0, m, dtype, unroll, save):
    out_dtype = dtype or jnp.result_type(xs.dtype, w_x.dtype)
    xp = matmul(xs, w_x, dtype) + b.astype(dtype or b.dtype)
    w_h_c = w_h if dtype is None else w_h.astype(dtype)

    def body(carry, inp):
        h, c = carry
        xp_t, m_t = inp
        z = xp_t + matmul(h, w_h_c, dtype)
        i, f, g, o = _gates(z)
        c_new = f * c + i * g
        tc = jnp.tanh(c_new)
        h_new = o * tc
        if m_t is None:
            h_next, c_next, y = h_new, c_new, h_new
        else:
            mm = m_t[:, None]
            h_next = jnp.where(mm, h_new, h)
            c_next = jnp.where(mm, c_new, c)
            y = jnp.where(mm, h_new, 0.0)
        res = (h, c, jnp.concatenate([i, f, g, o], axis=-1), tc) if save else None
        return (h_next.astype(h.dtype), c_next.astype(c.dtype)), (y.astype(out_dtype), res)

    (hT, cT), (ys, res) = lax.scan(body, (h0, c0), (xp, m), unroll=unroll)
    return hT, cT, ys, res


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def lstm_sequence(w_x, w_h, b, xs, h0, c0, m, dtype, unroll):
    """Run the peephole-free LSTM over ``xs`` [T, B, I] from (h0, c0) [B, H].

    ``m`` is None or a bool [T, B] of valid steps. Returns ``(h_T, c_T, ys)``.
    """
    hT, cT, ys, _ = _forward(w_x, w_h, b, xs, h0, c0, m, dtype, unroll, save=False)
    return hT, cT, ys


def _fwd(w_x, w_h, b, xs, h0, c0, m, dtype, unroll):
    hT, cT, ys, res = _forward(w_x, w_h, b, xs, h0, c0, m, dtype, unroll, save=True)
    return (hT, cT, ys), (w_x, w_h, b, xs, m, res)


def _bwd(dtype, unroll, saved, cts):
    w_x, w_h, b, xs, m, (hs, cs, gates, tcs) = saved
    dhT, dcT, dys = cts
    f32 = hs.dtype
    w_h_t = (w_h if dtype is None else w_h.astype(dtype)).T

    def body(carry, inp):
        dh, dc = carry
        dy, c_prev, gate, tc, m_t = inp
        i, f, g, o = jnp.split(gate, 4, axis=-1)
        dy = dy.astype(f32)
        if m_t is None:
            g_h, g_c = dh + dy, dc
        else:
            mm = m_t[:, None]
            g_h = jnp.where(mm, dh + dy, 0.0)
            g_c = jnp.where(mm, dc, 0.0)
        d_c_new = g_c + g_h * o * (1.0 - tc * tc)
        dz = jnp.concatenate([
            d_c_new * g * i * (1.0 - i),
            d_c_new * c_prev * f * (1.0 - f),
            d_c_new * i * (1.0 - g * g),
            g_h * tc * o * (1.0 - o),
        ], axis=-1)
        dh_prev = matmul(dz, w_h_t, dtype).astype(f32)
        dc_prev = d_c_new * f
        if m_t is not None:
            dh_prev = dh_prev + jnp.where(mm, 0.0, dh)
            dc_prev = dc_prev + jnp.where(mm, 0.0, dc)
        return (dh_prev, dc_prev), dz

    (dh0, dc0), dzs = lax.scan(
        body, (dhT.astype(f32), dcT.astype(f32)), (dys, cs, gates, tcs, m),
        reverse=True, unroll=unroll)
    T, B, I = xs.shape
    H4 = dzs.shape[-1]
    dz2 = dzs.reshape(T * B, H4)
    dw_h = matmul(hs.reshape(T * B, -1).T, dz2, dtype)
    dw_x = matmul(xs.reshape(T * B, I).T, dz2, dtype)
    db = jnp.sum(dz2, axis=0)
    dxs = matmul(dzs, w_x.T, dtype)
    return (dw_x.astype(w_x.dtype), dw_h.astype(w_h.dtype), db.astype(b.dtype),
            dxs.astype(xs.dtype), dh0.astype(hs.dtype), dc0.astype(cs.dtype), None)


lstm_sequence.defvjp(_fwd, _bwd)


def make_fused(dtype: jnp.dtype | None):
    """The ``Cell.fused`` entry for ``jlstm.lstm`` without peepholes, projection or clipping."""

    def fused(params, xs, state, valid, unroll):
        T, batch, I = xs.shape[0], xs.shape[1:-1], xs.shape[-1]
        B = math.prod(batch)
        H = state.c.shape[-1]
        x2 = xs.reshape(T, B, I)
        m = None if valid is None else valid.reshape(T, B)
        hT, cT, ys = lstm_sequence(params.w_x, params.w_h, params.b, x2,
                                   state.h.reshape(B, H), state.c.reshape(B, H), m, dtype, unroll)
        final = type(state)(h=hT.reshape(batch + (H,)).astype(state.h.dtype),
                            c=cT.reshape(batch + (H,)).astype(state.c.dtype))
        return final, ys.reshape((T,) + batch + (H,))

    return fused
