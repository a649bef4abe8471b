"""A Pallas sLSTM for GPU: each program keeps one head's recurrent block on chip for the whole sequence.

The sLSTM's recurrent weight is block-diagonal (``w_h [heads, d, 4d]``): a head's gates read only
that head's ``d`` units. The loop over time therefore splits into independent programs, one per
head and batch tile (grid ``(heads, ⌈B / tile⌉)``), that exchange nothing: each loads its head's
block once, keeps it on chip for all T steps (one launch for the sequence), and per step does four
``[tile, d] × [d, d]`` gate products and the stabilised exponential gating of
:func:`stabilised_update`, the function the cell's own step calls.

* Forward kernel: from the hoisted input projection ``xp`` (one GEMM over all steps, outside),
  the loop writes the outputs and the final state, and for differentiation the state after each
  step (h, c, n, m).
* Backward kernel: the reverse loop recomputes each step from the stored state entering it,
  carries the cotangents of (h, c, n, m) and writes the pre-activation gradients ``dZ``; the
  weight and input gradients are GEMMs over all T·B rows outside it (JAX derives them).
* Derivatives: a ``custom_jvp``. Its rule runs the forward kernel and a linear tangent
  recurrence, a primitive of this module whose evaluation (forward mode, and under ``vmap``) is
  an XLA scan and whose transpose (reverse mode) is the backward kernel. ``jax.jvp``, ``grad``
  and ``vmap`` all work; nothing picks a path by catching an error. Higher-order derivatives
  (``jax.hessian``) are not supported on this route (Pallas cannot differentiate the kernels
  themselves): take the step loop for them, ``jlstm.scan(..., fast=False)``.

Valid steps and resets as in :func:`jlstm.scan`: an invalid step keeps the state and outputs zeros;
a reset starts the step from the initial state (zeros, the stabiliser too) and passes no gradient
to the steps before it; a reset at an invalid step does nothing. bf16 (``dtype=jnp.bfloat16``):
bf16 weights and matmul operands, float32 accumulation, gating and state, as in the cell's step
(the backward kernel rounds ``dZ`` to bf16 for its ``dZ Wᵀ`` product, where the step loop's
derivative rounds the product: the gradients agree to bf16 precision).

Shared memory (one SM of an H100/H200: 232,448 bytes): :func:`shared_bytes` counts a program's
weight block (``4·d²`` elements), its matmul operands and the gate results' layout change. With
a tile of 16 rows: float32 d = 64 needs 86,016 bytes forward and 167,936 backward (which counts
the block twice, once transposed), d = 128 262,144 for the block alone; bf16 d = 128 needs
167,936 forward but 315,392 backward, d = 64 51,200 / 92,160. So the largest head is d = 64 in
float32 and, forward only, d = 128 in bf16 (trained there, the backward is the XLA scan's
transpose). These are estimates, not yet checked on a GPU (``benchmarks/gpu_check.py`` compiles
the kernel at d = 128): the GPU plan routes heads up to ``plan.pallas_slstm_max_head`` = 64.
Triton needs powers of two ≥ 16 for d and the tile; the batch is padded to whole tiles.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.core import ShapedArray
from jax.custom_derivatives import SymbolicZero
from jax.experimental import pallas as pl
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jlstm.core.loop import projects_in_loop, time_loop
from jlstm.core.plan import Plan, current_plan

SM_SHARED_BYTES = 232_448   # one SM's shared memory on an H100 or H200 (227 KB)
_F32 = jnp.float32


def log_sigmoid(x: jax.Array) -> jax.Array:
    """``log σ(x)`` from ops that every backend lowers (Triton has no rule for ``logaddexp``'s custom JVP)."""
    return jnp.minimum(x, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(x)))


class Gating(NamedTuple):
    """One step's new state and the values its derivatives read (see :func:`gating`)."""

    h: jax.Array
    c: jax.Array
    n: jax.Array
    m: jax.Array
    i: jax.Array       # exp(ĩ - m_t)
    f: jax.Array       # exp(log f̃ + m_{t-1} - m_t), 1 where clamped
    tz: jax.Array      # tanh(z̃)
    so: jax.Array      # σ(õ)
    lfp: jax.Array     # d log f / d f̃
    ga: jax.Array      # 1 where m_t took the forget branch of the max
    kf: jax.Array      # f where its exponent is not clamped, else 0


