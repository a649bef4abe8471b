"""The damped linear solve inside an ELK step: a parallel Kalman filter and smoother.

The affine recurrences themselves live in :mod:`jlstm.core.linear` (with :class:`Algebra`, the
dense and diagonal Jacobian layouts).

Damped step (ELK, Gonzalez et al. 2024): the Levenberg–Marquardt problem

    min_s  Σ_t |s_t − A_t s_{t−1} − b_t|² + λ Σ_t |s_t − y_t|²

(``y`` the current iterate) is the posterior mean of a linear-Gaussian model with process
noise I and observation noise I/λ, found by the parallel Kalman filter and RTS smoother of
Särkkä & García-Fernández (2021), written here for an identity observation matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jlstm.core.linear import Algebra, prefix_scan, reverse_affine_scan


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

    out = prefix_scan(combine, elems)
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
