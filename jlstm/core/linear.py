"""Affine recurrences ``s_t = A_t s_{t-1} + b_t`` over time: the one implementation every part shares.

The Newton methods solve one per iteration, the min cells' parallel form and
:func:`linear_recurrence` are one. Two Jacobian layouts share the code through :class:`Algebra`:

* ``dense``: ``A`` is ``[T, B, D, D]`` (DEER, ELK);
* ``diag``: ``A`` is ``[T, ..., D]``, a diagonal, so every "matrix" product is elementwise.

Two evaluations: ``lax.associative_scan`` (depth O(log T); the default on GPU and TPU), and blocks
of about √T steps (:func:`blocked_affine_scan`; the default on the CPU, where it is as fast and
compiles several times faster). The associative element is the map ``(A, b)``; two maps compose as
``(A_2, b_2) ∘ (A_1, b_1) = (A_2 A_1, A_2 b_1 + b_2)``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jlstm.core import eager
from jlstm.core.plan import current_plan
from jlstm.core.time import block_count, join_blocks, split_blocks, sqrt_length
from jlstm.core.types import Cell


class Algebra(NamedTuple):
    """Matrix operations for one Jacobian layout (``dense`` or ``diag``)."""

    dense: bool

    # Dense products at full precision: a GPU's default TF32 (about 3 digits) in the Jacobian products
    # kept DEER from converging on an H200 for any state wider than 4.
    def mm(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.matmul(a, b, precision=lax.Precision.HIGHEST) if self.dense else a * b

    def mv(self, a: jax.Array, v: jax.Array) -> jax.Array:
        return jnp.einsum("...ij,...j->...i", a, v, precision=lax.Precision.HIGHEST) if self.dense else a * v

    def t(self, a: jax.Array) -> jax.Array:
        return jnp.swapaxes(a, -1, -2) if self.dense else a

    def eye_like(self, a: jax.Array) -> jax.Array:
        if self.dense:
            return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
        return jnp.ones_like(a)

    def solve_m(self, m: jax.Array, x: jax.Array) -> jax.Array:
        """``m⁻¹ x`` for a matrix ``x`` (:func:`solve`: no LAPACK call on the CPU)."""
        return solve(m, x) if self.dense else x / m

    def solve_v(self, m: jax.Array, v: jax.Array) -> jax.Array:
        """``m⁻¹ v`` for a vector ``v``."""
        return solve(m, v[..., None])[..., 0] if self.dense else v / m


XLA_SOLVE_MAX = 64
"""Off the CPU, :func:`solve` eliminates in XLA up to this size and calls ``jnp.linalg.solve`` above it."""


def solve(m: jax.Array, x: jax.Array) -> jax.Array:
    """``m⁻¹ x`` for batches of square ``m [..., n, n]`` and ``x [..., n, k]``.

    On the CPU, and for ``n <= XLA_SOLVE_MAX`` everywhere, by Gauss-Jordan elimination with partial
    pivoting written in ``jax.numpy`` (:func:`gauss_jordan`). XLA:CPU runs independent LAPACK
    custom calls concurrently, each on a worker thread of the same pool, and each waits there for
    sub-tasks it queued on that pool: with two workers (a 2-core machine), two batched
    ``jnp.linalg.solve`` calls waited on each other forever (measured: dense ELK on a GRU(8) at
    T=2048, B=4 hung in 7 runs of 8). The elimination is pure XLA, so nothing blocks, and for the
    small matrices of a Newton step it is also faster than a batched LAPACK call.
    """
    if m.shape[-1] <= XLA_SOLVE_MAX or not current_plan().lapack_solve:
        return gauss_jordan(m, x)
    return jnp.linalg.solve(m, x)


def gauss_jordan(m: jax.Array, x: jax.Array) -> jax.Array:
    """``m⁻¹ x`` by Gauss-Jordan elimination with partial pivoting, vectorised over the batch axes.

    Column ``j``: the row with the largest ``|m[i, j]|`` among ``i >= j`` is swapped into row ``j``,
    divided by its pivot and subtracted from every other row. ``n`` steps of ``O(n (n + k))`` work
    each, in one ``fori_loop``. A singular ``m`` gives non-finite values.
    """
    n = m.shape[-1]
    dtype = jnp.result_type(m, x)
    batch = jnp.broadcast_shapes(m.shape[:-2], x.shape[:-2])
    aug = jnp.concatenate([jnp.broadcast_to(m, batch + m.shape[-2:]).astype(dtype),
                           jnp.broadcast_to(x, batch + x.shape[-2:]).astype(dtype)], -1)
    rows = jnp.arange(n)

    def eliminate(j, aug):
        col = jnp.take(aug, j, axis=-1)                               # [..., n]
        p = jnp.argmax(jnp.where(rows >= j, jnp.abs(col), -1), axis=-1)
        row_j = jnp.take(aug, j, axis=-2)
        row_p = jnp.take_along_axis(aug, p[..., None, None], axis=-2)[..., 0, :]
        is_j = (rows == j)[:, None]
        is_p = (rows == p[..., None])[..., None]
        aug = aug + is_j * (row_p - row_j)[..., None, :] + is_p * (row_j - row_p)[..., None, :]
        pivot = row_p / jnp.take(row_p, j, axis=-1)[..., None]
        aug = aug - jnp.take(aug, j, axis=-1)[..., None] * pivot[..., None, :]
        return jnp.where(is_j, pivot[..., None, :], aug)

    aug = lax.fori_loop(0, n, eliminate, aug)
    return aug[..., n:]


def affine_scan(alg: Algebra, A: jax.Array, b: jax.Array, *, associative: bool | None = None) -> jax.Array:
    """Solve ``s_t = A_t s_{t-1} + b_t`` for all t (``A_1`` already absorbs ``s_0``); returns ``s``.

    ``associative=None`` picks the evaluation for the backend: :func:`blocked_affine_scan` on the
    CPU (faster there, and much faster to compile), ``lax.associative_scan`` elsewhere.
    """
    if associative is None:
        associative = current_plan().associative
    if not associative:
        return blocked_affine_scan(alg, A, b, jnp.zeros_like(b[0]))

    def compose(e1, e2):
        A1, b1 = e1
        A2, b2 = e2
        return alg.mm(A2, A1), alg.mv(A2, b1) + b2

    return lax.associative_scan(compose, (A, b), axis=0)[1]


def blocked_affine_scan(alg: Algebra, A: jax.Array, b: jax.Array, s0: jax.Array) -> jax.Array:
    """All ``s_t = A_t s_{t-1} + b_t`` from ``s0``, in blocks of about √T steps: ``[T, ...]``.

    A loop of √T steps composes every block's maps at once (vectorised over the blocks), a loop
    over the blocks carries ``s`` from block to block, and a last loop of √T steps fills each
    block in from its starting state, again all blocks at once. The work is that of the
    sequential recurrence (plus one composition per step), in three loops of about √T steps.
    """
    T = b.shape[0]
    if T == 0:
        return b
    L = sqrt_length(T)
    pad = block_count(T, L) * L - T
    if pad:  # identity maps (A = I, b = 0) fill the last block
        A = jnp.concatenate([A, alg.eye_like(jnp.zeros((pad,) + A.shape[1:], A.dtype))])

    def blocks(x):  # [n*L, ...] -> [L, n, ...]: the step within the block leads
        return jnp.swapaxes(split_blocks(x, L), 0, 1)

    A, b = blocks(A), blocks(b)

    def compose(total, step):
        return (alg.mm(step[0], total[0]), alg.mv(step[0], total[1]) + step[1]), None

    (A_block, b_block), _ = lax.scan(compose, (alg.eye_like(A[0]), jnp.zeros_like(b[0])), (A, b))

    def advance(s, step):
        return alg.mv(step[0], s) + step[1], s

    def fill(s, step):
        s = alg.mv(step[0], s) + step[1]
        return s, s

    _, s_start = lax.scan(advance, s0, (A_block, b_block))
    _, s = lax.scan(fill, s_start, (A, b))
    return join_blocks(jnp.swapaxes(s, 0, 1), T)


def constant_affine_scan(M: jax.Array, g: jax.Array, b: jax.Array) -> jax.Array:
    """All ``s_t = g_t M s_{t-1} + b_t`` from ``s_{-1} = 0``, for one matrix ``M`` per sequence: ``[T, B, D]``.

    ``M`` is ``[B, D, D]``, ``g`` a scalar gate ``[T, B]`` (0 cuts the recurrence: the first step, a
    reset), ``b`` is ``[T, B, D]``. The maps ``g M`` of one sequence share ``M``, so the composition of
    any ``2^l`` consecutive steps is ``(Π g) M^(2^l)``: recursive doubling (``⌈log₂ T⌉`` levels, each
    one batched matrix-vector product over all steps and one squaring of ``M``) solves it in depth
    O(log T) with no per-step matrix products. Level ``l`` adds to each step the partial solution that
    ends ``2^l`` steps earlier, carried through ``M^(2^l)``.
    """
    M, g, b = jnp.asarray(M), jnp.asarray(g), jnp.asarray(b)
    T = b.shape[0]
    s, gate, power, shift = b, g, M, 1
    while shift < T:
        carried = jnp.einsum("bij,tbj->tbi", power, s[:-shift], precision=lax.Precision.HIGHEST)
        s = s.at[shift:].add(gate[shift:, :, None] * carried)
        gate = gate.at[shift:].multiply(gate[:-shift])     # steps before `shift` get no more terms
        power = jnp.matmul(power, power, precision=lax.Precision.HIGHEST)
        shift *= 2
    return s


def prefix_scan(combine: Callable, elems: Any, *, associative: bool | None = None) -> Any:
    """All prefixes ``e_1, e_1 ∘ e_2, …`` of an associative ``combine(earlier, later)``, along axis 0.

    ``lax.associative_scan`` (``associative=True``, the default off the CPU), or blocks of about
    √T steps (the CPU's default): a loop of √T steps forms the prefixes inside every block at once
    (vectorised over the blocks), a loop over the blocks composes their totals, and one vectorised
    ``combine`` joins each block's incoming total to its prefixes. ``combine`` is traced three
    times instead of twice per level of the tree, so the program compiles several times faster.
    The padding of a last partial block is zeros; it reaches only the dropped outputs.
    """
    if associative is None:
        associative = current_plan().associative
    T = jax.tree.leaves(elems)[0].shape[0]
    if associative or T <= 1:
        return lax.associative_scan(combine, elems, axis=0)
    L = sqrt_length(T)
    blocks = jax.tree.map(lambda a: jnp.swapaxes(split_blocks(a, L), 0, 1), elems)      # [L, n, ...]

    def extend(acc, e):
        acc = combine(acc, e)
        return acc, acc

    def first(tree):
        return jax.tree.map(lambda a: a[0], tree)

    def rest(tree):
        return jax.tree.map(lambda a: a[1:], tree)

    def prepend(head, tail):
        return jax.tree.map(lambda h, t: jnp.concatenate([h[None], t]), head, tail)

    _, within = lax.scan(extend, first(blocks), rest(blocks))
    within = prepend(first(blocks), within)                                   # [L, n, ...]: inside each block
    totals = jax.tree.map(lambda a: a[-1], within)                            # [n, ...]
    _, upto = lax.scan(extend, first(totals), rest(totals))
    before = prepend(first(totals), upto)                                     # blocks 0..b composed
    later = jax.tree.map(lambda a: a[:, 1:], within)                          # blocks 1..n-1
    joined = combine(jax.tree.map(lambda a, w: jnp.broadcast_to(a[:-1], w.shape), before, later), later)
    out = jax.tree.map(lambda w, j: jnp.concatenate([w[:, :1], j], 1), within, joined)
    return jax.tree.map(lambda a: join_blocks(jnp.swapaxes(a, 0, 1), T), out)


def reverse_affine_scan(alg: Algebra, A: jax.Array, b: jax.Array) -> jax.Array:
    """Solve ``u_t = A_t u_{t+1} + b_t`` backwards in time (``A_T`` must be 0)."""
    return jnp.flip(affine_scan(alg, jnp.flip(A, 0), jnp.flip(b, 0)), 0)


# --------------------------------------------------------------------------------------------
# The public diagonal recurrence h_t = a_t ⊙ h_{t-1} + b_t


LINEAR_METHODS = ("auto", "loop", "blocked", "associative")
LOOP_UP_TO = 16
"""``method="auto"`` takes the plain loop up to this many steps (a blocked or associative scan has
nothing to gain on so few)."""


def linear_recurrence(a: jax.Array, b: jax.Array, h0: jax.Array | None = None, *,
                      resets: jax.Array | None = None, reverse: bool = False, method: str = "auto",
                      associative: bool | None = None) -> jax.Array:
    """All ``h_t = a_t ⊙ h_{t-1} + b_t`` along axis 0 (time), from ``h0``: ``[T, ...]``, differentiable.

    Args:
      a: the decays, ``[T, ...]`` or anything that broadcasts to ``b.shape`` (NumPy rules: a
        number, or ``a[:, None]`` for one decay per step). Floating or complex.
      b: the inputs, ``[T, ...]``; floating or complex.
      h0: the state before the first step (``None``: zeros); broadcasts to ``b.shape[1:]``.
      resets: optional bool ``[T]`` or ``[T, *lead]`` (a prefix of ``b.shape``, e.g. ``[T, batch]``
        for ``b`` of ``[T, batch, D]``): True marks the first step of a segment. The recurrence
        restarts from zero there: ``h_t = b_t`` (``h_{t-1}`` and ``a_t`` are dropped). ``h0``
        reaches only the first segment.
      reverse: run from the end, ``h_t = a_t ⊙ h_{t+1} + b_t`` with ``h0`` entering at the last
        step. ``resets`` keep their meaning in the original order (segment starts), so each
        segment runs backwards within itself: where ``resets[t + 1]`` is True, step ``t`` ends its
        segment and ``h_t = b_t``. Discounted returns over episodes are
        ``linear_recurrence(γ·(1 - done), rewards, reverse=True)``, or with the episode starts
        as ``resets``: ``linear_recurrence(γ, rewards, resets=starts, reverse=True)``.
      method: ``"loop"`` (``lax.scan``, T sequential steps), ``"blocked"`` (blocks of about √T
        steps: three loops of √T), ``"associative"`` (``lax.associative_scan``, depth O(log T)) or
        ``"auto"``: the loop up to :data:`LOOP_UP_TO` steps, else the backend's routing table
        (:func:`jlstm.core.plan.current_plan`: blocked on CPU, associative on GPU and TPU).
      associative: deprecated; ``True`` is ``method="associative"``, ``False`` ``method="blocked"``.

    Returns:
      ``h`` of ``b``'s shape, in the dtype ``a``, ``b`` and ``h0`` promote to. All methods give the
      same values to rounding, and gradients with respect to ``a``, ``b`` and ``h0``.

    Example:
      >>> a = jnp.full((5, 2), 0.5)
      >>> b = jnp.ones((5, 2))
      >>> resets = jnp.array([False, False, True, False, False])
      >>> jlstm.linear_recurrence(a, b, resets=resets)[:, 0]
      Array([1.  , 1.5 , 1.  , 1.5 , 1.75], dtype=float32)
      >>> jlstm.linear_recurrence(a, b, resets=resets, reverse=True)[:, 0]
      Array([1.5 , 1.  , 1.75, 1.5 , 1.  ], dtype=float32)
    """
    method = _legacy_method(method, associative, "jlstm.linear_recurrence")
    numbers, arrays = eager.split_numbers((a, b, h0))
    return eager.call(_linear_call, (reverse, method, numbers), (*arrays, resets), context=current_plan())


def _linear_call(reverse: bool, method: str, numbers: tuple, a: Any, b: Any, h0: Any, resets: Any) -> jax.Array:
    """:func:`linear_recurrence` with the options (and any Python-number operand) first, for
    :func:`jlstm.core.eager.call`."""
    a, b, h0 = eager.join_numbers(numbers, (a, b, h0))
    a, b, h0, resets = _check_linear(a, b, h0, resets, reverse, method, "jlstm.linear_recurrence")
    if b.shape[0] == 0:
        return b
    if resets is not None:
        r = resets.reshape(resets.shape + (1,) * (b.ndim - resets.ndim))
        if reverse:  # step t ends a segment where step t + 1 starts the next one
            r = jnp.concatenate([r[1:], jnp.zeros_like(r[:1])])
        a = jnp.where(r, jnp.zeros((), a.dtype), a)
    if reverse:
        a, b = jnp.flip(a, 0), jnp.flip(b, 0)
    h = _solve(a, b, h0, method)
    return jnp.flip(h, 0) if reverse else h


def _solve(a: jax.Array, b: jax.Array, h0: jax.Array, method: str) -> jax.Array:
    """``h_t = a_t h_{t-1} + b_t`` forwards by ``method`` (``a``, ``b`` of one shape, T >= 1)."""
    if method == "auto":
        method = "loop" if b.shape[0] <= LOOP_UP_TO else "associative" if current_plan().associative else "blocked"
    diag = Algebra(dense=False)
    if method == "blocked":
        return blocked_affine_scan(diag, a, b, h0)
    if method == "associative":  # h0 folded into the first step, as affine_scan expects
        return affine_scan(diag, a, b.at[0].add(a[0] * h0), associative=True)

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    return lax.scan(step, h0, (a, b))[1]


def _legacy_method(method: Any, associative: bool | None, where: str) -> Any:
    """``method`` from the deprecated ``associative=`` flag, with a ``DeprecationWarning``."""
    if associative is None:
        return method
    if method != "auto":
        raise TypeError(f"{where}: got both method={method!r} and associative={associative!r}, its deprecated "
                        f"former spelling; pass only method=.")
    new = "associative" if associative else "blocked"
    warnings.warn(f"{where}: associative= is deprecated and will be removed; pass method={new!r} instead.",
                  DeprecationWarning, stacklevel=3)
    return new


def _inexact(name: str, x: Any, where: str) -> jax.Array:
    if isinstance(x, (int, float, complex)) and not isinstance(x, bool):  # a Python number, weakly typed
        return jnp.asarray(x)
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{where}: {name} must be an array, got {type(x).__name__}; "
                        f"wrap it with jnp.asarray(...).")
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(f"{where}: {name} must hold floating point (or complex) numbers, got dtype {dtype}; "
                        f"convert it with {name}.astype(jnp.float32).")
    return jnp.asarray(x)


def _check_linear(a, b, h0, resets, reverse, method, where):
    """Check :func:`linear_recurrence`'s arguments; returns ``(a, b, h0, resets)`` broadcast to one dtype."""
    b = _inexact("b", b, where)
    a = _inexact("a", a, where)
    if b.ndim < 1:
        raise ValueError(f"{where}: b must have a leading time axis, shape [T, ...], got a scalar; use b[None].")
    if not _broadcasts(a.shape, b.shape):
        raise ValueError(f"{where}: a has shape {tuple(a.shape)}, which does not broadcast to b's shape "
                         f"{tuple(b.shape)} ([T, ...], NumPy rules: one decay per step is a[:, None]).")
    h0 = jnp.zeros(b.shape[1:], b.dtype) if h0 is None else _inexact("h0", h0, where)
    if not _broadcasts(h0.shape, b.shape[1:]):
        raise ValueError(f"{where}: h0 has shape {tuple(h0.shape)}, which does not broadcast to "
                         f"{tuple(b.shape[1:])} (b's shape without its time axis).")
    if resets is not None:
        if not hasattr(resets, "dtype") or resets.dtype != jnp.bool_:
            raise TypeError(f"{where}: resets must be a bool array (True = a segment starts at this step), got "
                            f"{getattr(resets, 'dtype', type(resets).__name__)}; pass resets.astype(bool).")
        if resets.ndim < 1 or tuple(resets.shape) != tuple(b.shape[:resets.ndim]):
            raise ValueError(f"{where}: resets has shape {tuple(resets.shape)}, expected a leading part of b's "
                             f"shape {tuple(b.shape)}: [T] or [T, *batch].")
    if not isinstance(reverse, bool):
        raise TypeError(f"{where}: reverse must be True or False, got {reverse!r}.")
    if method not in LINEAR_METHODS:
        raise ValueError(f"{where}: method={method!r} is not one of {', '.join(map(repr, LINEAR_METHODS))}.")
    dtype = jnp.result_type(a, b, h0)
    return (jnp.broadcast_to(a.astype(dtype), b.shape), b.astype(dtype),
            jnp.broadcast_to(h0.astype(dtype), b.shape[1:]), resets)


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return jnp.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# A cell that declares its recurrence diagonal-linear (CellFast.linear)


def linear_form(cell: Cell) -> Callable[..., tuple[Any, jax.Array]]:
    """The whole-sequence form of a cell that declares ``CellFast.linear``, evaluated by
    :func:`linear_recurrence`: ``form(params, xs, state, valid, *, unroll, remat, resets=None)``.

    The coefficients ``(a, b) = cell.fast.linear(params, xp)`` come for all steps at once from
    ``xp = cell.fast.project(params, xs)`` (``xs`` itself for a cell without ``project``), promoted
    to the state's precision. Invalid steps keep the state (``a = 1``, ``b = 0``) and output zeros;
    a reset restarts from ``cell.initial_state``: ``h_t = a_t ⊙ h_init + b_t``. The state is one
    array ``h`` and the outputs are ``y_t = h_t`` in the step's output dtype. Forms the same
    function as a loop over ``cell.step``, to rounding.

    Example, a minGRU's parallel form called directly:
      >>> from jlstm.core.linear import linear_form
      >>> cell = jlstm.min_gru(8)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs, h0 = jnp.ones((20, 2, 3)), cell.initial_state(params, 2)
      >>> resets = jnp.zeros((20, 2), bool).at[7].set(True)
      >>> final, ys = linear_form(cell)(params, xs, h0, None, unroll=1, remat=None, resets=resets)
      >>> ys.shape, final.h.shape
      ((20, 2, 8), (2, 8))
    """
    fast = cell.fast
    if not isinstance(cell, Cell) or fast is None or fast.linear is None:
        raise ValueError(f"linear_form: {getattr(cell, 'name', cell)!r} declares no diagonal-linear recurrence "
                         f"(CellFast.linear); build it with jlstm.CellFast(linear=...).")
    coefficients, project = fast.linear, fast.project

    def form(params: Any, xs: jax.Array, state: Any, valid: jax.Array | None, *, unroll: Any = None,
             remat: Any = None, resets: jax.Array | None = None) -> tuple[Any, jax.Array]:
        del unroll  # no loop over single steps to unroll

        def run(params, xs, state, valid, resets):
            leaves, treedef = jax.tree.flatten(state)
            h, y_dtype = _linear_state(cell, params, state, xs, leaves)
            xp = project(params, xs) if project is not None else xs
            xp = jax.tree.map(lambda v: v.astype(jnp.promote_types(v.dtype, h.dtype)), xp)
            a, b = _linear_coefficients(cell, coefficients(params, xp), (xs.shape[0],) + h.shape)
            a, b = _mask_linear(cell, params, a, b, valid, resets, h.ndim - (xs.ndim - 2))
            hs = linear_recurrence(a, b, h)
            final = hs[-1] if hs.shape[0] else h
            if valid is not None:
                hs = jnp.where(valid.reshape(valid.shape + (1,) * (hs.ndim - valid.ndim)), hs, 0)
            return treedef.unflatten([final.astype(h.dtype)]), hs.astype(y_dtype)

        # remat: one checkpoint around the whole form, which the backward pass recomputes
        return (jax.checkpoint(run) if remat else run)(params, xs, state, valid, resets)

    form.__name__ = f"{cell.name}_linear"
    return form


def _linear_state(cell: Cell, params: Any, state: Any, xs: jax.Array, leaves: list) -> tuple[jax.Array, Any]:
    """The state's one array ``h`` and the step's output dtype, after checking that ``y_t = h_t``."""
    where = f"{cell.name} (CellFast.linear)"
    if len(leaves) != 1:
        raise ValueError(f"{where}: a diagonal-linear cell's state is one array h, got {len(leaves)} arrays.")
    h = leaves[0]
    y = jax.eval_shape(cell.step, params, state, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))[1]
    if tuple(y.shape) != tuple(h.shape):
        raise ValueError(f"{where}: the linear form outputs y_t = h_t of shape {tuple(h.shape)}, but the step "
                         f"returns y of shape {tuple(y.shape)}; apply a read-out after the scan instead.")
    return h, y.dtype


