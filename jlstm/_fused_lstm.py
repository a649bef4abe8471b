"""The fast path for ``jlstm.lstm`` (no, diagonal or full peepholes): the cuDNN design in plain JAX.

Forward: one GEMM projects the inputs of all T steps, then a scan does one fused
(H, 4H) recurrent GEMM and one elementwise block per step. The article's full peephole
matrices add a ``c_{t-1} W_c`` GEMM to the forward step (one GEMM on ``[h, c]`` was
slower at batch 1); the backward step multiplies ``dz`` by ``[W_h; W_c]ᵀ`` (W_c with a
zero g block), so its one GEMM also yields the peephole part of ``dL/dc``. Diagonal
peepholes are element-wise terms in the gates and in the backward coefficients.

The four gate activations come from a single ``tanh`` over the whole ``4H``
pre-activation, since ``σ(z) = ½·tanh(z/2) + ½``::

    a = s·tanh(s·z) + (1 - s),   s = ½ on the i, f, o blocks and 1 on the g block

so ``a = [i, f, g, o]`` is written once per step, without a concatenate, and is the
only gate residual the backward pass needs (``σ' = a(1-a)``, ``tanh' = 1-g²``).

Backward (``custom_vjp``): everything that does not depend on the incoming gradient
(the gate derivatives, ``tanh(c_t)``, the mask) is computed first for all T at once as
large vectorised element-wise ops (:func:`_coefficients`). The reverse scan then
carries (dh, dc), does a few multiply-adds and the one recurrent GEMM ``dz_t W_hᵀ``
per step, and emits only the pre-activation gradients ``dz_t`` (4H). The weight and
input gradients come out of single GEMMs over all T·B rows::

    dW_h = H_prevᵀ dZ      dW_x = Xᵀ dZ      db = Σ dZ      dX = dZ W_xᵀ

The residuals are the gates, the cell states and (only when a mask makes them differ
from the outputs) the hidden states. Masked steps (padding or a False mask) keep the
state, output zeros and pass the incoming gradient through.
"""

from __future__ import annotations

import functools
import math
from typing import Union

import jax
import jax.numpy as jnp
from jax import lax

from jlstm._math import matmul

Unroll = Union[int, bool, tuple]


def _split_unroll(unroll: Unroll) -> tuple[int | bool, int | bool]:
    """``unroll`` is one value for both scans, or a ``(forward, backward)`` pair."""
    if isinstance(unroll, tuple):
        return unroll[0], unroll[1]
    return unroll, unroll


def _gate_scale(H: int, dtype) -> jax.Array:
    """``s`` of the module docstring, shaped ``(4, H)``: ½ for i, f, o and 1 for g."""
    return jnp.asarray([[0.5], [0.5], [1.0], [0.5]], dtype) * jnp.ones((1, H), dtype)


def _inloop_default(B: int) -> bool:
    """Whether to multiply the inputs inside the loop: on CPU for batches of 8 or more.

    XLA:CPU runs one (T·B, I)×(I, 4H) GEMM slower than T small ones of the loop (measured
    on 2 cores: 16-23 ms against 10-11 ms for T=128, B=32, I=128, H=256), and the
    hoisted product [T, B, 4H] is a round trip through memory. At batch 1 the step is a
    matrix-vector product bound by reading the weights, so hoisting wins again, as it
    does on GPU (cuDNN's design).
    """
    return jax.default_backend() == "cpu" and B >= 8


def _operand_dtype(xs, h0, w, dtype):
    return dtype or jnp.result_type(xs.dtype, h0.dtype, w.dtype)


def _full_peephole_block(w_c: jax.Array) -> jax.Array:
    """(H, 3H) peephole matrices [W_ci | W_cf | W_co] as (H, 4H) with a zero g block."""
    H = w_c.shape[0]
    return jnp.concatenate([w_c[:, :2 * H], jnp.zeros((H, H), w_c.dtype), w_c[:, 2 * H:]], axis=1)


def _recurrent_weight(w_h, w_c, peephole):
    """The weight of the backward step's GEMM: W_h, or [W_h; W_c] (giving [dh, dc]) for full peepholes."""
    if peephole == "full":
        return jnp.concatenate([w_h, _full_peephole_block(w_c).astype(w_h.dtype)], axis=0)
    return w_h