def gating(pre, c, n, m, exponential: bool) -> Gating:
    """The sLSTM's stabilised exponential gating from the pre-activations ``pre = (ĩ, f̃, z̃, õ)`` and
    the entering ``(c, n, m)``.

    ``m_t = max(log f̃ + m, ĩ)`` (``ĩ`` in a fresh unit, ``n = 0``), ``i = exp(ĩ - m_t)``,
    ``f = exp(log f̃ + m - m_t)`` (both exponents clamped at 0), ``c_t = f c + i tanh(z̃)``,
    ``n_t = f n + i``, ``h_t = σ(õ) c_t / n_t``.
    """
    pre_i, pre_f, pre_z, pre_o = pre
    log_f = pre_f if exponential else log_sigmoid(pre_f)
    a = log_f + m
    fresh = n == 0
    m_new = jnp.where(fresh, pre_i, jnp.maximum(a, pre_i))
    # Both exponents are <= 0 except f's in a fresh unit, whose c = n = 0: clamping it there
    # (as the reference's min(f, 1) does) keeps exp finite without changing anything.
    i = jnp.exp(jnp.minimum(pre_i - m_new, 0.0))
    e_f = a - m_new
    f = jnp.exp(jnp.minimum(e_f, 0.0))
    tz, so = jnp.tanh(pre_z), jax.nn.sigmoid(pre_o)
    c_new = f * c + i * tz
    n_new = f * n + i
    lfp = jnp.ones_like(pre_f) if exponential else jax.nn.sigmoid(-pre_f)
    ga = jnp.where(fresh | (a < pre_i), 0.0, 1.0)
    return Gating(so * c_new / n_new, c_new, n_new, m_new, i, f, tz, so, lfp, ga, jnp.where(e_f < 0, f, 0.0))


def stabilised_update(pre, c, n, m, exponential: bool):
    """``(h_t, c_t, n_t, m_t)`` of :func:`gating`: the sLSTM step after its pre-activations."""
    g = gating(pre, c, n, m, exponential)
    return g.h, g.c, g.n, g.m


def _tangent_step(g: Gating, c, n, dz, ds):
    """The step's tangent from ``dz`` (the 4 pre-activations') and ``ds = (dc, dn, dm)`` (the entering
    state's), with ``g`` the step's :func:`gating` and ``c, n`` the entering cell and normaliser."""
    dzi, dzf, dzz, dzo = dz
    dc, dn, dm = ds
    dlf = g.lfp * dzf
    dm_new = g.ga * (dlf + dm) + (1.0 - g.ga) * dzi
    di = g.i * (dzi - dm_new)
    df = g.kf * (dlf + dm - dm_new)
    dc_new = df * c + g.f * dc + di * g.tz + g.i * (1.0 - g.tz * g.tz) * dzz
    dn_new = df * n + g.f * dn + di
    u = g.c / g.n
    dh_new = g.so * (1.0 - g.so) * u * dzo + g.so / g.n * (dc_new - u * dn_new)
    return dh_new, dc_new, dn_new, dm_new


def _cotangent_step(g: Gating, c, n, ct):
    """The transpose of :func:`_tangent_step`: from ``ct = (ḡh, ḡc, ḡn, ḡm)`` of the new state, the
    four pre-activation cotangents and those of the entering ``(c, n, m)``."""
    gh, gc, gn, gm = ct
    u = g.c / g.n
    go = g.so * (1.0 - g.so) * u * gh
    gc = gc + g.so / g.n * gh
    gn = gn - g.so / g.n * u * gh
    gi_val = g.tz * gc + gn               # of i
    q = g.kf * (c * gc + n * gn)          # of f's exponent
    p = g.i * gi_val                      # of i's exponent
    gm_new = gm - p - q
    gi = p + (1.0 - g.ga) * gm_new
    t = q + g.ga * gm_new                 # of log f + m
    gz = (gi, g.lfp * t, g.i * (1.0 - g.tz * g.tz) * gc, go)
    return gz, (g.f * gc, g.f * gn, t)


class Static(NamedTuple):
    """The kernels' static options (hashable)."""

    exponential: bool
    tile: int
    interpret: bool
    backward_kernel: bool   # reverse mode through the backward kernel (else the XLA scan's transpose)


