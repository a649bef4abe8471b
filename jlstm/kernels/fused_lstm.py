"""The fast path for ``jlstm.lstm`` (no, diagonal or full peepholes): the cuDNN design in plain JAX.

Forward: one GEMM projects the inputs of all T steps, then a scan does one fused
(H, 4H) recurrent GEMM and one elementwise block per step (on CPU at batch ≥ 8, the step
multiplies its own input, ``x_t W_x + h_{t-1} W_h``, see :func:`_inloop_default`). The article's full peephole
matrices add a ``c_{t-1} W_c`` GEMM to the forward step (one GEMM on ``[h, c]`` was
slower at batch 1); the backward step multiplies ``dz`` by ``[W_h; W_c]ᵀ`` (W_c with a
zero g block), so its one GEMM also yields the peephole part of ``dL/dc``. Diagonal
peepholes are element-wise terms in the gates and in the backward coefficients.

The four gate activations come from a single ``tanh`` over the whole ``4H``
pre-activation, since ``σ(z) = ½·tanh(z/2) + ½``::

    a = s·tanh(s·z) + (1 - s),   s = ½ on the i, f, o blocks and 1 on the g block

so ``a = [i, f, g, o]`` is formed once per step, without a concatenate, and the gates'
derivatives follow from it (``σ' = a(1-a)``, ``tanh' = 1-g²``).

Derivatives (``custom_jvp``): everything that does not depend on the tangent or the
incoming gradient (the gate derivatives, ``tanh(c_t)``, the mask) is formed by the forward
loop while it has the gates at hand, and saved as separate [T, B, H] coefficient arrays
(:func:`_coefficients`; from a Pallas kernel's saved gates, for all T at once). The tangent
is a linear recurrence (:func:`_tangent_loop`) driven by the terms of the input and
weight tangents, which are GEMMs over all T·B rows (:func:`_tangent_drive`); per step it
does the one GEMM ``dh W_h`` and a few multiply-adds. That gives ``jax.jvp``/``jacfwd``.
Reverse mode is its transpose, which JAX derives: a reverse scan that carries (dh, dc),
does the one recurrent GEMM ``dz_t W_hᵀ`` per step and emits the pre-activation
gradients ``dz_t`` (4H), then single GEMMs over all T·B rows::

    dW_h = H_prevᵀ dZ      dW_x = Xᵀ dZ      db = Σ dZ      dX = dZ W_xᵀ

(the same compiled loops and GEMMs as a hand-written ``custom_vjp``, which forward mode
could not use).

The residuals are the coefficients, the cell states (only with peepholes, whose
derivatives read them) and the hidden states (only when a mask makes them differ from the
outputs). Masked steps (padding or a False mask) keep the
state, output zeros and pass the incoming gradient through. A reset step starts from
zeros: the forward loop selects zeros for the carry, the residuals' previous states are
zeroed for all T at once, and the tangent loop multiplies zeros instead of the carried
tangent (``F = 0`` there), so its transpose passes no gradient across the reset.

The primal loop is the ``lax.scan`` above or, where the routing plan allows it (small
batches on GPU), the Pallas kernel of :mod:`jlstm.kernels.pallas_lstm`, whose saved gates
and states feed the same tangent recurrence: one ``custom_jvp`` serves both, in both modes.
On CPU (``Plan.native_from_batch``) the native kernel of :mod:`jlstm.kernels.native_lstm` runs
the primal loop, the tangent loop and, as its transpose, the backward loop; the hoisted GEMMs
stay XLA's.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jlstm.core import eager
from jlstm.core.math import matmul, matmul_t
from jlstm.core.plan import Plan, current_plan
from jlstm.kernels import native_lstm as _native
from jlstm.kernels import pallas_lstm as _pallas_lstm
from jlstm.kernels import pallas_lstm_wide as _wide

Unroll = Union[int, bool, tuple]


def _split_unroll(unroll: Unroll) -> tuple[int | bool, int | bool]:
    """``unroll`` is one value for both scans, or a ``(forward, backward)`` pair."""
    if isinstance(unroll, tuple):
        return unroll[0], unroll[1]
    return unroll, unroll


def _gate_scale(H: int, dtype) -> jax.Array:
    """``s`` of the module docstring, shaped ``(4, H)``: ½ for i, f, o and 1 for g."""
    return jnp.asarray([[0.5], [0.5], [1.0], [0.5]], dtype) * jnp.ones((1, H), dtype)


def _inloop_default(B: int, plan: Plan | None = None) -> bool:
    """Whether to multiply the inputs inside the loop: from ``plan.lstm_inloop_from_batch`` on (CPU: 8).

    XLA:CPU runs one (T·B, I)×(I, 4H) GEMM slower than T small ones of the loop (measured
    on 2 cores: 16-23 ms against 10-11 ms for T=128, B=32, I=128, H=256), and the
    hoisted product [T, B, 4H] is a round trip through memory. At batch 1 the step is a
    matrix-vector product bound by reading the weights, so hoisting wins again, as it
    does on GPU (cuDNN's design). ``plan=None``: the default backend's plan.
    """
    start = (plan or current_plan()).lstm_inloop_from_batch
    return start is not None and B >= start


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


class Options(NamedTuple):
    """The static options of one fused run (hashable: a ``nondiff_argnums`` entry)."""

    dtype: Any = None          # matmul dtype; None follows the inputs
    unroll: tuple = (1, 1)     # (forward scan, tangent/backward scan)
    inloop: bool = False       # multiply the inputs inside the loop (inference layout)
    peephole: str | None = None
    engine: str = "xla"        # the loops: "xla" (lax.scan), "native" (C++ on CPU), "pallas", "pallas_interpret"
    #                            or "pallas_wide" (the Pallas kernels run the primal loop only)
    wide: Any = None           # "pallas_wide": its options (jlstm.kernels.pallas_lstm_wide.Static)
    step_forward: bool = False  # a forward-only call runs the step loop (:func:`_step_forward`), as the plan says
    forward_engine: str | None = None  # a forward-only call's primal loop, where it differs from ``engine``


def _forward(w_x, w_h, b, w_c, xs, h0, c0, m, r, *, opts: Options, save: bool):
    """The primal loop: ``(h_T, c_T, ys, residuals)``, the residuals ``(h_t, c_t, a_t)`` stacked with ``save``.

    ``opts.engine`` picks the loop: the XLA scan of :func:`_xla_forward`, or a Pallas kernel
    (:func:`jlstm.kernels.pallas_lstm.forward` or :func:`jlstm.kernels.pallas_lstm_wide.forward`,
    which always return the residuals).
    """
    if opts.engine == "xla":
        return _xla_forward(w_x, w_h, b, w_c, xs, h0, c0, m, r, opts=opts, save=save)
    if opts.engine == "native":
        return _native_forward(w_x, w_h, b, w_c, xs, h0, c0, m, r, opts, save)
    if opts.engine == "pallas_wide":
        return _wide.forward(w_x, w_h, b, xs, h0, c0, m, r, opts.wide)
    return _pallas_lstm.forward(w_x, w_h, b, xs, h0, c0, m, r, opts.engine == "pallas_interpret")


def _xla_forward(w_x, w_h, b, w_c, xs, h0, c0, m, r, *, opts: Options, save: bool):
    """The ``lax.scan`` loop. A reset step (``r_t``) starts from zeros: two selects on the carry."""
    dtype, peephole, inloop = opts.dtype, opts.peephole, opts.inloop
    bias = b.astype(dtype or b.dtype)
    if inloop:
        # Two GEMMs per step, x_t W_x + h_{t-1} W_h; the residuals are the same as in the hoisted
        # layout. (One GEMM on [x_t, h_{t-1}] @ [W_x; W_h] was slower: 24.8-25.2 ms against 20.4-21.1
        # for the forward at T=128, B=32, I=128, H=256 on 2 CPU cores, both with the plan's unroll of 2.)
        op = _operand_dtype(xs, h0, w_x, dtype)
        w_in, w = w_x.astype(op), w_h.astype(op)
        seq = xs.astype(op)
    else:
        seq = matmul(xs, w_x, dtype) + bias
        w_in, w = w_x, (w_h if dtype is None else w_h.astype(dtype))       # w_in: not used in this layout
    wc = w_c.astype(w.dtype) if peephole == "full" else w_c

    def body(carry, inp):
        h, c = carry
        s_t, m_t, r_t = inp
        if r_t is not None:
            h, c = _restart(r_t, h), _restart(r_t, c)
        if inloop:
            z = matmul(s_t, w_in, dtype) + matmul(h.astype(s_t.dtype), w, dtype) + bias
        else:
            z = s_t + matmul(h, w, dtype)
        h_new, c_new, gates = _cell(z, c, h.dtype, wc, dtype, peephole)
        if m_t is None:
            h_next, c_next, y = h_new, c_new, h_new
        else:
            mm = m_t[:, None]
            h_next, c_next, y = jnp.where(mm, h_new, h), jnp.where(mm, c_new, c), jnp.where(mm, h_new, 0.0)
        h_next, c_next = h_next.astype(h.dtype), c_next.astype(c.dtype)
        res = None
        if save:  # the backward step's factors, formed here while the gates are at hand
            coef = _coefficients(c.astype(c_new.dtype), c_new, gates, m_t, r_t, wc, peephole)
            res = (h_next if m_t is not None else None, c_next if peephole else None, coef)
        # ys leave the loop in the state's dtype and are cast once after it: a per-step
        # cast to bf16 let XLA:CPU re-convert the whole stacked buffer at every step.
        return (h_next, c_next), (y.astype(h.dtype), res)

    (hT, cT), (ys, res) = lax.scan(body, (h0, c0), (seq, m, r), unroll=opts.unroll[0])
    return hT, cT, ys, res


@functools.partial(jax.custom_jvp, nondiff_argnums=(9, 10))
def _native_forward(w_x, w_h, b, w_c, xs, h0, c0, m, r, opts: Options, save: bool):
    """The primal loop on the native CPU kernel (:mod:`jlstm.kernels.native_lstm`), with the XLA loop's
    results: ``(h_T, c_T, ys, residuals)``, the residuals ``(hs with a mask, cs with peepholes, coefficients)``.
    Unless ``opts.inloop``, the inputs are projected by one GEMM before the loop, as in the XLA loop.

    Its own derivative (needed only at second order: the fused ``custom_jvp`` does not differentiate
    its primal loop) is the XLA loop's, which computes the same function.
    """
    hT, cT, ys, hs, cs, coef = _native.forward(w_x, w_h, b, xs, h0, c0, m, r, save=save, w_c=w_c,
                                               keep_states=save and m is not None, project_first=not opts.inloop)
    res = (hs, cs, Coefficients(coef.P, tuple(coef.Q), coef.F)) if coef is not None else None
    return hT, cT, ys, res


@_native_forward.defjvp
def _native_forward_jvp(opts: Options, save: bool, primals, tangents):
    xla = opts._replace(engine="xla")

    def loop(w_x, w_h, b, w_c, xs, h0, c0, m, r):
        return _xla_forward(w_x, w_h, b, w_c, xs, h0, c0, m, r, opts=xla, save=save)

    return jax.jvp(loop, primals, tangents)


class _Reference(NamedTuple):
    """The pure-JAX function a native primitive replaces, over the primitive's operands (hashable, so
    that it can be a primitive parameter): ``kind`` ``"tangent"`` is :func:`_tangent_loop` on the XLA
    engine, ``"adjoint"`` its transpose."""

    opts: Options
    kind: str

    def __call__(self, *args):
        xla = self.opts._replace(engine="xla")
        if self.kind == "tangent":
            drive, P, Qi, Qf, Qg, Qo, F, m, r, w_h, dh0, dc0 = args
            coef = Coefficients(P, (Qi, Qf, Qg, Qo), F)
            return _tangent_loop(xla, w_h, drive, coef, _present(m), _present(r), dh0, dc0)
        g_dys, g_dhT, g_dcT, P, Qi, Qf, Qg, Qo, F, m, r, w_h = args
        coef = Coefficients(P, (Qi, Qf, Qg, Qo), F)
        T, B, H = g_dys.shape

        def tangent(drive, dh0, dc0):
            return _tangent_loop(xla, w_h, drive, coef, _present(m), _present(r), dh0, dc0)

        zeros = tuple(jnp.zeros(shape, g_dys.dtype) for shape in ((T, B, 4 * H), (B, H), (B, H)))
        _, transpose = jax.vjp(tangent, *zeros)
        return transpose((g_dhT, g_dcT, g_dys))


def _present(a):
    """A mask operand of the native primitives: empty means absent."""
    return None if a is None or a.size == 0 else a


def _restart(r_t: jax.Array, a: jax.Array) -> jax.Array:
    """``a`` [B, ·] with the rows where ``r_t`` [B] is True set to zero (the initial state)."""
    return jnp.where(r_t[:, None], jnp.zeros((), a.dtype), a)


def _cell(z, c, h_dtype, w_c, dtype, peephole):
    """One step's element-wise block from the pre-activation ``z`` [B, 4H]: ``(h_t, c_t, (i, f, g, o))``."""
    H = c.shape[-1]
    s = _gate_scale(H, z.dtype)
    z4 = z.reshape(z.shape[:-1] + s.shape)
    if peephole == "full":  # c_{t-1} W_c for the i, f and o blocks
        pc = matmul(c.astype(h_dtype), w_c, dtype).astype(z.dtype)
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
    return o * jnp.tanh(c_new), c_new, (i, f, g, o)


