"""A persistent Pallas LSTM for wide layers: ``W_h`` split by hidden units over the programs of one grid.

:mod:`jlstm.kernels.pallas_lstm` runs the whole layer in one program, so ``W_h`` must fit one SM
(H ≤ 64 in float32). Here the hidden units are split into ``P = H / block`` column blocks, and
program ``j`` owns units ``[j·block, (j+1)·block)``: it loads the four gate columns of ``W_h`` for
them (``4 · H · block`` elements) once, keeps them on chip for all T steps, and keeps its units'
cell state ``c`` in registers. Only ``h`` crosses programs. Per step, program ``j``

1. reads the whole ``h_{t-1}`` (``[tile, H]``, written by all programs at step ``t-1``),
2. does its four ``[tile, H] × [H, block]`` gate products and the cell update for its units,
3. writes its slice of ``h_t`` (and of ``c_t`` and the gates, the backward pass's residuals),
4. waits at a grid barrier (a flag per program, raised atomically) until every program has written.

Every step writes ``h_t`` to fresh addresses, so no program can read a stale cached line. The
backward kernel is the same pattern in reverse: program ``j`` does the gate derivatives of its
units and writes its columns of ``dZ_t``; after the barrier it reads the whole ``dZ_t`` and forms
its units' ``dh_{t-1} = Σ_g dZ_{t,g} W_g[units, :]ᵀ`` from the rows of ``W_h`` it holds. The
weight and input gradients are GEMMs over all T·B rows outside the kernels, as in
:mod:`jlstm.kernels.pallas_lstm`.

Precision: float32, or bf16 weights and matmul operands with float32 accumulation, gates and
state (``matmul_dtype=jnp.bfloat16``); the backward kernel rounds ``dZ`` to bf16 for its product.

The barrier needs every program of a batch tile resident at once (a persistent kernel): the grid,
``P × ⌈B / tile⌉`` programs, must not exceed the device's SM count, and one program's on-chip
block (:func:`shared_bytes`) must fit one SM. A barrier that waits longer than ``SPIN_LIMIT``
polls gives up and the call returns NaN instead of hanging. Triton's block shapes are powers of
two, so the units are padded to the next one (:func:`padded_hidden`: zero weights, which leave the
real units unchanged; H = 768 runs as 1024). On the H100/H200's 232,448 bytes, with ``block = 16``
and a tile of 16 rows, the widest padded layer is 512 units in float32 (the weight block alone is
131,072 bytes) and 1024 in bf16 (131,072 bytes), from :func:`shared_bytes`; with 132 SMs the grid
allows B ≤ 64 at 512 units and B ≤ 32 at 1024.

Off a GPU the kernels run in Pallas interpret mode, where a grid's programs run one after
another and a barrier cannot work: there each kernel is one program per batch tile that, every
step, runs the column blocks in turn, the order the barrier enforces. Both variants share the
per-block step functions (:func:`_forward_block`, :func:`_backward_block_gates`,
:func:`_backward_block_recurrent`), which is what the interpret-mode tests check against the
reference LSTM. The barrier itself, and the sizes above, are untested until a GPU run
(``benchmarks/gpu_check.py``); no routing plan takes this kernel yet (``Plan.pallas_wide``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jlstm.core.plan import Plan, current_plan
from jlstm.kernels.pallas_lstm import _flags, _pad  # the batch padding and step flags, as there

SM_SHARED_BYTES = 232_448     # one SM's shared memory on an H100 or H200
DEFAULT_SMS = 132             # an H100 SXM's SM count, where the device does not say
SPIN_LIMIT = 1 << 22          # barrier polls before a program gives up (about a second, not a hang)
_F32 = jnp.float32


class Static(NamedTuple):
    """The kernels' static options (hashable)."""

    block: int          # hidden units per program (a power of two ≥ 16 on a GPU)
    tile: int           # batch rows per program (a power of two ≥ 16 on a GPU)
    matmul_dtype: Any   # jnp.float32 or jnp.bfloat16
    interpret: bool