# --------------------------------------------------------------------------- kernels


def _pre(xp_ref, w, h, k, t, rows):
    """The four pre-activations of step ``t``: ``xp_t + h W_g`` per gate (float32 accumulation)."""
    hw = h.astype(w[0].dtype)
    return [xp_ref[k, g, t, rows, :].astype(_F32) + jnp.dot(hw, w[g], preferred_element_type=_F32)
            for g in range(4)]


def _forward_kernel(xp_ref, w_ref, h0_ref, c0_ref, n0_ref, m0_ref, v_ref, r_ref, ys_ref, *out_refs,
                    T: int, st: Static):
    """The loop over T for one head and batch tile; ``out_refs``: the final state, then the per-step states."""
    k, rows = pl.program_id(0), pl.ds(pl.program_id(1) * st.tile, st.tile)
    w = [w_ref[k, g] for g in range(4)]                 # on chip for the whole sequence
    final_refs, seq_refs = out_refs[:4], out_refs[4:]

    def step(t, s):
        v, r = v_ref[t, rows, :] > 0, r_ref[t, rows, :] > 0
        h, c, n, m = (jnp.where(r, 0.0, a) for a in s)
        new = stabilised_update(_pre(xp_ref, w, h, k, t, rows), c, n, m, st.exponential)
        new = tuple(jnp.where(v, a, b) for a, b in zip(new, s))
        ys_ref[k, t, rows, :] = jnp.where(v, new[0], 0.0)
        for ref, a in zip(seq_refs, new):
            ref[k, t, rows, :] = a
        return new

    final = lax.fori_loop(0, T, step, tuple(ref[k, rows, :] for ref in (h0_ref, c0_ref, n0_ref, m0_ref)))
    for ref, a in zip(final_refs, final):
        ref[k, rows, :] = a


def _backward_kernel(*refs, T: int, st: Static):
    """The reverse loop for one head and batch tile: recompute the step, then its cotangent step.

    ``refs``: xp, w, the initial state (4), valid, resets, the per-step states (4), the outputs'
    cotangent, the final state's cotangents (4); then the outputs dZ and the initial state's cotangents (4).
    """
    xp_ref, w_ref, s0_refs, v_ref, r_ref = refs[0], refs[1], refs[2:6], refs[6], refs[7]
    seq_refs, gys_ref, gT_refs, gz_ref, g0_refs = refs[8:12], refs[12], refs[13:17], refs[17], refs[18:22]
    k, rows = pl.program_id(0), pl.ds(pl.program_id(1) * st.tile, st.tile)
    w = [w_ref[k, g] for g in range(4)]

    def step(j, ct):
        t = T - 1 - j
        v, r = v_ref[t, rows, :] > 0, r_ref[t, rows, :] > 0
        prev = [jnp.where(t > 0, sr[k, jnp.maximum(t - 1, 0), rows, :], s0[k, rows, :])
                for sr, s0 in zip(seq_refs, s0_refs)]
        h, c, n, m = (jnp.where(r, 0.0, a) for a in prev)
        g = gating(_pre(xp_ref, w, h, k, t, rows), c, n, m, st.exponential)
        gz, (gc, gn, gm) = _cotangent_step(g, c, n, (ct[0] + gys_ref[k, t, rows, :],) + tuple(ct[1:]))
        gz = [jnp.where(v, a, 0.0) for a in gz]
        gh = jnp.zeros_like(gc)
        for q in range(4):
            gz_ref[k, q, t, rows, :] = gz[q]
            gh = gh + lax.dot_general(gz[q].astype(w[q].dtype), w[q], (((1,), (1,)), ((), ())),
                                      preferred_element_type=_F32)    # dz_g W_gᵀ
        back = (jnp.where(r, 0.0, a) for a in (gh, gc, gn, gm))       # a reset: nothing reaches t-1
        return tuple(jnp.where(v, a, b) for a, b in zip(back, ct))     # an invalid step passes ct on

    out = lax.fori_loop(0, T, step, tuple(ref[k, rows, :] for ref in gT_refs))
    for ref, a in zip(g0_refs, out):
        ref[k, rows, :] = a


