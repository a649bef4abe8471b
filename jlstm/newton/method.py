"""Parallel-in-time evaluation of any cell: Newton's method on the whole trajectory.

The states of a sequence solve ``s_t = f(s_{t-1}, x_t)`` for all t at once. Newton's method
linearises around a guess, ``s_t ≈ J_t s_{t-1} + (f(s̄_{t-1}) − J_t s̄_{t-1})``, and each
linear recurrence is solved by an associative scan in O(log T) depth:

* ``"deer"`` (Lim et al., ICLR 2024): dense Jacobians ``J_t = ∂f/∂s`` from ``jax.jacfwd``;
  O(T·D²) memory and O(T·D³) work per iteration.
* ``"quasi_deer"`` (Gonzalez et al., NeurIPS 2024): ``diag(J_t)`` only; O(T·D) memory.
* ``"elk"`` / ``"quasi_elk"``: the same steps with Levenberg–Marquardt damping λ, solved as a
  parallel Kalman smoother; it stays stable where the undamped iteration blows up.

A trajectory counts as converged when its estimated distance to the true solution is below
``tol`` (:func:`progress`): a per-step residual alone does not bound that distance when the
dynamics contract slowly. A NaN counts as not converged. On failure the default is to return the
sequential scan's answer (``lax.cond``), never a wrong trajectory.
Gradients use the implicit-function theorem at the solution (:mod:`jlstm.newton.grad`): one
transposed linear recurrence, never a derivative through the Newton iterations.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer

from jlstm.core.linear import affine_scan, constant_affine_scan
from jlstm.core.plan import current_plan
from jlstm.newton import grad as _deer_grad
from jlstm.newton.linear import damped_solve
from jlstm.newton.resets import append_resets, with_reset_input
from jlstm.newton.shard import sharded_forward
from jlstm.newton.step import (
    FlatState,
    Structure,
    bounds,
    evaluate,
    flat_step,
    progress,
    residual,
    step_size,
    structure,
)
from jlstm.newton.step import converged as _converged
from jlstm.strategies.base import NO_REGULARISERS, Request, Strategy
from jlstm.strategies.sequential import Sequential

METHODS = ("deer", "quasi_deer", "elk", "quasi_elk")
ON_FAILURE = ("fallback", "raise", "ignore")
QUASI = ("auto", "mean", "blocks", "diagonal")
MEAN_MAX_STATE = 128
"""``quasi="auto"`` keeps the time-averaged Jacobian for flat states up to this size (an LSTM up to
H = 64): its solve costs ``T·B·D²·log₂T`` multiply-adds an iteration, the diagonal's ``T·B·D``."""
GIVE_UP_AFTER = 2
"""``quasi="auto"`` leaves the time-averaged Jacobian after this many updates in a row that did not shrink."""
CLIP = 1e8                                           # iterates are clipped to ±CLIP, as in the ELK code
DENSE_CHUNK_ELEMENTS = 1 << 25                       # the gradient's dense Jacobians: 128 MiB of f32 a chunk


class NewtonResult(enum.IntEnum):
    """How a Newton solve ended: ``NewtonInfo.result`` holds one of these codes as an int32 array.

    Example:
      >>> jlstm.NewtonResult(0).name, int(jlstm.NewtonResult.max_iters)
      ('converged', 1)
    """

    converged = 0
    """The estimated error of the trajectory is within ``tol``."""
    max_iters = 1
    """``max_iters`` iterations ran without reaching ``tol``."""
    non_finite = 2
    """The step's values or residual were not finite (NaN or inf)."""