def _forward(w_x, w_h, b, w_c, xs, h0, c0, m, dtype, unroll, save, inloop, peephole):
    H = c0.shape[-1]
    bias = b.astype(dtype or b.dtype)
    if inloop:
        # One GEMM per step on [x_t, h_{t-1}] @ [W_x; W_h] (inference only: training saves
        # residuals in the hoisted layout, see _fwd).
        op = _operand_dtype(xs, h0, w_x, dtype)
        w = jnp.concatenate([w_x, w_h], axis=0).astype(op)
        seq = xs.astype(op)
    else:
        seq = matmul(xs, w_x, dtype) + bias
        w = w_h if dtype is None else w_h.astype(dtype)
    if peephole == "full":
        wc = w_c.astype(w.dtype)

    def body(carry, inp):
        h, c = carry
        s_t, m_t = inp
        if inloop:
            z = matmul(jnp.concatenate([s_t, h.astype(s_t.dtype)], axis=-1), w, dtype) + bias
        else:
            z = s_t + matmul(h, w, dtype)
        s = _gate_scale(H, z.dtype)
        z4 = z.reshape(z.shape[:-1] + s.shape)
        if peephole == "full":  # c_{t-1} W_c for the i, f and o blocks
            pc = matmul(c.astype(h.dtype), wc, dtype).astype(z.dtype)
            zero = jnp.zeros_like(pc[:, :H])
            z4 = z4 + jnp.stack([pc[:, :H], pc[:, H:2 * H], zero, pc[:, 2 * H:]], axis=1)
        if peephole == "diagonal":
            # i and f see c_{t-1} (w_c rows 0, 1); o sees c_t (row 2), so it is redone below.
            wd = w_c.astype(z.dtype)
            zero = jnp.zeros_like(wd[0])
            z4 = z4 + jnp.stack([wd[0], wd[1], zero, zero]) * c.astype(z.dtype)[:, None]
        a = s * jnp.tanh(s * z4) + (1.0 - s)
        i, f, g, o = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
        c_new = f * c + i * g
        if peephole == "diagonal":
            o = 0.5 * jnp.tanh(0.5 * (z4[:, 3] + wd[2] * c_new)) + 0.5
            if save:
                a = jnp.concatenate([a[:, :3], o[:, None]], axis=1)
        h_new = o * jnp.tanh(c_new)
        if m_t is None:
            h_next, c_next, y = h_new, c_new, h_new
        else:
            mm = m_t[:, None]
            h_next = jnp.where(mm, h_new, h)
            c_next = jnp.where(mm, c_new, c)
            y = jnp.where(mm, h_new, 0.0)
        h_next, c_next = h_next.astype(h.dtype), c_next.astype(c.dtype)
        res = (h_next, c_next, a) if save else None
        # ys leave the loop in the state's dtype and are cast once after it: a per-step
        # cast to bf16 let XLA:CPU re-convert the whole stacked buffer at every step.
        return (h_next, c_next), (y.astype(h.dtype), res)

    (hT, cT), (ys, res) = lax.scan(body, (h0, c0), (seq, m), unroll=unroll)
    return hT, cT, ys, res


def lstm_sequence(w_x, w_h, b, xs, h0, c0, m=None, dtype=None, unroll=1, inloop=None,
                  w_c=None, peephole=None):
    """Run the LSTM over ``xs`` [T, B, I] from (h0, c0) [B, H].

    ``m`` is None or a bool [T, B] of valid steps; ``dtype`` the matmul dtype (None: the
    inputs'); ``unroll`` an int (or True) for both scans, or a ``(forward, backward)``
    pair; ``inloop`` multiplies the inputs inside the loop (None: on CPU when B >= 8)
    instead of in one GEMM before it. ``peephole`` is None, ``"diagonal"`` (``w_c``
    (3, H): i and f see c_{t-1}, o sees c_t) or ``"full"`` (``w_c`` (H, 3H) applied to
    c_{t-1}, the founding article's form), as in :func:`jlstm.lstm`. Returns
    ``(h_T, c_T, ys)``. Reverse-mode differentiable only (custom VJP); the weight
    gradients are single GEMMs.
    """
    if (peephole is None) != (w_c is None):
        raise ValueError(f"lstm_sequence: pass w_c exactly when peephole is set; got peephole="
                         f"{peephole!r} and w_c {'None' if w_c is None else 'given'}.")
    if peephole not in (None, "diagonal", "full"):
        raise ValueError(f"lstm_sequence: peephole must be None, 'diagonal' or 'full', got {peephole!r}.")
    if inloop is None:
        inloop = _inloop_default(xs.shape[1])
    return _lstm_sequence(w_x, w_h, b, w_c, xs, h0, c0, m, dtype, unroll, bool(inloop), peephole)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10, 11))