def _linear_coefficients(cell: Cell, ab: Any, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """``(a, b)`` from ``CellFast.linear``, checked and broadcast to ``[T, *h.shape]``."""
    if not isinstance(ab, (tuple, list)) or len(ab) != 2:
        raise TypeError(f"{cell.name}: CellFast.linear must return a pair (a, b), got {type(ab).__name__}.")
    a, b = ab
    for name, c in (("a", a), ("b", b)):
        if not _broadcasts(jnp.shape(c), shape):
            raise ValueError(f"{cell.name}: CellFast.linear returned {name} of shape {jnp.shape(c)}, which does "
                             f"not broadcast to {shape} ([T, *batch, ...], the state's shape after time).")
    dtype = jnp.result_type(a, b)
    return jnp.broadcast_to(a, shape).astype(dtype), jnp.broadcast_to(b, shape).astype(dtype)


def _mask_linear(cell: Cell, params: Any, a: jax.Array, b: jax.Array, valid: jax.Array | None,
                 resets: jax.Array | None, trailing: int) -> tuple[jax.Array, jax.Array]:
    """Invalid steps keep the state (``a = 1, b = 0``); a reset starts from the initial state."""
    def flags(f):
        return f.reshape(f.shape + (1,) * trailing)

    if valid is not None:
        a = jnp.where(flags(valid), a, jnp.ones((), a.dtype))
        b = jnp.where(flags(valid), b, jnp.zeros((), b.dtype))
    if resets is not None:
        h_init = jax.tree.leaves(cell.initial_state(params, resets.shape[1:]))[0]
        b = jnp.where(flags(resets), a * h_init.astype(b.dtype) + b, b)
        a = jnp.where(flags(resets), jnp.zeros((), a.dtype), a)
    return a, b
