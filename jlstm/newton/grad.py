"""Gradients of a Newton-solved trajectory by the implicit-function theorem.

At the solution ``s_t = f(s_{t-1}, x_t; θ)`` for all t. Given the cotangent ``ḡ_t`` of each
``s_t``, the adjoint is one transposed linear recurrence, run backwards in time,

    λ_T = ḡ_T,    λ_t = ḡ_t + J_{t+1}ᵀ λ_{t+1},    J_t = ∂f/∂s (s_{t-1}, x_t),

solved by an associative scan; then ``θ̄ = Σ_t (∂f/∂θ)ᵀ λ_t``, ``x̄_t = (∂f/∂x_t)ᵀ λ_t`` and
``s̄_0 = J_1ᵀ λ_1`` come from one vectorised VJP of ``f``. The Newton iterations are never
differentiated. The dense Jacobians are formed ``chunk`` steps at a time (a reverse
``lax.scan`` over chunks carries ``J_{t+1}ᵀ λ_{t+1}`` across chunk borders), so under remat
the memory is O(chunk·D²) instead of O(T·D²).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jlstm.core.linear import reverse_affine_scan
from jlstm.newton.step import Structure, evaluate

DENSE = Structure("dense")


def implicit_solve(f: Callable, forward: Callable, chunk: int, st: Structure, *,
                   zero_on_failure: bool) -> Callable:
    """Wrap ``forward(params, xs, valid, s0, guess) -> (S, iterations, residual, error, converged)`` in a
    custom VJP.

    The VJP treats ``S`` as the exact solution of ``S_t = f(S_{t-1}, x_t)``; its adjoint recurrence
    keeps the Jacobians of ``st``, which must be exact (dense, or a cell's exact blocks). With
    ``zero_on_failure`` the gradients of an unconverged solve are zeros (the caller then
    differentiates its sequential fallback instead), so NaNs of a diverged iterate never leak.
    """

    @jax.custom_vjp
    def solve(params, xs, valid, s0, guess):
        return forward(params, xs, valid, s0, guess)

    def fwd(params, xs, valid, s0, guess):
        out = forward(params, xs, valid, s0, guess)
        return out, (params, xs, valid, s0, out[0], out[4])

    def bwd(res, cot):
        params, xs, valid, s0, S, ok = res
        grads = adjoint(f, params, xs, valid, s0, S, cot[0], chunk, st)
        if zero_on_failure:
            grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.zeros_like(g)), grads)
        dparams, dxs, ds0 = grads
        return dparams, dxs, None, ds0, None

    solve.defvjp(fwd, bwd)
    return solve


def adjoint(f: Callable, params: Any, xs: jax.Array, valid: jax.Array, s0: jax.Array, S: jax.Array,
            g: jax.Array, chunk: int, st: Structure = DENSE) -> tuple[Any, jax.Array, jax.Array]:
    """``(θ̄, x̄ [T,B,I], s̄_0 [B,D])`` for the cotangent ``g [T,B,D]`` of the trajectory ``S``."""
    T = S.shape[0]
    n = -(-T // chunk)
    pad = n * chunk - T
    s_prev = jnp.concatenate([s0[None], S[:-1]], 0)

    def split(a):                                     # pad with invalid steps (identity, zero cotangent)
        a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
        return a.reshape((n, chunk) + a.shape[1:])

    alg = st.alg

    def one_chunk(carry, inp):
        dparams, lam_next = carry                     # lam_next = J_{t+1}ᵀ λ_{t+1} from the later chunk
        sp, x, v, gc = inp
        _, _, J = evaluate(f, params, sp, x, v, st.kind)
        A = jnp.concatenate([alg.t(J[1:]), jnp.zeros_like(J[:1])], 0)
        lam = st.back(reverse_affine_scan(alg, A, st.to(gc.at[-1].add(lam_next))))
        _, vjp = jax.vjp(lambda p, s, xx: evaluate(f, p, s, xx, v)[0], params, sp, x)
        dp, dsp, dx = vjp(lam)
        return (jax.tree.map(jnp.add, dparams, dp), dsp[0]), dx

    zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros_like(s0))
    (dparams, ds0), dxs = lax.scan(one_chunk, zeros, (split(s_prev), split(xs), split(valid), split(g)),
                                   reverse=True)
    return dparams, dxs.reshape((n * chunk,) + xs.shape[1:])[:T], ds0