def lstm_sequence(
    w_x: jax.Array,
    w_h: jax.Array,
    b: jax.Array,
    xs: jax.Array,
    h0: jax.Array,
    c0: jax.Array,
    m: jax.Array | None = None,
    w_c: jax.Array | None = None,
    *,
    peephole: str | None = None,
    dtype: Any = None,
    unroll: Unroll = 1,
    inloop: bool | None = None,
    resets: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Run the LSTM over ``xs`` [T, B, I] from (h0, c0) [B, H]; returns ``(h_T, c_T, ys)``.

    ``m`` is None or a bool [T, B] of valid steps. ``resets`` is None or a bool [T, B]:
    where True, step t starts from zeros (the initial state of :func:`jlstm.lstm`) instead
    of the carried state, and no derivative flows through it to earlier steps; resets at
    invalid steps are ignored. ``peephole`` is None, ``"diagonal"``
    (``w_c`` (3, H): i and f see c_{t-1}, o sees c_t) or ``"full"`` (``w_c`` (H, 3H)
    applied to c_{t-1}, the founding article's form), as in :func:`jlstm.lstm`.
    ``dtype`` is the matmul dtype (None: the inputs'); ``unroll`` an int (or True) for
    both scans, or a ``(forward, tangent)`` pair; ``inloop`` multiplies the inputs inside
    the loop (None: as the default backend's :class:`jlstm.core.plan.Plan` says, on CPU
    from B = 8) instead of in one GEMM before it.

    Differentiable in both modes (``jax.custom_jvp``): the tangent is a linear
    recurrence with its GEMMs hoisted, and reverse mode is its transpose, so the weight
    gradients are single GEMMs over all steps.
    """
    return eager.call(_sequence_call, (peephole, dtype, unroll, inloop), (w_x, w_h, b, xs, h0, c0, m, w_c, resets),
                      context=current_plan())


def _sequence_call(peephole: str | None, dtype: Any, unroll: Unroll, inloop: bool | None, w_x: jax.Array,
                   w_h: jax.Array, b: jax.Array, xs: jax.Array, h0: jax.Array, c0: jax.Array, m: jax.Array | None,
                   w_c: jax.Array | None, resets: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`lstm_sequence` with its options first, for :func:`jlstm.core.eager.call`."""
    if (peephole is None) != (w_c is None):
        raise ValueError(f"lstm_sequence: pass w_c exactly when peephole is set; got peephole="
                         f"{peephole!r} and w_c {'None' if w_c is None else 'given'}.")
    if peephole not in (None, "diagonal", "full"):
        raise ValueError(f"lstm_sequence: peephole must be None, 'diagonal' or 'full', got {peephole!r}.")
    if resets is not None:
        resets = _check_resets(resets, xs.shape[:2])
        resets = resets if m is None else resets & m
    if inloop is None:
        inloop = _inloop_default(xs.shape[1])
    opts = Options(dtype=dtype, unroll=_split_unroll(unroll), inloop=bool(inloop), peephole=peephole)
    return _lstm_sequence(w_x, w_h, b, xs, h0, c0, m, w_c, resets, opts)


def _check_resets(resets: Any, shape: tuple[int, ...], where: str = "lstm_sequence") -> jax.Array:
    resets = jnp.asarray(resets)
    if resets.dtype != jnp.bool_ or resets.shape != tuple(shape):
        raise ValueError(f"{where}: resets must be a bool array of shape {tuple(shape)} ([T, B], True = "
                         f"start from zeros before this step), got {resets.dtype} {resets.shape}.")
    return resets


@functools.partial(jax.custom_jvp, nondiff_argnums=(9,))
def _lstm_sequence(w_x, w_h, b, xs, h0, c0, m, w_c, r, opts: Options):
    """:func:`lstm_sequence` with its options as one record, in the same argument order.

    This primal runs only where nothing differentiates the call (JAX calls :func:`_jvp` otherwise),
    so a forward-only call may take the step loop (``opts.step_forward``) without changing training.
    """
    if opts.forward_engine is not None:
        opts = opts._replace(engine=opts.forward_engine)
    if opts.step_forward and opts.engine == "xla" and w_c is None:
        hT, cT, ys = _step_forward(w_x, w_h, b, xs, h0, c0, m, r, opts)
    else:
        hT, cT, ys, _ = _forward(w_x, w_h, b, w_c, xs, h0, c0, m, r, opts=opts, save=False)
    return hT, cT, ys.astype(_out_dtype(xs, w_x, opts.dtype))


def _step_forward(w_x, w_h, b, xs, h0, c0, m, r, opts: Options):
    """The forward pass as the cell's own step computes it (``jlstm.lstm``'s ``fast=False`` path): per step
    ``x_t W_x + b + h_{t-1} W_h``, four gate slices, ``σ`` and ``tanh``; no residuals. On an H200 this loop
    beat the fused forward at B ≤ 64 (``Plan.lstm_step_forward_to_batch``)."""
    dtype = opts.dtype
    bias = b.astype(dtype or b.dtype)

    def body(carry, inp):
        h, c = carry
        x_t, m_t, r_t = inp
        if r_t is not None:
            h, c = _restart(r_t, h), _restart(r_t, c)
        z = matmul(x_t, w_x, dtype) + bias + matmul(h, w_h, dtype)
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        cf = c.astype(z.dtype)
        c_new = jax.nn.sigmoid(zf) * cf + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        h_new = jax.nn.sigmoid(zo) * jnp.tanh(c_new)
        if m_t is None:
            h_next, c_next, y = h_new, c_new, h_new
        else:
            mm = m_t[:, None]
            h_next, c_next, y = jnp.where(mm, h_new, h), jnp.where(mm, c_new, cf), jnp.where(mm, h_new, 0.0)
        return (h_next.astype(h.dtype), c_next.astype(c.dtype)), y.astype(h.dtype)

    (hT, cT), ys = lax.scan(body, (h0, c0), (xs, m, r), unroll=opts.unroll[0])
    return hT, cT, ys


def _out_dtype(xs, w_x, dtype):
    return dtype or jnp.result_type(xs.dtype, w_x.dtype)


def _jvp(opts: Options, primals, tangents):
    """The primal loop with residuals, then the tangent recurrence (:func:`_tangent_loop`).

    Reverse mode transposes the tangent recurrence: a reverse loop with one GEMM per step
    by ``W_hᵀ``, and the hoisted GEMMs become the weight and input gradients. A reset
    cuts the tangent (and so the gradient) at its step: the state entering it is a constant.
    """
    w_x, w_h, b, xs, h0, c0, m, w_c, r = primals
    t_w_x, t_w_h, t_b, t_xs, t_h0, t_c0, _, t_w_c, _ = tangents
    hT, cT, ys, saved = _forward(w_x, w_h, b, w_c, xs, h0, c0, m, r, opts=opts, save=True)
    assert saved is not None  # save=True stacks the residuals
    hs, cs, last = saved  # the XLA loop: hs only with a mask, cs only with peepholes
    if m is None:
        hs = ys  # every step is valid, so h_t is ys[t]
    h_prev, c_prev = _previous(h0, c0, hs, cs, r)
    if isinstance(last, Coefficients):  # formed by the XLA loop
        coef = last
    else:  # a Pallas kernel's gates [T, B, 4, H]: the coefficients for all T at once
        acts = jnp.asarray(last)
        coef = _coefficients(c_prev, cs, tuple(acts[:, :, k] for k in range(4)), m, r, w_c, opts.peephole)
    f32 = coef.P.dtype
    drive = _tangent_drive(opts, xs, w_x, h_prev, c_prev, cs, t_xs, t_w_x, t_b, t_w_h, t_w_c, f32)
    dh0 = jnp.zeros(h0.shape, f32) if _is_zero(t_h0) else t_h0.astype(f32)
    dc0 = jnp.zeros(c0.shape, f32) if _is_zero(t_c0) else t_c0.astype(f32)
    w_rec = _recurrent_weight(w_h, w_c, opts.peephole)
    dhT, dcT, dys = _tangent_loop(opts, w_rec, drive, coef, m, r, dh0, dc0)
    out = _out_dtype(xs, w_x, opts.dtype)
    return ((hT, cT, ys.astype(out)),
            (dhT.astype(hT.dtype), dcT.astype(cT.dtype), dys.astype(out)))


def _previous(h0, c0, hs, cs, r):
    """The states entering each step, ``(h_{t-1}, c_{t-1})`` [T, B, ·]: zeros at a reset (``c_{t-1}``:
    None where ``cs`` is, since only peepholes and the Pallas kernels' coefficients read it)."""
    h_prev = jnp.concatenate([h0[None].astype(hs.dtype), hs[:-1]], axis=0)
    c_prev = None if cs is None else jnp.concatenate([c0[None].astype(cs.dtype), cs[:-1]], axis=0)
    if r is not None:
        rr = r[:, :, None]
        h_prev = jnp.where(rr, jnp.zeros((), h_prev.dtype), h_prev)
        c_prev = None if c_prev is None else jnp.where(rr, jnp.zeros((), c_prev.dtype), c_prev)
    return h_prev, c_prev


_lstm_sequence.defjvp(_jvp, symbolic_zeros=True)


def _is_zero(t) -> bool:
    return t is None or isinstance(t, SymbolicZero)


def _tangent_drive(opts, xs, w_x, h_prev, c_prev, cs, t_xs, t_w_x, t_b, t_w_h, t_w_c, f32):
    """The tangent terms that do not depend on the recurrence, for all T at once: [T, B, 4H].

    ``dx W_x + x dW_x + db + h_{t-1} dW_h`` (plus the peephole weights' terms): a few
    large GEMMs on ``[T·B, ·]`` matrices instead of per-step products (2-D, so that their
    transposes are the plain ``Xᵀ dZ`` GEMMs of reverse mode, without a relayout of dZ);
    zero tangents (``symbolic_zeros``) are skipped.
    """
    dtype, peephole = opts.dtype, opts.peephole
    T, B, H = h_prev.shape

    def flat(a):
        return a.reshape(T * B, a.shape[-1])

    drive = jnp.zeros((T * B, 4 * H), f32)
    if not _is_zero(t_xs):
        drive = drive + matmul(flat(t_xs), w_x, dtype).astype(f32)
    if not _is_zero(t_w_x):
        drive = drive + matmul(flat(xs), t_w_x, dtype).astype(f32)
    if not _is_zero(t_b):
        drive = drive + t_b.astype(f32)
    if not _is_zero(t_w_h):
        drive = drive + matmul(flat(h_prev), t_w_h, dtype).astype(f32)
    if not _is_zero(t_w_c) and peephole == "full":
        drive = drive + matmul(flat(c_prev).astype(h_prev.dtype), _full_peephole_block(t_w_c), dtype).astype(f32)
    elif not _is_zero(t_w_c):
        t = t_w_c.astype(f32)
        zero = jnp.zeros_like(c_prev)
        drive = drive + flat(jnp.concatenate([t[0] * c_prev, t[1] * c_prev, zero, t[2] * cs], axis=-1))
    return drive.reshape(T, B, 4 * H)


def _tangent_loop(opts, w_rec, drive, coef, m, r, dh0, dc0):
    """The tangent recurrence: per step one GEMM ``[dh (, dc)] W`` and a few multiply-adds.

    With ``u = drive_t + dh_{t-1} W_h`` split in its four gate blocks and the coefficients of
    :func:`_coefficients`, ``dc_t = F·dc_{t-1} + u_i·Q_i + u_f·Q_f + u_g·Q_g`` and
    ``dh_t = u_o·Q_o + P·dc_t``. A masked step has ``P = Q = 0`` and ``F = 1``: it keeps
    ``dc`` and, by the select, ``dh``, and outputs zero. A reset step has ``F = 0`` and
    multiplies zeros instead of the carried ``dh`` (one select before the GEMM), so in
    reverse mode no gradient crosses it.

    The layout is chosen for the transpose, the backward loop: ``lax.split`` transposes to one
    concatenate of the four ``dz`` blocks, which the recurrent GEMM and the stacked ``dZ`` share,
    and each coefficient is its own contiguous [T, B, H] array. (Reading them as one [T, B, 4, H]
    array with per-gate masked sums, the earlier layout, made XLA:CPU recompute the block
    products inside the ``dZ`` write: 152 against 131 ms for the training step at T=128, B=32,
    I=128, H=256 on 2 cores, same run.)
    """
    if opts.engine == "native":  # w_rec: W_h, or [W_h; W_c] [2H, 4H] with full peepholes
        reference = (_Reference(opts, "tangent"), _Reference(opts, "adjoint"))
        return _native.tangent(drive, coef, m, r, w_rec, dh0, dc0, reference=reference)
    dtype, full = opts.dtype, opts.peephole == "full"
    H = dc0.shape[-1]
    # W as its transpose [4H, H], laid out before the loop, so the backward loop's ``dz Wᵀ`` reads it
    # row-major (a plain product rather than one against a transposed operand: 23.5 against 25.9 ms
    # for 128 such steps at B=32, H=256 on 2 CPU cores; 119.7 against 121.5 ms for the whole
    # training step). Inside the loop XLA cannot fold the transpose back into the product.
    w_t = jnp.transpose(w_rec if dtype is None else w_rec.astype(dtype))

    def body(carry, inp):
        dh, dc = carry
        d_t, (p, q, f), m_t, r_t = inp
        rec = jnp.concatenate([dh, dc], axis=-1) if full else dh
        if r_t is not None:
            rec = _restart(r_t, rec)
        u = d_t + matmul_t(rec, w_t, dtype).astype(d_t.dtype)
        u_i, u_f, u_g, u_o = lax.split(u, (H, H, H, H), axis=1)
        dc_new = f * dc + u_i * q[0] + u_f * q[1] + u_g * q[2]
        dh_new = u_o * q[3] + p * dc_new
        dh_next = dh_new if m_t is None else jnp.where(m_t[:, None], dh_new, dh)
        return (dh_next, dc_new), dh_new

    (dhT, dcT), dys = lax.scan(body, (dh0, dc0), (drive, coef, m, r), unroll=opts.unroll[1])
    return dhT, dcT, dys


class Coefficients(NamedTuple):
    """The factors of one backward step (:func:`_coefficients`), [..., B, H] each."""

    P: jax.Array
    Q: tuple  # (Q_i, Q_f, Q_g, Q_o)
    F: jax.Array


def _coefficients(c_prev, c_new, gates, m, r, w_c=None, peephole=None) -> Coefficients:
    """Everything of the backward step that does not depend on the incoming gradient.

    With ``u = dL/dh_t`` (from later steps and from ``y_t``) and ``v = dL/dc_t``, one step
    back is ``d = v + u·P``, ``dz = [d·Q_i, d·Q_f, d·Q_g, u·Q_o]`` over the four gate blocks, and
    ``dL/dc_{t-1} = d·F`` (plus ``dz W_cᵀ`` with full peepholes, which the recurrent GEMM
    computes), where ``P = o(1 - tanh²c_t)``,
    ``Q = [g·i(1-i), c_{t-1}·f(1-f), i(1-g²), tanh(c_t)·o(1-o)]`` and ``F = f``. Diagonal
    peepholes add ``w_co·Q_o`` to P and ``w_ci·Q_i + w_cf·Q_f`` to F. A masked step gets
    ``P = Q = 0`` and ``F = 1``: the gradient passes through it unchanged. A reset step gets ``F = 0``.

    Element-wise, so it serves one step (arrays [B, H], ``m`` and ``r`` [B]: the XLA loop forms
    them while the gates are at hand) or all T at once ([T, B, H], ``m`` and ``r`` [T, B]: from a
    Pallas kernel's saved gates). ``c_prev`` is the cell state entering the step (zeros at a
    reset, :func:`_previous`), ``c_new`` the step's new one, ``gates`` ``(i, f, g, o)``.
    """
    i, f, g, o = gates
    tc = jnp.tanh(c_new)  # a masked step's values are replaced below
    Q = [g * i * (1.0 - i), c_prev * f * (1.0 - f), i * (1.0 - g * g), tc * o * (1.0 - o)]
    P = o * (1.0 - tc * tc)
    F = f
    if peephole == "diagonal":
        assert w_c is not None  # diagonal peepholes come with w_c
        wd = w_c.astype(P.dtype)
        P = P + wd[2] * Q[3]
        F = f + wd[0] * Q[0] + wd[1] * Q[1]
    if m is not None:
        mm = m[..., None]
        P = jnp.where(mm, P, 0.0)
        Q = [jnp.where(mm, q, 0.0) for q in Q]
        F = jnp.where(mm, F, 1.0)
    if r is not None:
        F = jnp.where(r[..., None], 0.0, F)
    return Coefficients(P, tuple(Q), F)


def _native_fits(plan: Plan, B: int, H: int, dtype: Any, xs: jax.Array, operands: Any, train: bool) -> bool:
    """Whether the plan sends this call to the native CPU kernel: from ``native_from_batch`` on (and for
    training up to ``native_train_to_batch``), float32 inputs and ``operands`` (the params and the state:
    the kernel computes in float32, where XLA would promote), float32 matmuls, any peepholes, H a multiple of
    8, the library built."""
    start, stop = plan.native_from_batch, plan.native_train_to_batch
    if start is None or B < start or (train and stop is not None and B > stop):
        return False
    f32 = all(a.dtype == jnp.float32 for a in jax.tree.leaves((xs, operands))) and dtype in (None, jnp.float32)
    return f32 and _native.enabled() and _native.supports(B, H, xs.shape[-1])


def _engine(plan: Plan, B: int, H: int, dtype: Any, peephole: str | None, xs: jax.Array,
            w: jax.Array, operands: Any) -> tuple[str, Any]:
    """The loops a differentiated call takes, as ``(engine, wide options)``: the native CPU kernel where
    :func:`_native_fits`, else the one-program Pallas kernel where the plan allows it and the shape
    fits, else the wide kernel where the plan allows that, else XLA's.

    The one-program kernel takes float32 inputs and weights and float32 matmuls
    (:func:`jlstm.kernels.pallas_lstm.fits`); the wide one float32 weights and float32 or bf16
    matmuls, with bf16 inputs where the matmuls are bf16
    (:func:`jlstm.kernels.pallas_lstm_wide.options`). Off a GPU they run in interpret mode. All
    engines share this module's ``custom_jvp``, so forward mode, reverse mode and resets work on each.
    """
    f32 = xs.dtype == jnp.float32 and w.dtype == jnp.float32
    if _native_fits(plan, B, H, dtype, xs, operands, train=True):
        return "native", None
    if f32 and _pallas_lstm.fits(B, H, dtype, peephole, plan=plan):
        return ("pallas_interpret" if _pallas_lstm.interpret_mode(plan) else "pallas"), None
    wide_ok = w.dtype == jnp.float32 and (xs.dtype == jnp.float32 or xs.dtype == dtype == jnp.bfloat16)
    if wide_ok and plan.pallas_wide and peephole is None and _pallas_lstm.enabled():
        st = _wide.options(B, H, dtype or jnp.float32, plan=plan, block=min(plan.pallas_wide_block, H),
                           tile=plan.pallas_wide_tile)
        if st is not None:
            return "pallas_wide", st
    return "xla", None


def make_fused(dtype: jnp.dtype | None, peephole: str | None = None) -> Callable:
    """The ``CellFast.sequence`` kernel of ``jlstm.lstm`` without projection or clipping.

    Its routing comes as data: ``plan`` (a :class:`jlstm.core.plan.Plan`; ``None``: the
    default backend's) decides where the inputs are projected, whether the Pallas
    kernel runs and the backward loop's unroll. ``resets`` (bool ``[T, *batch]``, False at
    invalid steps) restarts the state from zeros before the steps where it is True.
    """

    def fused(params: Any, xs: jax.Array, state: Any, valid: jax.Array | None, unroll: Unroll, *,
              plan: Plan | None = None, resets: jax.Array | None = None):
        plan = plan if plan is not None else current_plan()
        T, batch, I = xs.shape[0], xs.shape[1:-1], xs.shape[-1]
        B = math.prod(batch)
        H = state.c.shape[-1]
        m = None if valid is None else valid.reshape(T, B)
        r = None if resets is None else resets.reshape(T, B)
        engine, wide = _engine(plan, B, H, dtype, peephole, xs, params.w_h, (params, state))
        step_to = plan.lstm_step_forward_to_batch
        step_forward = step_to is not None and B <= step_to
        fwd_unroll, bwd_unroll = _split_unroll(unroll)
        if not isinstance(unroll, tuple) and plan.lstm_backward_unroll is not None:
            bwd_unroll = plan.lstm_backward_unroll
        forward_native = engine != "native" and _native_fits(plan, B, H, dtype, xs, (params, state), False)
        opts = Options(dtype=dtype, unroll=(fwd_unroll, bwd_unroll), inloop=_inloop_default(B, plan),
                       peephole=peephole, engine=engine, wide=wide, step_forward=step_forward,
                       forward_engine="native" if forward_native else None)
        hT, cT, ys = _lstm_sequence(params.w_x, params.w_h, params.b, xs.reshape(T, B, I), state.h.reshape(B, H),
                                    state.c.reshape(B, H), m, params.w_c if peephole else None, r, opts)
        final = type(state)(h=hT.reshape(batch + (H,)).astype(state.h.dtype),
                            c=cT.reshape(batch + (H,)).astype(state.c.dtype))
        return final, ys.reshape((T,) + batch + (H,))

    return fused