def _lstm_sequence(w_x, w_h, b, w_c, xs, h0, c0, m, dtype, unroll, inloop, peephole):
    hT, cT, ys, _ = _forward(w_x, w_h, b, w_c, xs, h0, c0, m, dtype, _split_unroll(unroll)[0],
                             False, inloop, peephole)
    return hT, cT, ys.astype(_out_dtype(xs, w_x, dtype))


def _out_dtype(xs, w_x, dtype):
    return dtype or jnp.result_type(xs.dtype, w_x.dtype)


def _fwd(w_x, w_h, b, w_c, xs, h0, c0, m, dtype, unroll, inloop, peephole):
    # Training always hoists the input GEMM: measured on 2 CPU cores, the in-loop layout
    # speeds up inference only (the forward with residuals runs at the same speed either
    # way, and the hoisted one is faster at batch 1).
    hT, cT, ys, res = _forward(w_x, w_h, b, w_c, xs, h0, c0, m, dtype, _split_unroll(unroll)[0],
                               True, False, peephole)
    hs, cs, acts = res
    if m is None:
        hs = ys  # every step is valid, so h_t is ys[t]: no separate copy of the states
    saved = (w_x, w_h, b, w_c, xs, h0, c0, m, hs, cs, acts)
    return (hT, cT, ys.astype(_out_dtype(xs, w_x, dtype))), saved


def _coefficients(c0, m, cs, acts, w_c=None, peephole=None):
    """Everything of the backward step that does not depend on the incoming gradient.

    With ``u = dL/dh_t`` (from later steps and from ``y_t``) and ``v = dL/dc_t``, one step
    back is ``d = v + u·P``, ``dz = [d, d, d, u]·Q`` over the four gate blocks, and
    ``dL/dc_{t-1} = d·F`` (plus ``dz W_cᵀ`` with full peepholes, which the recurrent GEMM
    computes), where ``P = o(1 - tanh²c_t)``,
    ``Q = [g·i(1-i), c_{t-1}·f(1-f), i(1-g²), tanh(c_t)·o(1-o)]`` and ``F = f``. Diagonal
    peepholes add ``w_co·Q_o`` to P and ``w_ci·Q_i + w_cf·Q_f`` to F. They are computed
    here for all T at once, as large vectorised element-wise ops, which leaves the loop a
    few multiply-adds and the one recurrent GEMM. A masked step gets ``P = Q = 0`` and
    ``F = 1``: the gradient passes through it unchanged. Also returns ``c_{t-1}``.
    """
    c_prev = jnp.concatenate([c0[None].astype(cs.dtype), cs[:-1]], axis=0)
    i, f, g, o = acts[:, :, 0], acts[:, :, 1], acts[:, :, 2], acts[:, :, 3]
    tc = jnp.tanh(cs)  # cs holds c_t on valid steps; masked steps are zeroed below
    qi, qf, qg, qo = g * i * (1.0 - i), c_prev * f * (1.0 - f), i * (1.0 - g * g), tc * o * (1.0 - o)
    P = o * (1.0 - tc * tc)
    F = f
    if peephole == "diagonal":
        wd = w_c.astype(P.dtype)
        P = P + wd[2] * qo
        F = f + wd[0] * qi + wd[1] * qf
    Q = jnp.stack([qi, qf, qg, qo], axis=2)
    if m is not None:
        mm = m[:, :, None]
        P = jnp.where(mm, P, 0.0)
        Q = jnp.where(mm[..., None], Q, 0.0)
        F = jnp.where(mm, F, 1.0)
    return P, Q, F, c_prev


