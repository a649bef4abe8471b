"""The fast path for ``jlstm.gru``: a fused forward loop and a ``custom_jvp`` whose transpose is the backward.

The GRU in PyTorch's form (``jlstm.cells.gru``), pre-activations ``a = x W_x + b_x`` and
``e = h_{t-1} W_h + b_h`` split in the blocks r, z, n::

    r = σ(a_r + e_r),   z = σ(a_z + e_z),   n = tanh(a_n + r·e_n),   h_t = (1 - z)·n + z·h_{t-1}

Forward: on CPU at batch ≥ 8 each step multiplies its own input (``x_t W_x``, as the fused LSTM does,
:func:`jlstm.kernels.fused_lstm._inloop_default`); otherwise one GEMM projects all T inputs first.
Per step, one recurrent GEMM, one ``tanh`` over the r and z blocks together (``σ(v) = ½·tanh(v/2) + ½``)
and one over n.

Derivatives. With tangents ``u = ė`` (the recurrent GEMM's, ``ḣ_{t-1} W_h`` plus the weight and bias
terms) and ``ȧ`` (the input side), one step's tangent is::

    ḣ_t = A_r·(ȧ_r + u_r) + A_z·(ȧ_z + u_z) + A_n·(ȧ_n + R·u_n) + F·ḣ_{t-1}

    A_n = (1 - z)(1 - n²),  R = r,  A_r = A_n·e_n·r(1 - r),  A_z = (h_{t-1} - n)·z(1 - z),  F = z

The forward loop forms these five [B, H] coefficients while it has the gates and saves them as separate
[T, B, H] arrays. The terms that do not depend on the recurrence (``ȧ``, and ``h_{t-1} Ẇ_h + ḃ_h``) are
GEMMs over all T·B rows before the loop. The tangent loop (:func:`_tangent_loop`) then does one GEMM
``ḣ_{t-1} W_h`` and a few multiply-adds per step; reverse mode is its transpose (JAX derives it): a
reverse loop with one GEMM by ``W_hᵀ`` per step, and the weight, bias and input gradients as single
GEMMs over all steps. ``jax.jvp``/``jacfwd``, ``grad``, ``vmap`` and second order all follow.

A masked step (``m`` False) keeps the state and outputs zeros: ``A = 0`` and ``F = 1`` there, and the
output tangent is selected to zero. A reset step (``r`` True) starts from zeros: the carry is zeroed
before the step, the saved ``h_{t-1}`` is zero, and the tangent loop multiplies zeros instead of the
carried tangent (``F = 0``), so no gradient crosses the reset.

On CPU (``Plan.gru_native_from_batch``) the native kernel of :mod:`jlstm.kernels.native_gru` runs the
forward and tangent loops and the tangent loop's transpose (``Options.engine == "native"``); the GEMMs
over all steps stay in XLA, and the same ``custom_jvp`` serves both engines.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jlstm.core.math import matmul, matmul_t
from jlstm.core.plan import Plan, current_plan
from jlstm.kernels import native_gru as _native
from jlstm.kernels.fused_lstm import _check_resets, _inloop_default, _present, _restart, _split_unroll

Unroll = Union[int, bool, tuple]


class Options(NamedTuple):
    """The static options of one fused GRU run (hashable: a ``nondiff_argnums`` entry)."""

    dtype: Any = None          # matmul dtype; None follows the inputs
    unroll: tuple = (1, 1)     # (forward scan, tangent/backward scan)
    inloop: bool = False       # multiply the inputs inside the loop
    engine: str = "xla"        # the loops: "xla" (lax.scan) or "native" (C++ on CPU, jlstm.kernels.native_gru)
    forward_engine: str | None = None  # a forward-only call's primal loop, where it differs from ``engine``


class Coefficients(NamedTuple):
    """One step's tangent factors (:func:`_coefficients`), [..., B, H] each."""

    A_r: jax.Array
    A_z: jax.Array
    A_n: jax.Array
    R: jax.Array
    F: jax.Array


