"""The linear solves inside a Newton step: affine recurrences and a damped (Kalman) smoother.

Every solver works on a time-major stack ``[T, B, ...]``. The Kalman smoother runs in O(log T)
depth with ``lax.associative_scan``; the affine recurrence does too on GPU and TPU, and in blocks
of about √T steps on the CPU (:func:`blocked_affine_scan`). Two Jacobian layouts share the code
through :class:`Algebra`:

* ``dense``: ``J`` is ``[T, B, D, D]`` (DEER, ELK);
* ``diag``: ``J`` is ``[T, B, D]``, the diagonal only (quasi-DEER, quasi-ELK), so every
  "matrix" product is elementwise and memory stays O(T·D).

Affine recurrence (forward): ``s_t = A_t s_{t-1} + b_t``, with ``s_0`` folded into the first
element by the caller (``A_1 = 0``). Its associative element is the map ``(A, b)``; two maps
compose as ``(A_2, b_2) ∘ (A_1, b_1) = (A_2 A_1, A_2 b_1 + b_2)``.

Damped step (ELK, Gonzalez et al. 2024): the Levenberg–Marquardt problem

    min_s  Σ_t |s_t − A_t s_{t−1} − b_t|² + λ Σ_t |s_t − y_t|²

(``y`` the current iterate) is the posterior mean of a linear-Gaussian model with process
noise I and observation noise I/λ, found by the parallel Kalman filter and RTS smoother of
Särkkä & García-Fernández (2021), written here for an identity observation matrix.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


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
        associative = jax.default_backend() != "cpu"
    if not associative:
        return blocked_affine_scan(alg, A, b, jnp.zeros_like(b[0]))

    def compose(e1, e2):
        A1, b1 = e1
        A2, b2 = e2
        return alg.mm(A2, A1), alg.mv(A2, b1) + b2

    return lax.associative_scan(compose, (A, b), axis=0)[1]


def block_length(T: int) -> int:
    """Steps per block of :func:`blocked_affine_scan`: about √T, so all of its loops are short."""
    return max(1, min(T, math.isqrt(max(T - 1, 0)) + 1))


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
    L = block_length(T)
    n = -(-T // L)
    pad = n * L - T
    if pad:  # identity maps (A = I, b = 0) fill the last block
        A = jnp.concatenate([A, alg.eye_like(jnp.zeros((pad,) + A.shape[1:], A.dtype))])
        b = jnp.concatenate([b, jnp.zeros((pad,) + b.shape[1:], b.dtype)])

    def blocks(x):  # [n*L, ...] -> [L, n, ...]: the step within the block leads
        return jnp.swapaxes(x.reshape((n, L) + x.shape[1:]), 0, 1)

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
    return jnp.swapaxes(s, 0, 1).reshape((n * L,) + s.shape[2:])[:T]


def reverse_affine_scan(alg: Algebra, A: jax.Array, b: jax.Array) -> jax.Array:
    """Solve ``u_t = A_t u_{t+1} + b_t`` backwards in time (``A_T`` must be 0)."""
    return jnp.flip(affine_scan(alg, jnp.flip(A, 0), jnp.flip(b, 0)), 0)


def damped_solve(alg: Algebra, A: jax.Array, b: jax.Array, y: jax.Array, damping: float) -> jax.Array:
    """The ELK step: the minimiser of ``Σ|s_t − A_t s_{t−1} − b_t|² + λ Σ|s_t − y_t|²``.

    ``A_1`` must be 0 (``s_0`` folded into ``b_1``). ``damping`` λ = 0 gives the undamped
    (DEER) solution; a larger λ keeps the step closer to ``y``.
    """
    kappa = damping / (1.0 + damping)                 # Kalman gain K = κ I (H = Q = I, R = I/λ)
    innov = kappa * (y - b)
    eye = alg.eye_like(A)
    elems = ((1.0 - kappa) * A,                        # A_k = (I − K) F
             b + innov,                                # b_k = u + K (y − u)
             (1.0 - kappa) * eye,                      # C_k = (I − K) Q
             alg.mv(alg.t(A), innov),                  # η_k = Fᵀ K (y − u)
             kappa * alg.mm(alg.t(A), A))              # J_k = Fᵀ K F
    means, covs = _kalman_filter(alg, elems)
    return _rts_smoother(alg, A, b, means, covs)


def _kalman_filter(alg: Algebra, elems: tuple) -> tuple[jax.Array, jax.Array]:
    """Filtered means and covariances from the parallel filtering elements."""

    def combine(ei, ej):
        Ai, bi, Ci, etai, Ji = ei
        Aj, bj, Cj, etaj, Jj = ej
        eye = alg.eye_like(Ci)
        m = eye + alg.mm(Ci, Jj)                       # I + C_i J_j
        n = eye + alg.mm(Jj, Ci)                       # I + J_j C_i
        Aj_minv = alg.t(alg.solve_m(alg.t(m), alg.t(Aj)))          # A_j (I + C_i J_j)⁻¹
        Ai_t_ninv = alg.t(alg.solve_m(alg.t(n), Ai))               # A_iᵀ (I + J_j C_i)⁻¹
        return (alg.mm(Aj_minv, Ai),
                alg.mv(Aj_minv, bi + alg.mv(Ci, etaj)) + bj,
                alg.mm(alg.mm(Aj_minv, Ci), alg.t(Aj)) + Cj,
                alg.mv(Ai_t_ninv, etaj - alg.mv(Jj, bi)) + etai,
                alg.mm(alg.mm(Ai_t_ninv, Jj), Ai) + Ji)

    out = lax.associative_scan(combine, elems, axis=0)
    return out[1], out[2]


def _rts_smoother(alg: Algebra, A: jax.Array, b: jax.Array, means: jax.Array, covs: jax.Array) -> jax.Array:
    """Smoothed means: ``x_k = E_k x_{k+1} + g_k``, a backward affine recurrence."""
    F = A[1:]                                          # F_{k+1}
    u = b[1:]
    P, m = covs[:-1], means[:-1]
    S = alg.mm(alg.mm(F, P), alg.t(F)) + alg.eye_like(P)      # F P Fᵀ + Q
    E = alg.t(alg.solve_m(S, alg.mm(F, P)))           # P Fᵀ S⁻¹ (S, P symmetric)
    g = m - alg.mv(E, alg.mv(F, m) + u)
    E = jnp.concatenate([E, jnp.zeros_like(covs[-1:])], 0)
    g = jnp.concatenate([g, means[-1:]], 0)
    return reverse_affine_scan(alg, E, g)