class _SeenThroughJax(type):
    """``isinstance`` also recognises the error when JAX has wrapped it (see :class:`NewtonConvergenceError`)."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return type.__instancecheck__(cls, obj) or (
            isinstance(obj, jax.errors.JaxRuntimeError) and f"{cls.__name__}: " in str(obj))


class NewtonConvergenceError(RuntimeError, metaclass=_SeenThroughJax):
    """A Newton method did not converge and ``on_failure="raise"`` was asked for.

    Called eagerly, :func:`jlstm.scan` raises it itself. Inside ``jax.jit`` (or under a transform)
    the check runs in the compiled program through ``jax.debug.callback``, and JAX re-raises what a
    callback raises as a ``jax.errors.JaxRuntimeError`` whose message holds this error's. Such an
    error is an instance of this class for ``isinstance`` (and so for ``pytest.raises``);
    ``except jlstm.NewtonConvergenceError`` catches only the eager one, since ``except`` compares
    types directly: catch ``jax.errors.JaxRuntimeError`` too under ``jit``.
    """


@dataclasses.dataclass(frozen=True, eq=False)
class Newton(Strategy):
    """Options of a parallel-in-time Newton method: pass as ``jlstm.scan(..., method=Newton(...))``.

    Args:
      method: ``"deer"`` (dense Jacobians), ``"quasi_deer"`` (an approximation of them: see
        ``quasi``), ``"elk"`` or ``"quasi_elk"`` (damped; dense, or the blocks or the diagonal).
      max_iters: Newton iterations at most. Undamped methods are exact after T iterations
        (step t is exact after t), so ``max_iters >= T`` always converges in exact arithmetic.
      tol: residual at which the trajectory counts as converged; ``None`` picks 1e-9 for
        float64, 1e-5 for float32 and 1e-2 for 16-bit states.
      damping: ELK's λ (``1/σ²``), the initial one when ``adapt``; ``None`` means 1.0 for the
        ELK methods. Must be ``None`` or 0 for the DEER methods.
      init: the initial guess, ``None`` (the initial state at every step) or a trajectory
        (the state pytree with a leading T axis, e.g. ``info.trajectory`` of a previous call:
        a warm start).
      on_failure: ``"fallback"`` (return the sequential scan's result), ``"raise"`` (raise
        :class:`NewtonConvergenceError` at run time, also under ``jit``) or ``"ignore"``.
      quasi: the Jacobian the quasi methods keep. ``"mean"``: each sequence's time-averaged dense
        Jacobian (a chord method, as ParaDiag's time-averaged Jacobians; the linear solve is recursive
        doubling with one matrix, :func:`jlstm.core.linear.constant_affine_scan`); ``"blocks"``: each
        unit's exact ``k×k`` block where the cell declares them (``CellFast.jacobian_blocks``: 2×2
        ``(h, c)`` for the LSTM), else the diagonal; ``"diagonal"``: the diagonal, as in Gonzalez
        et al. ``"auto"`` (the default): ``"mean"`` for ``quasi_deer`` on states of at most
        :data:`MEAN_MAX_STATE` numbers without ``mesh``, ``"blocks"`` otherwise (and always for
        ``quasi_elk``). Measured (untrained ``lstm(16)``, T=2048, inputs 1-32):
        ``python -m benchmarks.quasi_deer_blocks``.
      blocks: the older spelling: ``blocks=False`` is ``quasi="diagonal"``.
      adapt, shrink, grow: ELK only. With ``adapt`` (the default) a step is taken only if it
        lowers the squared residual, and λ is multiplied by ``shrink`` after a taken step and by
        ``grow`` after a refused one (Levenberg–Marquardt). Without it λ stays fixed and every
        step is taken, as in the ELK paper: where the adaptive rule stalls (measured: a trained
        LSTM, whose first steps raise the residual), a fixed small λ can still converge.
      mesh, axis: a ``jax.sharding.Mesh`` and the name of its axis to split time over: each
        device solves ``T/n`` steps and the segments are joined by the associative scan's
        carry (:mod:`jlstm.newton.shard`; ``deer`` and ``quasi_deer`` only).

    Example:
      >>> cell = jlstm.gru(8)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jnp.ones((100, 3))
      >>> _, ys, info = jlstm.scan(cell, params, xs, method=jlstm.Newton("quasi_deer", max_iters=50),
      ...                          return_info=True)
    """

    method: str = "deer"
    max_iters: int = 100
    tol: float | None = None
    damping: float | None = None
    init: Any = None
    on_failure: str = "fallback"
    blocks: bool = True
    adapt: bool = True
    shrink: float = 0.1
    grow: float = 10.0
    mesh: Any = None
    axis: str = "time"
    quasi: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"jlstm.Newton: method must be one of {METHODS}, got {self.method!r}.")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"jlstm.Newton: on_failure must be one of {ON_FAILURE}, got {self.on_failure!r}.")
        if not isinstance(self.max_iters, int) or self.max_iters < 0:
            raise ValueError(f"jlstm.Newton: max_iters must be an int >= 0, got {self.max_iters!r}.")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"jlstm.Newton: tol must be > 0 (or None for the dtype's default), got {self.tol!r}.")
        if self.damping is not None and not self.damping >= 0:
            raise ValueError(f"jlstm.Newton: damping must be >= 0, got {self.damping!r}.")
        if self.mesh is not None and (self.damped or self.axis not in self.mesh.axis_names):
            raise ValueError(f"jlstm.Newton: mesh= splits time for method 'deer' or 'quasi_deer' over an axis "
                             f"of the mesh; got method={self.method!r}, axis={self.axis!r}, mesh axes "
                             f"{tuple(self.mesh.axis_names)}.")
        if self.quasi not in QUASI:
            raise ValueError(f"jlstm.Newton: quasi must be one of {QUASI}, got {self.quasi!r}.")
        if not self.blocks and self.quasi not in ("auto", "diagonal"):
            raise ValueError(f"jlstm.Newton: blocks=False means quasi='diagonal'; it contradicts "
                             f"quasi={self.quasi!r}. Pass only quasi=.")
        if self.quasi == "mean" and (self.method == "quasi_elk" or self.mesh is not None):
            raise ValueError("jlstm.Newton: quasi='mean' serves method='quasi_deer' without mesh=; got "
                             f"method={self.method!r}{', mesh=' if self.mesh is not None else ''}. Use "
                             "quasi='blocks' or 'diagonal' there.")
        if self.damping and not self.damped:
            raise ValueError(f"jlstm.Newton: damping={self.damping} needs method='elk' or 'quasi_elk', "
                             f"got method={self.method!r}.")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.method

    def _key(self) -> tuple:
        # shallow (astuple would deep-copy the mesh); a warm start, an array, has no value hash
        fields = tuple(getattr(self, f.name) for f in dataclasses.fields(self)) if self.init is None else None
        return fields if fields is not None else (id(self),)

    def __eq__(self, other: object) -> bool:
        """Equal by value (a Newton with a warm-start trajectory equals only itself)."""
        return isinstance(other, Newton) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def evaluate(self, cell: Any, params: Any, xs: jax.Array, state: Any,
                 request: Request) -> tuple[Any, jax.Array, NewtonInfo]:
        """Newton's method over the whole trajectory; on failure (``on_failure="fallback"``) the
        caller's :class:`jlstm.Sequential` loop, with the caller's options, gives the answer."""
        loop = request.loop

        def fallback():
            return loop.evaluate(cell, params, xs, state, request)[:2]

        unroll = request.plan.unroll if loop.unroll is None else loop.unroll
        if request.resets is not None:
            cell, xs = with_reset_input(cell), append_resets(xs, request.resets)
        return newton_scan(cell, params, xs, state, request.valid, self, unroll=unroll, remat=loop.remat,
                           fallback=fallback)

    @property
    def damped(self) -> bool:
        return self.method in ("elk", "quasi_elk")

    @property
    def jacobian(self) -> str:
        return "diag" if self.method.startswith("quasi") else "dense"

    def quasi_jacobian(self, state_size: int) -> str:
        """What ``quasi="auto"`` (and ``blocks``) mean for a flat state of ``state_size`` numbers."""
        if not self.blocks:
            return "diagonal"
        if self.quasi != "auto":
            return self.quasi
        mean = self.method == "quasi_deer" and self.mesh is None and state_size <= MEAN_MAX_STATE
        return "mean" if mean else "blocks"

    def lam(self) -> float:
        return (1.0 if self.damping is None else float(self.damping)) if self.damped else 0.0

    @property
    def eager_only(self) -> bool:
        """A solve that raises on failure (eagerly, the error itself; traced, a callback's) or starts warm
        (eagerly, from the caller's concrete trajectory) runs each of its scans' eager handling."""
        return self.on_failure == "raise" or self.init is not None

    def tolerance(self, dtype: Any) -> float:
        if self.tol is not None:
            return float(self.tol)
        bits = jnp.finfo(dtype).bits
        return 1e-9 if bits >= 64 else 1e-5 if bits >= 32 else 1e-2


class NewtonInfo(NamedTuple):
    """What a Newton method did.

    Attributes:
      iterations: Newton iterations run (int32).
      residual: the final residual ``max |s_t − f(s_{t−1})| / (1 + |f(s_{t−1})|)``.
      converged: the trajectory is within ``tol`` of the true solution, as estimated by
        ``error`` (False for NaN; see :func:`jlstm.newton.step.progress`). With
        ``on_failure="fallback"`` a False here means the returned values are the sequential scan's.
      trajectory: the Newton trajectory (state pytree, leading axis T, in processing order,
        i.e. time-reversed under ``reverse=True``), without gradient: pass it as
        ``Newton(init=...)`` to warm-start the next call.
      result: a :class:`NewtonResult` code (int32): converged, max_iters or non_finite.
      error: the estimated distance ``max |s_t − s*_t| / (1 + |s_t|)`` of the trajectory to the
        true solution ``s*``; ``inf`` where it could not be estimated yet.
    """

    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    trajectory: Any
    result: jax.Array
    error: jax.Array


def as_newton(method: Any) -> Newton:
    """A :class:`Newton` from a method name or any object with ``.name`` (and Newton's fields)."""
    if isinstance(method, Newton):
        return method
    if isinstance(method, str):
        return Newton(method=method)
    raise TypeError(f"newton_scan: method must be one of {METHODS} or a jlstm.Newton, got {method!r}.")


def newton_scan(cell: Any, params: Any, xs: jax.Array, state: Any, valid: jax.Array | None, method: Any, *,
                unroll: int | bool = 1, remat: Any = None,
                fallback: Callable[[], tuple[Any, jax.Array]] | None = None) -> tuple[Any, jax.Array, NewtonInfo]:
    """Evaluate ``cell`` over time-major ``xs [T, *batch, I]`` by a parallel Newton method.

    ``xs`` is already zeroed at invalid steps and in processing order (see :func:`jlstm.scan`).
    Invalid steps keep the state and output zeros. ``remat`` (``"segment"`` or an int)
    bounds the memory of the gradient's dense Jacobians to one segment at a time.

    ``fallback()`` gives ``(final_state, ys)`` where the method fails and ``on_failure="fallback"``;
    ``None`` means a plain sequential loop with ``unroll`` and ``remat``.

    Returns ``(final_state, ys [T, *batch, O], NewtonInfo)``.
    """
    opts = as_newton(method)
    T, batch, I = xs.shape[0], tuple(xs.shape[1:-1]), xs.shape[-1]
    spec = FlatState.of(state, batch)
    B = math.prod(batch)
    x = xs.reshape((T, B, I))
    v = jnp.ones((T, B), bool) if valid is None else valid.reshape((T, B))
    s0 = spec.ravel(state)
    tol = opts.tolerance(spec.dtype)
    if T == 0:
        y = jax.eval_shape(cell.step, params, state, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))[1]
        empty = spec.unravel(jnp.zeros((0,) + s0.shape, s0.dtype), (0,))
        zero = jnp.zeros((), spec.dtype)
        info = NewtonInfo(jnp.int32(0), zero, jnp.bool_(True), empty, jnp.int32(NewtonResult.converged), zero)
        return state, jnp.zeros((0,) + y.shape, y.dtype), info
    guess = jnp.broadcast_to(s0, (T, B, spec.size)) if opts.init is None else spec.ravel(opts.init, (T,))
    f = flat_step(cell, spec)
    st = structure(cell, spec, dense=opts.jacobian == "dense", quasi=opts.quasi_jacobian(spec.size))
    if opts.mesh is None and st.kind == "mean" and opts.quasi == "auto":
        forward = functools.partial(_mean_then_blocks, f, opts, st, structure(cell, spec, False, "blocks"), tol)
    elif opts.mesh is None:
        forward = functools.partial(_newton_loop, f, opts, st, tol)
    else:
        forward = sharded_forward(f, opts, st, tol, CLIP)
    adjoint_st = st if st.exact else Structure("dense")
    solve = _deer_grad.implicit_solve(f, forward, _chunk(T, remat, B * spec.size ** 2), adjoint_st,
                                      zero_on_failure=opts.on_failure == "fallback")
    traj, iters, residual, error, converged = solve(params, x, v, s0, lax.stop_gradient(guess))
    S, ys, _ = evaluate(f, params, _shift(s0, traj), x, v)
    final = spec.unravel(S[-1])
    ys = ys.reshape((T,) + batch + ys.shape[2:])
    if opts.on_failure == "raise":
        _raise(converged, iters, error, method=opts.method, tol=tol)
    elif opts.on_failure == "fallback":
        final, ys = lax.cond(converged, lambda: (final, ys), fallback or functools.partial(
            _sequential, cell, params, xs, state, valid, unroll, remat))
    result = jnp.where(converged, NewtonResult.converged,
                       jnp.where(jnp.isfinite(residual), NewtonResult.max_iters, NewtonResult.non_finite))
    info = NewtonInfo(iters, residual, converged, spec.unravel(lax.stop_gradient(S), (T,)),
                      result.astype(jnp.int32), error)
    return final, ys, info


def _chunk(T: int, remat: Any, per_step: int) -> int:
    """Steps per chunk of the gradient's dense Jacobians (``per_step`` = B·D² elements a step).

    All of T, or a remat segment, and never more than :data:`DENSE_CHUNK_ELEMENTS` elements, so
    that the gradient of a long sequence (quasi-DEER at T = 1M) stays within memory.
    """
    if remat is None or remat == "step":
        steps = T
    else:
        steps = min(T, math.isqrt(max(T - 1, 0)) + 1 if remat == "segment" else int(remat))
    return max(1, min(steps, DENSE_CHUNK_ELEMENTS // max(1, per_step)))


def _shift(s0: jax.Array, traj: jax.Array) -> jax.Array:
    """``s_{t-1}`` for every t: the initial state, then the trajectory without its last step."""
    return jnp.concatenate([s0[None], traj[:-1]], 0)


def _mean_then_blocks(f, opts: Newton, first: Structure, then: Structure, tol: float,
                      params, xs, valid, s0, guess):
    """``quasi="auto"``: iterate with the time-averaged Jacobian (``first``) while its updates shrink; after
    :data:`GIVE_UP_AFTER` updates in a row that did not, or at ``max_iters``, go on with the blocks
    (``then``) from whichever of its last iterate and ``guess`` has the smaller residual.

    The time-averaged Jacobian serves a weakly driven network well (measured: an untrained LSTM at
    small inputs, 9-17 iterations against 56-300 for the blocks) and a strongly driven one badly (its
    steps' Jacobians differ too much from their mean: weights ×3, or the sLSTM's exponential gates,
    diverged), which the first update that fails to shrink shows. The iterations of both phases count
    against ``max_iters``."""
    S, k, r, err, ok = _newton_loop(f, opts, first, tol, params, xs, valid, s0, guess, give_up=True)

    def switch():
        r_guess = residual(guess, evaluate(f, params, _shift(s0, guess), xs, valid)[0])
        start = jnp.where(r < r_guess, S, guess)                  # a NaN residual restarts from the guess
        return _newton_loop(f, opts, then, tol, params, xs, valid, s0, start, k0=k)

    return lax.cond(ok, lambda: (S, k, r, err, ok), switch)


def _newton_loop(f, opts: Newton, st: Structure, tol: float, params, xs, valid, s0, guess, *,
                 give_up: bool = False, k0: Any = 0):
    """Newton iterations from ``guess`` (counted from ``k0``) until converged (:func:`progress`), or with
    ``give_up`` until they stop shrinking (:func:`_iterate`): ``(S, iterations, residual, error, converged)``.

    The solves run in the layout of ``st``. A value of an update that is not finite (as DEER's first
    step on a saturated LSTM) keeps the last iterate's, so the exact steps before it are kept. The
    damped methods adapt λ as Levenberg–Marquardt does (a step that lowers ``Σ|s_t − f(s_{t−1})|²`` is
    taken and λ shrinks, else λ grows), and end with one undamped step: its size estimates the error
    that damping cannot shrink, and it is kept where it lowers the residual (measured, float32, decays
    near 1: ELK's trajectory was 1e-5 off, the undamped step's 2e-6). Exact Jacobians project (:func:`_project`).
    """
    alg, damped, (lo, hi) = st.alg, opts.damped, bounds(f, st, s0, CLIP)
    s0, exact = st.to(s0), st.exact and not damped

    def assess(S):
        Fs, _, J = evaluate(f, params, st.back(_shift(s0, S)), xs, valid, st.kind)
        Fs = st.to(Fs)
        return Fs, J, residual(S, Fs), jnp.sum((S - Fs) ** 2)

    def update(S, Fs, J, lam, damp=damped):
        if st.kind == "mean":
            S_new = _hold_invalid(S + _mean_correction(J, Fs - S), valid, s0)
        else:
            b = (Fs - alg.mv(J, _shift(s0, S))).at[0].set(Fs[0])     # s_0 folded into step 1
            A = J.at[0].set(0)
            S_new = damped_solve(alg, A, b, S, lam) if damp else affine_scan(alg, A, b)
        return jnp.clip(jnp.where(jnp.isfinite(S_new), S_new, S), -CLIP, CLIP)

    def body(carry):
        k, S, Fs, J, r, merit, lam, step = carry[:8]
        S_new = _project(S_raw := update(S, Fs, J, lam), lo, hi, st.exact)
        new = (S_new,) + assess(S_new)
        new_step = step_size(S, S_raw)                # the update before the projection: its error bound holds
        new = new + (new_step,) + progress(new_step, step, new[3], exact, tol)
        if not damped or not opts.adapt:
            return (k + 1,) + new[:5] + (lam,) + new[5:]
        take = new[4] < merit                         # False for NaN
        kept = tuple(jnp.where(take, n, o) for n, o in zip(new, carry[1:6] + carry[7:]))
        lam = jnp.where(take, lam * opts.shrink, lam * opts.grow)
        return (k + 1,) + kept[:5] + (lam,) + kept[5:]

    def cond(carry):
        k, r, ok = carry[0], carry[4], carry[-1]
        return (k < opts.max_iters) & ~ok & ~jnp.isnan(r)    # a NaN residual stops the loop, unconverged

    guess = jnp.clip(st.to(guess), lo, hi)
    first = assess(guess)
    inf, lam, nan = (jnp.asarray(v, guess.dtype) for v in (jnp.inf, opts.lam(), jnp.nan))
    start = (jnp.asarray(k0, jnp.int32), guess) + first + (lam, nan, inf, _converged(first[2], inf, tol))
    k, S, Fs, J, r, merit, _, _, err, ok = _iterate(cond, body, start, give_up)
    if damped:                                        # verify with one undamped step (see the docstring)
        S_p = _project(P_raw := update(S, Fs, J, 0.0, damp=False), lo, hi, st.exact)
        _, _, r_p, merit_p = assess(S_p)
        p_step = step_size(S, P_raw)
        take = merit_p <= merit
        S, r = jnp.where(take, S_p, S), jnp.where(take, r_p, r)
        err = jnp.maximum(err, p_step)
        ok = ok & _converged(r, err, tol)
    return st.back(S), k, r, err, ok


def _project(S: jax.Array, lo: Any, hi: Any, exact: bool) -> jax.Array:
    """An iterate ``S`` projected onto the cell's state box ``[lo, hi]`` (``CellFast.state_box``) where
    the step's Jacobian is exact (``exact``: DEER, ELK, and every method on a cell with exact blocks).

    The true trajectory lies in the box, so the projection moves each entry toward it. DEER's first
    update from a zero guess, which overshot to 5e7 on a trained ParaGRU, lands back in ``[−1, 1]``
    (measured, T=4096: 12 iterations to 6 on the ParaGRU, 16 to 7 on the ParaLSTM, 80-90 to 11-12 on a
    trained GRU; quasi-ELK on a ParaGRU(16), 145 to 11). The error estimate uses the update before the
    projection, whose bound still holds, and step t is still exact after t iterations. Iterates of an
    approximate Jacobian are returned as they are (the guess alone is projected under every method):
    a projected chord step can stop at the box's edge with the residual above ``tol`` (measured: an
    LSTM with ``cell_clip=3``, 200 iterations unconverged where the unprojected iteration took 16).
    """
    return jnp.clip(S, lo, hi) if exact else S


def _mean_correction(J: tuple, r: jax.Array) -> jax.Array:
    """The update ``Δ`` of a time-averaged-Jacobian iteration: ``Δ_t = g_t J̄ Δ_{t-1} + r_t`` with ``r_t =
    f(s_{t-1}) − s_t`` (``J = (J̄, g)`` of :func:`jlstm.newton.step.mean_jacobian`; ``Δ_0`` starts from the
    exact initial state). Solved for the correction, its rounding scales with ``Δ``, not with ``s``."""
    J_mean, g = J
    return constant_affine_scan(J_mean, g.at[0].set(0), r)


def _hold_invalid(S: jax.Array, valid: jax.Array, s0: jax.Array) -> jax.Array:
    """``S [T, B, D]`` with each invalid step holding the last valid step's state (``s0`` before any).

    An invalid step is the identity, which ``g_t J̄`` cannot express; its exact value is this copy. So
    padding after ``lengths`` costs the time-averaged iteration nothing (measured: 60 iterations
    unconverged with 243 padded steps without it)."""
    t = jnp.arange(S.shape[0])[:, None]
    last = lax.cummax(jnp.where(valid, t, -1), axis=0)
    held = jnp.take_along_axis(S, jnp.maximum(last, 0)[..., None], axis=0)
    return jnp.where((last >= 0)[..., None], held, s0)


def _iterate(cond: Callable, body: Callable, start: tuple, give_up: bool) -> tuple:
    """``lax.while_loop(cond, body, start)``; with ``give_up``, it also stops after :data:`GIVE_UP_AFTER`
    updates in a row that did not shrink (θ ≥ 1: the error estimate, ``carry[-2]``, is infinite)."""
    if not give_up:
        return lax.while_loop(cond, body, start)

    def step(c):
        carry = body(c[0])
        return carry, jnp.where(carry[-2] < jnp.inf, 0, c[1] + 1)

    # the first update's θ is unknown (an infinite estimate too): the count starts at -1
    return lax.while_loop(lambda c: cond(c[0]) & (c[1] < GIVE_UP_AFTER), step, (start, jnp.int32(-1)))[0]


def _sequential(cell: Any, params: Any, xs: jax.Array, state: Any, valid: jax.Array | None, unroll: Any,
                remat: Any) -> tuple[Any, jax.Array]:
    """The plain sequential loop (the fallback of a direct :func:`newton_scan` call)."""
    request = Request(valid, None, None, NO_REGULARISERS, Sequential(unroll, remat), current_plan())
    return request.loop.evaluate(cell, params, xs, state, request)[:2]


def _raise(converged: jax.Array, iterations: jax.Array, error: jax.Array, *, method: str, tol: float) -> None:
    """Raise :class:`NewtonConvergenceError` now where the values are concrete, else from the compiled program."""
    raise_unless = functools.partial(raise_unless_converged, method=method, tol=tol)
    if any(isinstance(a, Tracer) for a in (converged, iterations, error)):
        jax.debug.callback(raise_unless, converged, iterations, error)
    else:
        raise_unless(converged, iterations, error)


def raise_unless_converged(converged, iterations, error, *, method: str, tol: float) -> None:
    """Raise :class:`NewtonConvergenceError` unless every sequence ``converged`` (concrete values)."""
    if not np.all(converged):
        raise NewtonConvergenceError(
            f"jlstm.scan(method={method!r}): Newton's method did not converge: estimated error "
            f"{np.max(error):.3g} > tol {tol:g} after {np.max(iterations)} iterations. Raise max_iters, "
            f"use method='elk' (damped), or pass jlstm.Newton(..., on_failure='fallback') to get the "
            f"sequential scan's result instead.")