def shared_bytes(H: int, st: Static) -> int:
    """One program's on-chip footprint: its weight block (4·H·block elements), the ``[tile, H]``
    matmul operand, and the four gate results' layout change (float32)."""
    size = jnp.dtype(st.matmul_dtype).itemsize
    return 4 * H * st.block * size + st.tile * H * size + 4 * st.tile * st.block * 4


def num_warps(H: int, st: Static) -> int:
    """Warps per program: enough that the weight block held in registers is about 64 per thread (4 to 16)."""
    words = 4 * H * st.block * jnp.dtype(st.matmul_dtype).itemsize // 4
    warps = 4
    while warps < 16 and words > warps * 32 * 64:
        warps *= 2
    return warps


def sm_count() -> int:
    """The default device's SM count (``DEFAULT_SMS`` where it does not report one)."""
    try:
        return int(getattr(jax.devices()[0], "core_count", 0)) or DEFAULT_SMS
    except Exception:   # a backend without the attribute
        return DEFAULT_SMS


def padded_hidden(H: int, st: Static) -> int:
    """The units the kernels run: ``H`` rounded up to a power of two (Triton's block shapes) on a GPU, to a
    multiple of ``st.block`` in interpret mode. The padded units have zero weights, bias and state, so
    their gates are ½ and their ``c`` and ``h`` stay 0: they change nothing and are sliced away."""
    if st.interpret:
        return -(-H // st.block) * st.block
    return max(st.block, 1 << (H - 1).bit_length())


def options(B: int, H: int, matmul_dtype: Any = _F32, *, plan: Plan | None = None, block: int | None = None,
            tile: int = 16, sms: int | None = None) -> Static | None:
    """The kernel's options for a batch of ``B`` and ``H`` units, or None where it cannot run.

    ``block`` (None: 16, or H where H < 16) units per program; the units are padded to
    :func:`padded_hidden`. On a GPU: ``block`` and ``tile`` powers of two ≥ 16, the weight block
    within one SM's shared memory (:func:`shared_bytes` of the padded width), and the grid within
    ``sms`` (None: the device's count). Off a GPU (interpret mode) any ``block`` ≥ 1.
    """
    plan = plan or current_plan()
    interpret = plan.backend != "gpu"
    dt = jnp.dtype(matmul_dtype)
    if dt not in (jnp.dtype(_F32), jnp.dtype(jnp.bfloat16)) or B < 1 or H < 1:
        return None
    block = block if block is not None else min(16, H)
    if block < 1:
        return None
    st = Static(block=block, tile=tile, matmul_dtype=dt, interpret=interpret)
    if interpret:
        return st
    Hp = padded_hidden(H, st)
    pow2 = all(x >= 16 and x & (x - 1) == 0 for x in (block, tile))
    grid = (Hp // block) * (-(-B // tile))
    if not pow2 or shared_bytes(Hp, st) > SM_SHARED_BYTES or grid > (sms or sm_count()):
        return None
    return st


def _sigmoid(z):
    return 0.5 * jnp.tanh(0.5 * z) + 0.5  # tanh lowers everywhere (Triton: libdevice)


# --------------------------------------------------------------------------- per-block steps


def _forward_block(refs, t, j, rows, c, w, H: int, bh: int):
    """Step ``t`` for the units of column block ``j``: reads the whole ``h_{t-1}``, writes this block's
    ``h_t``, ``c_t`` and gates, returns its ``c_t``. ``w``: the block's four ``[H, bh]`` gate columns."""
    xp_ref, h0_ref, m_ref, r_ref, hs_ref, cs_ref, acts_ref = refs
    cols = pl.ds(j * bh, bh)
    prev = jnp.maximum(t - 1, 0)
    fresh = r_ref[t, rows, :] > 0                                   # [tile, 1]
    h_all = jnp.where(fresh, 0.0, jnp.where(t > 0, hs_ref[prev, rows, :], h0_ref[rows, :]))
    h_own = jnp.where(fresh, 0.0, jnp.where(t > 0, hs_ref[prev, rows, cols], h0_ref[rows, cols]))
    c = jnp.where(fresh, 0.0, c)
    hw = h_all.astype(w[0].dtype)
    z = [xp_ref[t, rows, pl.ds(g * H + j * bh, bh)] + jnp.dot(hw, w[g], preferred_element_type=_F32)
         for g in range(4)]
    i, f, gg, o = _sigmoid(z[0]), _sigmoid(z[1]), jnp.tanh(z[2]), _sigmoid(z[3])
    c_new = f * c + i * gg
    h_new = o * jnp.tanh(c_new)
    valid = m_ref[t, rows, :] > 0
    h_next, c_next = jnp.where(valid, h_new, h_own), jnp.where(valid, c_new, c)
    hs_ref[t, rows, cols] = h_next
    cs_ref[t, rows, cols] = c_next
    for g, a in enumerate((i, f, gg, o)):
        acts_ref[t, rows, pl.ds(g * H + j * bh, bh)] = a
    return c_next


def _backward_block_gates(refs, t, j, rows, dh, dc, H: int, bh: int):
    """Reverse step ``t``, first half, for block ``j``: its columns of ``dZ_t`` from the carried
    ``(dh, dc)`` of its units; returns the block's ``dc_{t-1}``."""
    dys_ref, acts_ref, cs_ref, c0_ref, m_ref, r_ref, dz_ref = refs
    cols = pl.ds(j * bh, bh)
    i, f, g, o = (acts_ref[t, rows, pl.ds(k * H + j * bh, bh)] for k in range(4))
    c = cs_ref[t, rows, cols]
    fresh = r_ref[t, rows, :] > 0
    c_prev = jnp.where(fresh, 0.0, jnp.where(t > 0, cs_ref[jnp.maximum(t - 1, 0), rows, cols], c0_ref[rows, cols]))
    tc = jnp.tanh(c)
    valid = m_ref[t, rows, :] > 0
    u = dh + dys_ref[t, rows, cols]
    d = dc + u * o * (1.0 - tc * tc)
    dz = (d * g * i * (1.0 - i), d * c_prev * f * (1.0 - f), d * i * (1.0 - g * g), u * tc * o * (1.0 - o))
    for k, dz_k in enumerate(dz):
        dz_ref[t, rows, pl.ds(k * H + j * bh, bh)] = jnp.where(valid, dz_k, 0.0)
    return jnp.where(fresh, 0.0, jnp.where(valid, d * f, dc))


def _backward_block_recurrent(refs, t, rows, dh, wt, H: int):
    """Reverse step ``t``, second half: the block's ``dh_{t-1} = Σ_g dZ_{t,g} W_g[units, :]ᵀ`` from the
    whole ``dZ_t`` (``wt``: the block's four ``[H, bh]`` transposed rows of ``W_h``)."""
    dz_ref, m_ref, r_ref = refs
    back = sum(jnp.dot(dz_ref[t, rows, pl.ds(g * H, H)].astype(wt[g].dtype), wt[g], preferred_element_type=_F32)
               for g in range(4))
    valid, fresh = m_ref[t, rows, :] > 0, r_ref[t, rows, :] > 0
    return jnp.where(fresh, 0.0, jnp.where(valid, back, dh))


# --------------------------------------------------------------------------- the grid barrier (GPU)


def _barrier(flags_ref, tile_id, program, P: int, step, ok):
    """Wait until every program of the batch tile has finished step ``step`` (counted from 1).

    Each program owns one flag, ``flags[tile, program]``: after a block barrier (all of its stores
    issued) it raises the flag to ``step`` with an acquire-release ``atomic_max``, then polls the tile's
    ``P`` flags (atomic ORs with zero) until their minimum reaches ``step`` or ``SPIN_LIMIT`` polls pass, and
    ends with a block barrier. Raising a flag to a value is idempotent, so this holds however many
    threads of the program execute the atomic. Every step writes its states to fresh addresses, so
    no program reads a stale cached line. ``ok`` becomes 0 on a timeout (the call's outputs NaN), and
    a program that timed out once waits no more: a grid that cannot be resident costs one timeout per
    program, not one per step.
    """
    from jax.experimental.pallas import triton as pltriton

    pltriton.debug_barrier()
    pltriton.atomic_max(flags_ref, (tile_id, program), step)
    everyone = (tile_id, pl.ds(0, P))
    zeros = jnp.zeros((P,), jnp.int32)

    def waiting(s):
        return (s[0] < step) & (s[1] < SPIN_LIMIT) & (ok > 0)

    def read():   # an atomic OR with zeros: the flags as they are, with acquire semantics (Pallas lowers a
        return jnp.min(pltriton.atomic_or(flags_ref, everyone, zeros))   # vector of int max as a float one)

    slowest, _ = lax.while_loop(waiting, lambda s: (read(), s[1] + 1), (read(), jnp.int32(0)))
    pltriton.debug_barrier()
    return jnp.where(slowest >= step, ok, 0)


# --------------------------------------------------------------------------- kernels


def _forward_kernel(xp_ref, w_ref, h0_ref, c0_ref, m_ref, r_ref, sync_in, hs_ref, cs_ref, acts_ref, sync_ref,
                    ok_ref, *, T: int, H: int, st: Static):
    """GPU: program ``(j, b)`` owns column block ``j`` of batch tile ``b`` for the whole sequence."""
    del sync_in   # aliased to sync_ref: the barrier's flags, zeros on entry
    j, b = pl.program_id(0), pl.program_id(1)
    rows, bh, P = pl.ds(b * st.tile, st.tile), st.block, H // st.block
    w = [w_ref[j, g] for g in range(4)]                      # on chip for the whole sequence
    refs = (xp_ref, h0_ref, m_ref, r_ref, hs_ref, cs_ref, acts_ref)

    def step(t, carry):
        c, ok = carry
        c = _forward_block(refs, t, j, rows, c, w, H, bh)
        return c, _barrier(sync_ref, b, j, P, t + 1, ok)

    _, ok = lax.fori_loop(0, T, step, (c0_ref[rows, pl.ds(j * bh, bh)], jnp.int32(1)))
    ok_ref[j, b] = ok


def _forward_kernel_interpret(xp_ref, w_ref, h0_ref, c0_ref, m_ref, r_ref, hs_ref, cs_ref, acts_ref, *,
                              T: int, H: int, st: Static):
    """Interpret mode: one program per batch tile runs the column blocks in turn at every step."""
    b = pl.program_id(0)
    rows, bh, P = pl.ds(b * st.tile, st.tile), st.block, H // st.block
    refs = (xp_ref, h0_ref, m_ref, r_ref, hs_ref, cs_ref, acts_ref)

    def step(t, cs):
        return tuple(_forward_block(refs, t, j, rows, cs[j], [w_ref[j, g] for g in range(4)], H, bh)
                     for j in range(P))

    lax.fori_loop(0, T, step, tuple(c0_ref[rows, pl.ds(j * bh, bh)] for j in range(P)))


def _backward_kernel(dys_ref, acts_ref, cs_ref, c0_ref, m_ref, r_ref, wt_ref, dhT_ref, dcT_ref, sync_in,
                     dz_ref, dh0_ref, dc0_ref, sync_ref, ok_ref, *, T: int, H: int, st: Static):
    """GPU: the reverse loop of program ``(j, b)``; one barrier per step, between the two halves."""
    del sync_in
    j, b = pl.program_id(0), pl.program_id(1)
    rows, bh, P = pl.ds(b * st.tile, st.tile), st.block, H // st.block
    cols = pl.ds(j * bh, bh)
    wt = [wt_ref[j, g] for g in range(4)]
    gate_refs = (dys_ref, acts_ref, cs_ref, c0_ref, m_ref, r_ref, dz_ref)

    def step(s, carry):
        dh, dc, ok = carry
        t = T - 1 - s
        dc = _backward_block_gates(gate_refs, t, j, rows, dh, dc, H, bh)
        ok = _barrier(sync_ref, b, j, P, s + 1, ok)
        return _backward_block_recurrent((dz_ref, m_ref, r_ref), t, rows, dh, wt, H), dc, ok

    dh, dc, ok = lax.fori_loop(0, T, step, (dhT_ref[rows, cols], dcT_ref[rows, cols], jnp.int32(1)))
    dh0_ref[rows, cols] = dh
    dc0_ref[rows, cols] = dc
    ok_ref[j, b] = ok


def _backward_kernel_interpret(dys_ref, acts_ref, cs_ref, c0_ref, m_ref, r_ref, wt_ref, dhT_ref, dcT_ref,
                               dz_ref, dh0_ref, dc0_ref, *, T: int, H: int, st: Static):
    """Interpret mode: every block's first half, then every block's second half, at every step."""
    b = pl.program_id(0)
    rows, bh, P = pl.ds(b * st.tile, st.tile), st.block, H // st.block
    gate_refs = (dys_ref, acts_ref, cs_ref, c0_ref, m_ref, r_ref, dz_ref)

    def step(s, carry):
        dhs, dcs = carry
        t = T - 1 - s
        dcs = tuple(_backward_block_gates(gate_refs, t, j, rows, dhs[j], dcs[j], H, bh) for j in range(P))
        dhs = tuple(_backward_block_recurrent((dz_ref, m_ref, r_ref), t, rows, dhs[j],
                                              [wt_ref[j, g] for g in range(4)], H) for j in range(P))
        return dhs, dcs

    init = tuple(tuple(ref[rows, pl.ds(j * bh, bh)] for j in range(P)) for ref in (dhT_ref, dcT_ref))
    dhs, dcs = lax.fori_loop(0, T, step, init)
    for j in range(P):
        dh0_ref[rows, pl.ds(j * bh, bh)] = dhs[j]
        dc0_ref[rows, pl.ds(j * bh, bh)] = dcs[j]


def _call(gpu_kernel, interpret_kernel, args, out_shapes, H: int, Bp: int, T: int, st: Static):
    """Launch a kernel pair: the grid-barrier kernel on a GPU (outputs NaN where a barrier timed out),
    the interpret-mode kernel elsewhere."""
    P, NB = H // st.block, Bp // st.tile
    if st.interpret:
        kernel = functools.partial(interpret_kernel, T=T, H=H, st=st)
        return pl.pallas_call(kernel, out_shape=out_shapes, grid=(NB,), interpret=True)(*args)
    from jax.experimental.pallas import triton as pltriton

    flags = jax.ShapeDtypeStruct((NB, P), jnp.int32)
    shapes = (*out_shapes, flags, jax.ShapeDtypeStruct((P, NB), jnp.int32))
    kernel = functools.partial(gpu_kernel, T=T, H=H, st=st)
    *outs, _, ok = pl.pallas_call(
        kernel, out_shape=shapes, grid=(P, NB), input_output_aliases={len(args): len(out_shapes)},
        compiler_params=pltriton.CompilerParams(num_warps=num_warps(H, st), num_stages=1),
    )(*args, jnp.zeros((NB, P), jnp.int32))
    good = jnp.all(ok == 1)
    return [jnp.where(good, o, jnp.nan) for o in outs]


# --------------------------------------------------------------------------- layout and derivatives


def _blocks(w: jax.Array, P: int, bh: int) -> jax.Array:
    """``[H, 4H]`` (gate-major columns) as ``[P, 4, H, bh]``: block ``j``'s four gate columns."""
    H = w.shape[0]
    return w.reshape(H, 4, P, bh).transpose(2, 1, 0, 3)


def _row_blocks(w: jax.Array, P: int, bh: int) -> jax.Array:
    """``[H, 4H]`` as ``[P, 4, H, bh]``: block ``j``'s rows of each gate, transposed (``W_g[units, :]ᵀ``)."""
    H = w.shape[0]
    return w.reshape(P, bh, 4, H).transpose(0, 2, 3, 1)


def _run_forward(w_x, w_h, b, xs, h0, c0, m, r, st: Static):
    """Padded forward: ``(hs, cs, acts, mf, rf)`` over the padded batch."""
    T, B, _ = xs.shape
    H = h0.shape[-1]
    Bp = -(-B // st.tile) * st.tile
    dt = st.matmul_dtype
    xp = jnp.matmul(xs.astype(dt), w_x.astype(dt), preferred_element_type=_F32) + b.astype(_F32)
    mf, rf = _flags(m, T, B, Bp, True), _flags(r, T, B, Bp, False)
    args = (_pad(xp, Bp, 1), _blocks(w_h.astype(dt), H // st.block, st.block),
            _pad(h0.astype(_F32), Bp, 0), _pad(c0.astype(_F32), Bp, 0), mf, rf)
    shapes = (jax.ShapeDtypeStruct((T, Bp, H), _F32), jax.ShapeDtypeStruct((T, Bp, H), _F32),
              jax.ShapeDtypeStruct((T, Bp, 4 * H), _F32))
    hs, cs, acts = _call(_forward_kernel, _forward_kernel_interpret, args, shapes, H, Bp, T, st)
    return hs, cs, acts, mf, rf


def _primal(w_x, w_h, b, xs, h0, c0, m, r, st: Static):
    B = xs.shape[1]
    hs, cs, acts, mf, rf = _run_forward(w_x, w_h, b, xs, h0, c0, m, r, st)
    ys = (hs * mf)[:, :B]  # a valid step outputs h_t, a masked one zeros
    out = (hs[-1, :B], cs[-1, :B], ys) if xs.shape[0] else (h0.astype(_F32), c0.astype(_F32), ys)
    return out, (hs, cs, acts, mf, rf)


def _pad_units(w_x, w_h, b, h0, c0, Hp: int):
    """The layer with ``Hp - H`` zero units appended (to each gate's columns, ``W_h``'s rows, the state)."""
    H = h0.shape[-1]

    def gate_cols(a):
        lead = a.shape[:-1]
        pad = [(0, 0)] * len(lead) + [(0, 0), (0, Hp - H)]
        return jnp.pad(a.reshape(lead + (4, H)), pad).reshape(lead + (4 * Hp,))

    def units(a):
        return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, Hp - H)])

    return gate_cols(w_x), jnp.pad(gate_cols(w_h), [(0, Hp - H), (0, 0)]), gate_cols(b), units(h0), units(c0)


def forward(w_x, w_h, b, xs, h0, c0, m, r, st: Static):
    """The forward kernel alone: ``(h_T, c_T, ys, (hs, cs, acts))`` with ``acts`` as [T, B, 4, H], the
    residuals the fused LSTM's ``custom_jvp`` reads (as :func:`jlstm.kernels.pallas_lstm.forward`)."""
    T, B = xs.shape[:2]
    H = h0.shape[-1]
    Hp = padded_hidden(H, st)
    w_x, w_h, b, h0p, c0p = _pad_units(w_x, w_h, b, h0, c0, Hp)
    out, (hs, cs, acts, _, _) = _primal(w_x, w_h, b, xs, h0p, c0p, m, r, st)
    hT, cT, ys = out
    acts = acts[:, :B].reshape(T, B, 4, Hp)[..., :H]
    return hT[:, :H], cT[:, :H], ys[..., :H], (hs[:, :B, :H], cs[:, :B, :H], acts)


def lstm_wide(w_x: jax.Array, w_h: jax.Array, b: jax.Array, xs: jax.Array, h0: jax.Array, c0: jax.Array,
              m: jax.Array | None = None, resets: jax.Array | None = None, *, st: Static):
    """The LSTM over ``xs [T, B, I]`` from ``(h0, c0)`` [B, H] through both kernels: ``(h_T, c_T, ys)``
    in float32, like :func:`jlstm.kernels.pallas_lstm.lstm_pallas`.

    ``m`` / ``resets``: None or bool [T, B] (a reset starts step t from zeros; False at invalid
    steps). ``st`` from :func:`options`. The units are padded to :func:`padded_hidden` and the
    padding sliced away. Reverse mode only (a ``custom_vjp`` over the backward kernel).
    """
    H = h0.shape[-1]
    Hp = padded_hidden(H, st)
    w_x, w_h, b, h0, c0 = _pad_units(w_x, w_h, b, h0, c0, Hp)
    hT, cT, ys = cast(tuple, _lstm_wide(w_x, w_h, b, xs, h0, c0, m, resets, st))   # custom_vjp hides the type
    return hT[:, :H], cT[:, :H], ys[..., :H]


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _lstm_wide(w_x, w_h, b, xs, h0, c0, m, r, st: Static):
    return _primal(w_x, w_h, b, xs, h0, c0, m, r, st)[0]


def _fwd(w_x, w_h, b, xs, h0, c0, m, r, st: Static):
    out, res = _primal(w_x, w_h, b, xs, h0, c0, m, r, st)
    return out, (w_x, w_h, b, xs, h0, c0) + res


def _bwd(st: Static, saved, cts):
    w_x, w_h, b, xs, h0, c0, hs, cs, acts, mf, rf = saved
    dhT, dcT, dys = cts
    T, B, I = xs.shape
    Bp, H = hs.shape[1], hs.shape[2]
    dt = st.matmul_dtype
    args = (_pad(dys.astype(_F32), Bp, 1), acts, cs, _pad(c0.astype(_F32), Bp, 0), mf, rf,
            _row_blocks(w_h.astype(dt), H // st.block, st.block),
            _pad(dhT.astype(_F32), Bp, 0), _pad(dcT.astype(_F32), Bp, 0))
    shapes = (jax.ShapeDtypeStruct((T, Bp, 4 * H), _F32), jax.ShapeDtypeStruct((Bp, H), _F32),
              jax.ShapeDtypeStruct((Bp, H), _F32))
    dz, dh0, dc0 = _call(_backward_kernel, _backward_kernel_interpret, args, shapes, H, Bp, T, st)
    dz = dz[:, :B]
    h_prev = jnp.concatenate([h0[None].astype(_F32), hs[:-1, :B]], axis=0) * (1.0 - rf[:, :B])  # zeros at a reset
    dz2 = dz.reshape(T * B, 4 * H)
    dw_h = jnp.matmul(h_prev.reshape(T * B, H).T.astype(dt), dz2.astype(dt), preferred_element_type=_F32)
    dw_x = jnp.matmul(xs.reshape(T * B, I).T.astype(dt), dz2.astype(dt), preferred_element_type=_F32)
    dxs = jnp.matmul(dz.astype(dt), w_x.T.astype(dt), preferred_element_type=_F32)
    return (dw_x.astype(w_x.dtype), dw_h.astype(w_h.dtype), jnp.sum(dz2, axis=0).astype(b.dtype),
            dxs.astype(xs.dtype), dh0[:B].astype(h0.dtype), dc0[:B].astype(c0.dtype), None, None)


_lstm_wide.defvjp(_fwd, _bwd)