def _bwd(dtype, unroll, inloop, peephole, saved, cts):
    del inloop  # _fwd always saves the hoisted layout's residuals
    w_x, w_h, b, w_c, xs, h0, c0, m, hs, cs, acts = saved
    dhT, dcT, dys = cts
    f32 = cs.dtype
    T, B, I = xs.shape
    H = cs.shape[-1]
    w_rec = _recurrent_weight(w_h, w_c, peephole)
    w_t = (w_rec if dtype is None else w_rec.astype(dtype)).T
    P, Q, F, c_prev = _coefficients(c0, m, cs, acts, w_c, peephole)
    o_block = lax.broadcasted_iota(jnp.int32, (4, H), 0) == 3

    def body(carry, inp):
        dh, dc = carry
        dy, p, q, ff, m_t = inp
        u = dh + dy.astype(f32)
        d = dc + u * p
        dz = (jnp.where(o_block, u[:, None], d[:, None]) * q).reshape(B, 4 * H)
        back = matmul(dz, w_t, dtype).astype(f32)
        dc_prev = d * ff
        if peephole == "full":
            back, dc_prev = back[:, :H], dc_prev + back[:, H:]
        if m_t is not None:
            back = jnp.where(m_t[:, None], back, dh)
        return (back, dc_prev), dz

    (dh0, dc0), dzs = lax.scan(
        body, (dhT.astype(f32), dcT.astype(f32)), (dys, P, Q, F, m),
        reverse=True, unroll=_split_unroll(unroll)[1])
    dz2 = dzs.reshape(T * B, 4 * H)
    h_prev = jnp.concatenate([h0[None].astype(hs.dtype), hs[:-1]], axis=0)
    db = jnp.sum(dz2, axis=0)
    dw_h = matmul(h_prev.reshape(T * B, H).T, dz2, dtype)
    dw_x = matmul(xs.reshape(T * B, I).T, dz2, dtype)
    dxs = matmul(dzs, w_x.T, dtype)
    dw_c = None
    if peephole == "full":
        g4 = matmul(c_prev.reshape(T * B, H).T, dz2, dtype)  # (H, 4H); the g block is unused
        dw_c = jnp.concatenate([g4[:, :2 * H], g4[:, 3 * H:]], axis=1).astype(w_c.dtype)
    elif peephole == "diagonal":
        dz4 = dzs.reshape(T, B, 4, H)
        dw_c = jnp.stack([jnp.sum(dz4[:, :, 0] * c_prev, axis=(0, 1)),
                          jnp.sum(dz4[:, :, 1] * c_prev, axis=(0, 1)),
                          jnp.sum(dz4[:, :, 3] * cs, axis=(0, 1))]).astype(w_c.dtype)
    return (dw_x.astype(w_x.dtype), dw_h.astype(w_h.dtype), db.astype(b.dtype), dw_c,
            dxs.astype(xs.dtype), dh0.astype(h0.dtype), dc0.astype(c0.dtype), None)


_lstm_sequence.defvjp(_fwd, _bwd)


def make_fused(dtype: jnp.dtype | None, peephole: str | None = None):
    """The ``Cell.fused`` entry for ``jlstm.lstm`` without projection or clipping."""

    def fused(params, xs, state, valid, unroll):
        T, batch, I = xs.shape[0], xs.shape[1:-1], xs.shape[-1]
        B = math.prod(batch)
        H = state.c.shape[-1]
        x2 = xs.reshape(T, B, I)
        m = None if valid is None else valid.reshape(T, B)
        hT, cT, ys = lstm_sequence(params.w_x, params.w_h, params.b, x2,
                                   state.h.reshape(B, H), state.c.reshape(B, H), m, dtype, unroll,
                                   w_c=params.w_c if peephole else None, peephole=peephole)
        final = type(state)(h=hT.reshape(batch + (H,)).astype(state.h.dtype),
                            c=cT.reshape(batch + (H,)).astype(state.c.dtype))
        return final, ys.reshape((T,) + batch + (H,))

    return fused