def _call(kernel, out_shape, grid, st: Static):
    params = {}
    if not st.interpret:  # W is loaded before the loop: nothing to pipeline, so one stage (one copy)
        from jax.experimental.pallas import triton as pltriton

        params["compiler_params"] = pltriton.CompilerParams(num_warps=4, num_stages=1)
    return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, interpret=st.interpret, **params)


def _forward(xp, w, s0, v, r, st: Static, save: bool):
    """The forward kernel: ``(ys, final state, per-step states or None)``, kernel layout."""
    heads, _, T, Bp, d = xp.shape
    state, seq = jax.ShapeDtypeStruct((heads, Bp, d), _F32), jax.ShapeDtypeStruct((heads, T, Bp, d), _F32)
    shapes = (seq,) + (state,) * 4 + ((seq,) * 4 if save else ())
    out = _call(functools.partial(_forward_kernel, T=T, st=st), shapes, (heads, Bp // st.tile), st)(
        xp, w, *s0, v, r)
    return out[0], tuple(out[1:5]), (tuple(out[5:]) if save else None)


def _backward(res, gys, g_final, st: Static):
    """The backward kernel: ``(dZ [heads, 4, T, Bp, d], cotangents of the initial state)``."""
    xp = res[0]
    heads, _, T, Bp, d = xp.shape
    shapes = (jax.ShapeDtypeStruct(xp.shape, _F32),) + (jax.ShapeDtypeStruct((heads, Bp, d), _F32),) * 4
    out = _call(functools.partial(_backward_kernel, T=T, st=st), shapes, (heads, Bp // st.tile), st)(
        *res, gys, *g_final)
    return out[0], tuple(out[1:])


# --------------------------------------------------------------------------- derivatives


def _entering(s0, seqs, r):
    """The state entering each step, ``[heads, T, Bp, d]`` each: the previous step's, zeros at a reset."""
    rr = r[None] > 0
    return tuple(jnp.where(rr, 0.0, jnp.concatenate([a0[:, None], a[:, :-1]], axis=1)) for a0, a in zip(s0, seqs))


def _gate_products(h, w):
    """``h W_g`` for the four gates: ``h [heads, ..., d]`` -> ``[heads, 4, ..., d]`` (float32 accumulation)."""
    return jnp.einsum("k...d,kgde->kg...e", h.astype(w.dtype), w, preferred_element_type=_F32)


def _tangent_scan(xp, w, h0, c0, n0, m0, v, r, hs, cs, ns, ms, drive, dh0, dc0, dn0, dm0, *, st: Static):
    """The tangent recurrence in XLA: the gating's partials for all T at once, then one scan.

    Linear in ``drive`` (the pre-activations' tangent from the inputs and weights, ``[heads, 4, T,
    Bp, d]``) and the initial state's tangent; returns the outputs' and the final state's tangents.
    """
    h, c, n, m = _entering((h0, c0, n0, m0), (hs, cs, ns, ms), r)
    pre = xp.astype(_F32) + _gate_products(h, w)
    valid = v[None] > 0
    g = gating([pre[:, q] for q in range(4)], c, n, m, st.exponential)
    # Invalid steps get zero coefficients (and n_t = 1, a divisor), so no NaN meets a zero cotangent.
    g = Gating(*(jnp.where(valid, a, 1.0 if name == "n" else 0.0) for name, a in zip(Gating._fields, g)))
    c, n = jnp.where(valid, c, 0.0), jnp.where(valid, n, 0.0)

    def body(ds, inp):
        d_t, g_t, c_t, n_t, v_t, r_t = inp
        dh, dc, dn, dm = (jnp.where(r_t > 0, 0.0, a) for a in ds)
        dz = d_t + _gate_products(dh, w)
        new = _tangent_step(g_t, c_t, n_t, tuple(dz[:, q] for q in range(4)), (dc, dn, dm))
        new = tuple(jnp.where(v_t > 0, a, b) for a, b in zip(new, ds))
        return new, jnp.where(v_t > 0, new[0], 0.0)

    time_first = functools.partial(jnp.moveaxis, source=-3, destination=0)   # [.., T, Bp, d] -> [T, .., Bp, d]
    inputs = (time_first(drive), jax.tree.map(time_first, g), time_first(c), time_first(n), v, r)
    final, dys = lax.scan(body, (dh0, dc0, dn0, dm0), inputs)
    return [jnp.moveaxis(dys, 0, 1), *final]


def _abstract(*args, st: Static):
    seq, state = args[8], args[2]
    return [ShapedArray(seq.shape, _F32)] + [ShapedArray(state.shape, _F32)] * 4


def _transpose(cts, *args, st: Static):
    """Reverse mode: the backward kernel (or, where it does not fit, the transpose of the XLA scan)."""
    res, lin = args[:12], args[12:]
    cts = [ad.instantiate_zeros(ct) for ct in cts]
    if st.backward_kernel:
        gz, g0 = _backward(res, cts[0], cts[1:], st)
        out = (gz, *g0)
    else:
        avals = [jax.ShapeDtypeStruct(x.aval.shape if ad.is_undefined_primal(x) else x.shape, _F32) for x in lin]
        out = jax.linear_transpose(lambda *ls: _tangent_scan(*res, *ls, st=st), *avals)(cts)
    return [None] * len(res) + [o if ad.is_undefined_primal(x) else None for o, x in zip(out, lin)]


def _batch(args, dims, *, st: Static):
    """``vmap``: the XLA tangent scan, vectorised (its transpose is then JAX's)."""
    out = jax.vmap(functools.partial(_tangent_scan, st=st), in_axes=tuple(dims))(*args)
    return out, [0] * len(out)


_tangent_p = Primitive("jlstm_slstm_tangent")
_tangent_p.multiple_results = True
_tangent_p.def_impl(_tangent_scan)
_tangent_p.def_abstract_eval(_abstract)
mlir.register_lowering(_tangent_p, mlir.lower_fun(_tangent_scan, multiple_results=True))
ad.primitive_transposes[_tangent_p] = _transpose
batching.primitive_batchers[_tangent_p] = _batch


@functools.partial(jax.custom_jvp, nondiff_argnums=(8,))
def _run(xp, w, h0, c0, n0, m0, v, r, st: Static):
    """The kernel-layout sequence: ``(ys, h_T, c_T, n_T, m_T)``; the forward kernel alone."""
    ys, final, _ = _forward(xp, w, (h0, c0, n0, m0), v, r, st, save=False)
    return (ys, *final)


def _run_jvp(st: Static, primals, tangents):
    """The forward kernel with its per-step states, then the tangent recurrence (the primitive)."""
    xp, w, h0, c0, n0, m0, v, r = primals
    t_xp, t_w = tangents[:2]
    ys, final, seqs = _forward(xp, w, (h0, c0, n0, m0), v, r, st, save=True)
    assert seqs is not None
    drive = jnp.zeros(xp.shape, _F32)
    if not _is_zero(t_xp):
        drive = drive + t_xp.astype(_F32)
    if not _is_zero(t_w):
        drive = drive + _gate_products(_entering((h0, c0, n0, m0), seqs, r)[0], t_w)
    ds0 = [jnp.zeros(a.shape, _F32) if _is_zero(t) else t.astype(_F32)
           for a, t in zip(primals[2:6], tangents[2:6])]
    outs = _tangent_p.bind(xp, w, h0, c0, n0, m0, v, r, *seqs, drive, *ds0, st=st)
    return (ys, *final), tuple(outs)


def _is_zero(t) -> bool:
    return t is None or isinstance(t, SymbolicZero)


_run.defjvp(_run_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------- layout and routing


def slstm_pallas(xp: jax.Array, w_h: jax.Array, state: tuple, valid: jax.Array | None, resets: jax.Array | None,
                 st: Static) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """The sLSTM over a projected sequence through the kernels: ``((h_T, c_T, n_T, m_T), ys)``, float32.

    ``xp [T, B, 4H]`` is the cell's input projection (gate-major, head-major within a gate),
    ``w_h [heads, d, 4d]`` the recurrent blocks in the matmul dtype, ``state`` four ``[B, H]``,
    ``valid`` / ``resets`` bool ``[T, B]`` or None. Differentiable in both modes (module docstring).
    """
    T, B, H4 = xp.shape
    heads, d = w_h.shape[0], w_h.shape[1]
    Bp = -(-B // st.tile) * st.tile

    def rows(a, axis):
        return jnp.pad(a, [(0, Bp - B) if i == axis else (0, 0) for i in range(a.ndim)])

    xk = rows(xp, 1).reshape(T, Bp, 4, heads, d).transpose(3, 2, 0, 1, 4)        # [heads, 4, T, Bp, d]
    wk = w_h.reshape(heads, d, 4, d).transpose(0, 2, 1, 3)                        # [heads, 4, d, d]
    s0 = [rows(a.astype(_F32), 0).reshape(Bp, heads, d).transpose(1, 0, 2) for a in state]
    v = jnp.ones((T, B), bool) if valid is None else valid
    r = jnp.zeros((T, B), bool) if resets is None else resets & v
    v, r = (rows(a, 1).astype(_F32)[..., None] for a in (v, r))                   # [T, Bp, 1]
    ys, *final = _run(xk, wk, *s0, v, r, st)
    final = tuple(a.transpose(1, 0, 2).reshape(Bp, H4 // 4)[:B] for a in final)
    return final, ys.transpose(1, 2, 0, 3).reshape(T, Bp, H4 // 4)[:, :B]


def shared_bytes(d: int, tile: int, itemsize: int, backward: bool = False) -> int:
    """Shared memory one program needs (module docstring): the weight block, the matmul operands and the
    gate results' layout change; the backward pass counts the block twice (``W`` and ``Wᵀ``) and ``dZ``."""
    block, operand, results = 4 * d * d * itemsize, tile * d * itemsize, 4 * tile * d * 4
    if backward:
        return 2 * block + operand + 4 * operand + results
    return block + operand + results


def route(plan: Plan, d: int, matmul_dtype: Any, exponential: bool = False) -> Static | None:
    """The kernels' options where ``plan`` lets the sLSTM take them for head size ``d``, else None."""
    if not plan.pallas_slstm or jnp.dtype(matmul_dtype) not in (jnp.dtype(_F32), jnp.dtype(jnp.bfloat16)):
        return None
    tile, interpret = plan.pallas_slstm_tile, plan.backend != "gpu"
    size = jnp.dtype(matmul_dtype).itemsize
    pow2 = all(x >= 16 and x & (x - 1) == 0 for x in (d, tile))       # Triton's dot
    if d > plan.pallas_slstm_max_head or not (interpret or pow2) or shared_bytes(d, tile, size) > SM_SHARED_BYTES:
        return None
    backward = shared_bytes(d, tile, size, backward=True) <= SM_SHARED_BYTES
    return Static(exponential=exponential, tile=tile, interpret=interpret, backward_kernel=backward)


def make_sequence(*, heads: int, d: int, exponential: bool, dtype: Any, project: Callable,
                  step_projected: Callable) -> Callable:
    """The sLSTM cell's ``CellFast.sequence``: the kernels where the plan routes them, else a loop over its step.

    ``dtype`` is the cell's matmul dtype option; ``project`` and ``step_projected`` its pieces.
    The kernels serve float32 state with float32 or bf16 matmuls (not float64).
    """
    matmul_dtype = _F32 if dtype is None else dtype

    def sequence(params, xs, state, valid, unroll, *, plan: Plan | None = None, resets=None):
        plan = plan if plan is not None else current_plan()
        st = route(plan, d, matmul_dtype, exponential)
        if st is None or state.c.dtype != _F32 or jnp.float64 in (xs.dtype, params.w_h.dtype):
            zeros = jax.tree.map(jnp.zeros_like, state)
            if projects_in_loop(plan, project, params, xs, heads * d):   # on CPU from batch 8
                step, inputs = (lambda s, x: step_projected(params, s, project(params, x))), xs
            else:
                step, inputs = (lambda s, xp: step_projected(params, s, xp)), project(params, xs)
            return time_loop(step, state, inputs, valid, unroll=unroll, resets=resets, reset_state=zeros)
        T, batch, H = xs.shape[0], xs.shape[1:-1], heads * d
        B = math.prod(batch)
        flat = tuple(a.reshape(B, H) for a in state)
        v, r = (None if a is None else a.reshape(T, B) for a in (valid, resets))
        xp = project(params, xs).reshape(T, B, 4 * H)
        final, ys = slstm_pallas(xp, params.w_h.astype(matmul_dtype), flat, v, r, st)
        final = type(state)(*(a.reshape(batch + (H,)).astype(s.dtype) for a, s in zip(final, state)))
        return final, ys.reshape((T,) + batch + (H,)).astype(matmul_dtype)

    return sequence