def gru_sequence(
    w_x: jax.Array,
    w_h: jax.Array,
    b_x: jax.Array,
    b_h: jax.Array,
    xs: jax.Array,
    h0: jax.Array,
    m: jax.Array | None = None,
    *,
    dtype: Any = None,
    unroll: Unroll = 1,
    inloop: bool | None = None,
    resets: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Run the GRU over ``xs`` [T, B, I] from ``h0`` [B, H]; returns ``(h_T, ys)``.

    ``w_x`` [I, 3H] and ``w_h`` [H, 3H] hold the blocks r, z, n; ``b_x`` and ``b_h`` [3H]. ``m`` is None
    or a bool [T, B] of valid steps (an invalid step keeps the state and outputs zeros). ``resets`` is
    None or a bool [T, B]: where True, step t starts from zeros instead of the carried state, and no
    derivative flows through it to earlier steps; resets at invalid steps are ignored. ``dtype`` is the
    matmul dtype (None: the inputs'; bf16 products accumulate in float32), ``unroll`` an int (or True)
    for both loops or a ``(forward, tangent)`` pair, and ``inloop`` multiplies the inputs inside the
    loop (None: as the default backend's plan says).

    Differentiable in both modes (``jax.custom_jvp``); reverse mode is the transpose of the tangent
    recurrence, so the weight gradients are single GEMMs over all steps.
    """
    T, B = xs.shape[:2]
    if resets is not None:
        resets = _check_resets(resets, (T, B), "gru_sequence")
        resets = resets if m is None else resets & m
    if inloop is None:
        inloop = _inloop_default(B)
    opts = Options(dtype=dtype, unroll=_split_unroll(unroll), inloop=bool(inloop))
    return _gru_sequence(w_x, w_h, b_x, b_h, xs, h0, m, resets, opts)


@functools.partial(jax.custom_jvp, nondiff_argnums=(8,))
def _gru_sequence(w_x, w_h, b_x, b_h, xs, h0, m, r, opts: Options):
    engine = opts.forward_engine or opts.engine
    hT, ys, _ = _forward(w_x, w_h, b_x, b_h, xs, h0, m, r, opts._replace(engine=engine), save=False)
    return hT, ys


def _forward(w_x, w_h, b_x, b_h, xs, h0, m, r, opts: Options, *, save: bool):
    """The primal loop: ``(h_T, ys, saved)``; with ``save``, ``saved = (hs, coefficients)`` stacked over T
    (``hs``, the carried states, only under a mask: otherwise they are the outputs). ``opts.engine`` picks
    the XLA scan (:func:`_xla_forward`) or the native CPU kernel (:func:`_native_forward`)."""
    if opts.engine == "native":
        return _native_forward(w_x, w_h, b_x, b_h, xs, h0, m, r, opts, save)
    return _xla_forward(w_x, w_h, b_x, b_h, xs, h0, m, r, opts, save=save)


@functools.partial(jax.custom_jvp, nondiff_argnums=(8, 9))
def _native_forward(w_x, w_h, b_x, b_h, xs, h0, m, r, opts: Options, save: bool):
    """The primal loop on the native CPU kernel, with the XLA loop's results. Unless ``opts.inloop``, the
    inputs are projected by one GEMM before the loop, as in the XLA loop. Its own derivative (needed only
    at second order: the fused ``custom_jvp`` does not differentiate its primal loop) is the XLA loop's,
    which computes the same function."""
    hT, ys, hs, coef = _native.forward(w_x, w_h, b_x, b_h, xs, h0, m, r, save=save,
                                       keep_states=save and m is not None, project_first=not opts.inloop)
    out_dtype = _out_dtype(xs, w_x, w_h, b_x, b_h, h0, opts.dtype)
    saved = None if coef is None else (hs, Coefficients(*coef))
    return hT.astype(h0.dtype), ys.astype(out_dtype), saved


@_native_forward.defjvp
def _native_forward_jvp(opts: Options, save: bool, primals, tangents):
    xla = opts._replace(engine="xla")

    def loop(w_x, w_h, b_x, b_h, xs, h0, m, r):
        return _xla_forward(w_x, w_h, b_x, b_h, xs, h0, m, r, xla, save=save)

    return jax.jvp(loop, primals, tangents)


def _xla_forward(w_x, w_h, b_x, b_h, xs, h0, m, r, opts: Options, *, save: bool):
    """The ``lax.scan`` loop."""
    dtype = opts.dtype
    bx = b_x.astype(dtype or b_x.dtype)
    bh = b_h.astype(dtype or b_h.dtype)
    H = h0.shape[-1]
    seq = xs if opts.inloop else matmul(xs, w_x, dtype) + bx

    def body(h, inp):
        s_t, m_t, r_t = inp
        if r_t is not None:
            h = _restart(r_t, h)
        a = matmul(s_t, w_x, dtype) + bx if opts.inloop else s_t
        e = matmul(h, w_h, dtype) + bh
        a_rz, a_n = a[:, :2 * H], a[:, 2 * H:]
        e_rz, e_n = e[:, :2 * H], e[:, 2 * H:]
        rz = 0.5 * jnp.tanh(0.5 * (a_rz + e_rz)) + 0.5
        rg, zg = rz[:, :H], rz[:, H:]
        n = jnp.tanh(a_n + rg * e_n)
        hp = h.astype(n.dtype)
        h_new = (1.0 - zg) * n + zg * hp
        if m_t is None:
            h_next, y = h_new, h_new
        else:
            mm = m_t[:, None]
            h_next, y = jnp.where(mm, h_new, hp), jnp.where(mm, h_new, 0.0)
        h_next = h_next.astype(h.dtype)
        saved = None
        if save:  # the tangent's factors, formed while the gates are at hand; the states only under a mask
            saved = (h_next if m_t is not None else None, _coefficients(hp, n, rg, zg, e_n, m_t, r_t))
        return h_next, (y, saved)

    hT, (ys, saved) = lax.scan(body, h0, (seq, m, r), unroll=opts.unroll[0])
    return hT, ys.astype(_out_dtype(xs, w_x, w_h, b_x, b_h, h0, dtype)), saved


def _out_dtype(xs, w_x, w_h, b_x, b_h, h0, dtype):
    """The outputs' dtype as the cell's own step gives it: ``dtype``, or the promotion of all operands."""
    return dtype or jnp.result_type(xs.dtype, w_x.dtype, w_h.dtype, b_x.dtype, b_h.dtype, h0.dtype)


def _coefficients(h_prev, n, r, z, e_n, m, reset) -> Coefficients:
    """The factors of one step's tangent (module docstring), from the step's values.

    ``h_prev`` is the state entering the step (already zero at a reset). A masked step gets ``A = 0``
    and ``F = 1`` (the tangent passes through unchanged); a reset step gets ``F = 0``.
    """
    A_n = (1.0 - z) * (1.0 - n * n)
    A_r = A_n * e_n * r * (1.0 - r)
    A_z = (h_prev - n) * z * (1.0 - z)
    F = z
    if m is not None:
        mm = m[:, None]
        A_r, A_z, A_n = (jnp.where(mm, a, 0.0) for a in (A_r, A_z, A_n))
        F = jnp.where(mm, F, 1.0)
    if reset is not None:
        F = jnp.where(reset[:, None], 0.0, F)
    return Coefficients(A_r, A_z, A_n, r, F)


def _is_zero(t) -> bool:
    return t is None or isinstance(t, SymbolicZero)


def _jvp(opts: Options, primals, tangents):
    """The primal loop with its coefficients, then the tangent recurrence (:func:`_tangent_loop`)."""
    w_x, w_h, b_x, b_h, xs, h0, m, r = primals
    t_w_x, t_w_h, t_b_x, t_b_h, t_xs, t_h0, _, _ = tangents
    hT, ys, saved = _forward(w_x, w_h, b_x, b_h, xs, h0, m, r, opts, save=True)
    assert saved is not None  # save=True stacks the states (under a mask) and the coefficients
    hs, coef = saved
    f32 = coef.F.dtype
    T, B, H = ys.shape
    dtype = opts.dtype

    def flat(a):
        return a.reshape(T * B, a.shape[-1])

    # The input side ȧ = ẋ W_x + x Ẇ_x + ḃ_x, and the recurrent side's terms h_{t-1} Ẇ_h + ḃ_h.
    a_dot = jnp.zeros((T * B, 3 * H), f32)
    if not _is_zero(t_xs):
        a_dot = a_dot + matmul(flat(t_xs), w_x, dtype).astype(f32)
    if not _is_zero(t_w_x):
        a_dot = a_dot + matmul(flat(xs), t_w_x, dtype).astype(f32)
    if not _is_zero(t_b_x):
        a_dot = a_dot + t_b_x.astype(f32)
    e_dot = jnp.zeros((T * B, 3 * H), f32)
    if not _is_zero(t_w_h):
        h_prev = _previous(h0, ys if hs is None else hs, r)
        e_dot = e_dot + matmul(flat(h_prev), t_w_h, dtype).astype(f32)
    if not _is_zero(t_b_h):
        e_dot = e_dot + t_b_h.astype(f32)
    # r and z see ȧ + ė alike; n sees ȧ_n and R·ė_n apart.
    a_rz, a_n = a_dot[:, :2 * H], a_dot[:, 2 * H:]
    drive = e_dot + jnp.concatenate([a_rz, jnp.zeros_like(a_n)], axis=1)
    dh0 = jnp.zeros(h0.shape, f32) if _is_zero(t_h0) else t_h0.astype(f32)
    dhT, dys = _tangent_loop(opts, w_h, drive.reshape(T, B, 3 * H), a_n.reshape(T, B, H), coef, m, r, dh0)
    return (hT, ys), (dhT.astype(hT.dtype), dys.astype(ys.dtype))


def _previous(h0, hs, r):
    """The states entering each step, ``h_{t-1}`` [T, B, H]: zeros at a reset."""
    h_prev = jnp.concatenate([h0[None].astype(hs.dtype), hs[:-1]], axis=0)
    if r is not None:
        h_prev = jnp.where(r[:, :, None], jnp.zeros((), h_prev.dtype), h_prev)
    return h_prev


def _tangent_loop(opts: Options, w_h, drive, a_n, coef: Coefficients, m, r, dh0):
    """The tangent recurrence: per step ``u = drive_t + ḣ_{t-1} W_h`` and

    ``ḣ_t = A_r·u_r + A_z·u_z + A_n·(ȧ_n + R·u_n) + F·ḣ_{t-1}``;

    the output tangent is ``ḣ_t`` (zero at a masked step). ``W_h`` enters as its transpose, laid out
    before the loop, so that the backward loop (the transpose) reads ``W_hᵀ``'s rows in order.
    """
    if opts.engine == "native":
        reference = (_Reference(opts, "tangent"), _Reference(opts, "adjoint"))
        return _native.tangent(drive, a_n, coef, m, r, w_h, dh0, reference=reference)
    dtype = opts.dtype
    H = dh0.shape[-1]
    w_t = jnp.transpose(w_h if dtype is None else w_h.astype(dtype))

    def body(dh, inp):
        d_t, an_t, (A_r, A_z, A_n, R, F), m_t, r_t = inp
        rec = dh if r_t is None else _restart(r_t, dh)
        u = d_t + matmul_t(rec, w_t, dtype).astype(d_t.dtype)
        u_r, u_z, u_n = lax.split(u, (H, H, H), axis=1)
        dh_new = A_r * u_r + A_z * u_z + A_n * (an_t + R * u_n) + F * dh
        dy = dh_new if m_t is None else jnp.where(m_t[:, None], dh_new, 0.0)
        return dh_new, dy

    dhT, dys = lax.scan(body, dh0, (drive, a_n, coef, m, r), unroll=opts.unroll[1])
    return dhT, dys


_gru_sequence.defjvp(_jvp, symbolic_zeros=True)


class _Reference(NamedTuple):
    """The pure-JAX function a native primitive replaces, over the primitive's operands (hashable, so that
    it can be a primitive parameter): ``kind`` ``"tangent"`` is :func:`_tangent_loop` on the XLA engine,
    ``"adjoint"`` its transpose."""

    opts: Options
    kind: str

    def __call__(self, *args):
        xla = self.opts._replace(engine="xla")
        if self.kind == "tangent":
            drive, a_n, A_r, A_z, A_n, R, F, m, r, w_h, dh0 = args
            coef = Coefficients(A_r, A_z, A_n, R, F)
            return _tangent_loop(xla, w_h, drive, a_n, coef, _present(m), _present(r), dh0)
        g_dys, g_dhT, A_r, A_z, A_n, R, F, m, r, w_h = args
        coef = Coefficients(A_r, A_z, A_n, R, F)
        T, B, H = g_dys.shape

        def tangent(drive, a_n, dh0):
            return _tangent_loop(xla, w_h, drive, a_n, coef, _present(m), _present(r), dh0)

        zeros = tuple(jnp.zeros(shape, g_dys.dtype) for shape in ((T, B, 3 * H), (T, B, H), (B, H)))
        _, transpose = jax.vjp(tangent, *zeros)
        return transpose((g_dhT, g_dys))


def _native_fits(plan: Plan, B: int, H: int, dtype: Any, xs: jax.Array, operands: Any, train: bool) -> bool:
    """Whether the plan sends this call to the native CPU kernel: from ``gru_native_from_batch`` on (and for
    training up to ``gru_native_train_to_batch``), float32 inputs and ``operands`` (the params and the
    state), float32 matmuls, H a multiple of 8, the library built."""
    start, stop = plan.gru_native_from_batch, plan.gru_native_train_to_batch
    if start is None or B < start or (train and stop is not None and B > stop):
        return False
    f32 = all(a.dtype == jnp.float32 for a in jax.tree.leaves((xs, operands))) and dtype in (None, jnp.float32)
    return f32 and _native.enabled() and _native.supports(B, H, xs.shape[-1])


def make_fused_gru(dtype: jnp.dtype | None) -> Callable:
    """The ``CellFast.sequence`` kernel of ``jlstm.gru``.

    ``plan`` (a :class:`jlstm.core.plan.Plan`; ``None``: the default backend's) decides where the inputs
    are projected and the backward loop's unroll; ``resets`` (bool ``[T, *batch]``, False at invalid
    steps) restarts the state from zeros before the steps where it is True.
    """

    def fused(params: Any, xs: jax.Array, state: Any, valid: jax.Array | None, unroll: Unroll, *,
              plan: Plan | None = None, resets: jax.Array | None = None):
        plan = plan if plan is not None else current_plan()
        T, batch, I = xs.shape[0], xs.shape[1:-1], xs.shape[-1]
        B = math.prod(batch)
        H = state.h.shape[-1]
        m = None if valid is None else valid.reshape(T, B)
        r = None if resets is None else resets.reshape(T, B)
        fwd_unroll, bwd_unroll = _split_unroll(unroll)
        if not isinstance(unroll, tuple) and plan.lstm_backward_unroll is not None:
            bwd_unroll = plan.lstm_backward_unroll
        train = _native_fits(plan, B, H, dtype, xs, (params, state), train=True)
        forward = not train and _native_fits(plan, B, H, dtype, xs, (params, state), train=False)
        opts = Options(dtype=dtype, unroll=(fwd_unroll, bwd_unroll), inloop=_inloop_default(B, plan),
                       engine="native" if train else "xla", forward_engine="native" if forward else None)
        hT, ys = _gru_sequence(params.w_x, params.w_h, params.b_x, params.b_h, xs.reshape(T, B, I),
                               state.h.reshape(B, H), m, r, opts)
        final = type(state)(h=hT.reshape(batch + (H,)).astype(state.h.dtype))
        return final, ys.reshape((T,) + batch + (H,))

    return fused
