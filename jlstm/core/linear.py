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

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jlstm.core.plan import current_plan
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
        """``m⁻¹ x`` for a matrix ``x``."""
        return jnp.linalg.solve(m, x) if self.dense else x / m

    def solve_v(self, m: jax.Array, v: jax.Array) -> jax.Array:
        """``m⁻¹ v`` for a vector ``v``."""
        return jnp.linalg.solve(m, v[..., None])[..., 0] if self.dense else v / m


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
        associative = current_plan().associative
    T = a.shape[0]
    h0 = jnp.broadcast_to(h0, a.shape[1:]).astype(b.dtype)
    if T == 0:
        return b
    if associative:  # h0 folded into the first step, as affine_scan expects
        return affine_scan(Algebra(dense=False), a, b.at[0].add(a[0] * h0), associative=True)
    return blocked_affine_scan(Algebra(dense=False), a, b, h0)
