"""Newton's method with time split across the devices of a mesh (``jlstm.Newton(mesh=...)``).

Each device holds ``T/n`` consecutive steps. One Newton iteration on device ``d``:

1. receive the last state of device ``d−1`` (``ppermute``; device 0 uses ``s_0``) and
   evaluate ``f`` and its Jacobians on its own steps;
2. compose its steps' affine maps ``s ↦ A_t s + b_t`` with a local associative scan;
3. all-gather the n segment totals (one ``D×D`` map each, or its diagonal), compose the
   totals of the devices before it onto ``s_0`` to get its incoming state, and apply its
   prefix maps to that state. This is the associative scan's carry across devices.

The residual and the update's size are reduced with ``pmax``, so every device runs the same
number of iterations and judges convergence as :func:`jlstm.newton.step.progress` does unsplit.
Only the undamped methods (``deer``, ``quasi_deer``) are split this way. The solved trajectory
is then gathered (replicated), and readout, fallback and gradients are those of
:func:`jlstm.newton.method.newton_scan`, unsplit.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jlstm.core.linear import Algebra
from jlstm.newton.step import FlatStep, Structure, bounds, converged, evaluate, progress, residual, step_size


def sharded_forward(f: FlatStep, opts: Any, st: Structure, tol: float, clip: float) -> Callable:
    """``forward(params, xs, valid, s0, guess) -> (S, iterations, residual, error, converged)`` split over
    ``opts.mesh``, in the layout of ``st``."""
    mesh, axis = opts.mesh, opts.axis
    n = mesh.shape[axis]
    alg = st.alg

    def local(params, xs, valid, s0, guess):
        d = lax.axis_index(axis)
        lo, hi = bounds(f, st, s0, clip)                  # the cell's state box (see _newton_loop)
        s0, guess = st.to(s0), jnp.clip(st.to(guess), lo, hi)

        def shift(S):
            incoming = lax.ppermute(S[-1], axis, [(i, i + 1) for i in range(n - 1)])
            return jnp.concatenate([jnp.where(d == 0, s0, incoming)[None], S[:-1]], 0)

        def assess(S):
            Fs, _, J = evaluate(f, params, st.back(shift(S)), xs, valid, st.kind)
            Fs = st.to(Fs)
            return Fs, J, _pmax(residual(S, Fs), axis)

        def body(carry):
            k, S, Fs, J, _, step, _, _ = carry
            S_raw = _solve(alg, J, Fs - alg.mv(J, shift(S)), s0, d, axis, clip)
            S_raw = jnp.where(jnp.isfinite(S_raw), S_raw, S)
            S_new = jnp.clip(S_raw, lo, hi) if st.exact else S_raw
            new = assess(S_new)
            new_step = _pmax(step_size(S, S_raw), axis)
            return (k + 1, S_new) + new + (new_step,) + progress(new_step, step, new[2], st.exact, tol)

        def cond(carry):
            return (carry[0] < opts.max_iters) & ~carry[-1] & ~jnp.isnan(carry[4])

        first = assess(guess)
        nan, inf = jnp.asarray(jnp.nan, guess.dtype), jnp.asarray(jnp.inf, guess.dtype)
        start = (jnp.int32(0), guess) + first + (nan, inf, converged(first[2], inf, tol))
        k, S, _, _, r, _, err, ok = lax.while_loop(cond, body, start)
        return st.back(S), k, r, err, ok

    def forward(params, xs, valid, s0, guess):
        T = xs.shape[0]
        pad = -T % n
        if pad:
            xs, valid, guess = (jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)])
                                for a in (xs, valid, guess))
        specs = (P(), P(axis), P(axis), P(), P(axis))
        args = [jax.reshard(a, NamedSharding(mesh, spec)) for a, spec in
                zip((params, xs, valid, s0, guess), specs)]
        run = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=(P(axis), P(), P(), P(), P()),
                            check_vma=False)
        S, k, r, err, ok = run(*args)
        return jax.reshard(S, NamedSharding(mesh, P()))[:T], k, r, err, ok

    return forward


def _pmax(r: jax.Array, axis: str) -> jax.Array:
    """The max over the devices of a per-device max that is NaN where not finite: a NaN on any device wins."""
    r = lax.pmax(jnp.where(jnp.isnan(r), jnp.inf, r), axis)
    return jnp.where(jnp.isinf(r), jnp.nan, r)


def _solve(alg: Algebra, A: jax.Array, b: jax.Array, s0: jax.Array, d: jax.Array, axis: str,
           clip: float) -> jax.Array:
    """``s_t = A_t s_{t-1} + b_t`` over all devices' steps, given this device's ``A, b`` and ``s_0``."""

    def compose(e1, e2):
        return alg.mm(e2[0], e1[0]), alg.mv(e2[0], e1[1]) + e2[1]

    Ac, bc = lax.associative_scan(compose, (A, b), axis=0)
    totals_A = lax.all_gather(Ac[-1], axis)            # [n, B, D(, D)]
    totals_b = lax.all_gather(bc[-1], axis)

    def carry_in(s, inp):
        i, A_i, b_i = inp
        return jnp.where(i < d, alg.mv(A_i, s) + b_i, s), None

    n = totals_b.shape[0]
    s_in, _ = lax.scan(carry_in, s0, (jnp.arange(n), totals_A, totals_b))
    return jnp.clip(alg.mv(Ac, s_in[None]) + bc, -clip, clip)
