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

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jlstm.core.time import block_count, join_blocks, split_blocks, sqrt_length


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
    if m.shape[-1] <= XLA_SOLVE_MAX or jax.default_backend() == "cpu":
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
        associative = jax.default_backend() != "cpu"
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
        associative = jax.default_backend() != "cpu"
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


def linear_recurrence(a: jax.Array, b: jax.Array, h0: jax.Array, *,
                      associative: bool | None = None) -> jax.Array:
    """All ``h_t = a_t h_{t-1} + b_t`` along axis 0, from ``h0`` (any sign): ``[T, ...]``.

    Two evaluations of the compositions ``(A, B) ∘ (a, b) = (A a, B a + b)``:

    * ``associative=True``: ``lax.associative_scan`` over all T steps, depth ``O(log T)``;
      the default on GPU and TPU.
    * ``associative=False`` (the default on CPU): blocks of about √T steps. A loop of √T
      steps composes every block at once (vectorised over the blocks), a loop over the
      blocks carries ``h`` from block to block, and a last loop of √T steps fills the blocks
      in from their starting states, again all blocks at once. XLA:CPU takes seconds to
      compile ``associative_scan`` for any T and runs it slower than this.
    """
    if associative is None:
        associative = jax.default_backend() != "cpu"
    T = a.shape[0]
    h0 = jnp.broadcast_to(h0, a.shape[1:]).astype(b.dtype)
    if T == 0:
        return b
    if associative:  # h0 folded into the first step, as affine_scan expects
        return affine_scan(Algebra(dense=False), a, b.at[0].add(a[0] * h0), associative=True)
    return blocked_affine_scan(Algebra(dense=False), a, b, h0)
