"""Parallel-in-time evaluation of any cell: Newton's method on the whole trajectory.

The states of a sequence solve ``s_t = f(s_{t-1}, x_t)`` for all t at once. Newton's method
linearises around a guess, ``s_t ≈ J_t s_{t-1} + (f(s̄_{t-1}) − J_t s̄_{t-1})``, and each
linear recurrence is solved by an associative scan in O(log T) depth:

* ``"deer"`` (Lim et al., ICLR 2024): dense Jacobians ``J_t = ∂f/∂s`` from ``jax.jacfwd``;
  O(T·D²) memory and O(T·D³) work per iteration.
* ``"quasi_deer"`` (Gonzalez et al., NeurIPS 2024): ``diag(J_t)`` only; O(T·D) memory.
* ``"elk"`` / ``"quasi_elk"``: the same steps with Levenberg–Marquardt damping λ, solved as a
  parallel Kalman smoother; it stays stable where the undamped iteration blows up.

Convergence is measured inside ``jit`` by the residual
``max_t,i |s_t − f(s_{t−1})|_i / (1 + |f(s_{t−1})|_i)``; a NaN counts as not converged. On failure
the default is to return the sequential scan's answer (``lax.cond``), never a wrong trajectory.
Gradients use the implicit-function theorem at the solution (:mod:`jlstm.newton.grad`): one
transposed linear recurrence, never a derivative through the Newton iterations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jlstm.core.linear import Algebra, affine_scan
from jlstm.core.plan import current_plan
from jlstm.newton import grad as _deer_grad
from jlstm.newton.linear import damped_solve
from jlstm.newton.resets import append_resets, with_reset_input
from jlstm.newton.shard import sharded_forward
from jlstm.newton.step import FlatState, evaluate, flat_step, residual
from jlstm.strategies.base import NO_REGULARISERS, Request, Strategy
from jlstm.strategies.sequential import Sequential

METHODS = ("deer", "quasi_deer", "elk", "quasi_elk")
ON_FAILURE = ("fallback", "raise", "ignore")
CLIP = 1e8                                           # iterates are clipped to ±CLIP, as in the ELK code
DENSE_CHUNK_ELEMENTS = 1 << 25                       # the gradient's dense Jacobians: 128 MiB of f32 a chunk


class NewtonConvergenceError(RuntimeError):
    """A Newton method did not converge and ``on_failure="raise"`` was asked for."""


@dataclasses.dataclass(frozen=True, eq=False)
class Newton(Strategy):
    """Options of a parallel-in-time Newton method: pass as ``jlstm.scan(..., method=Newton(...))``.

    Args:
      method: ``"deer"`` (dense Jacobians), ``"quasi_deer"`` (their diagonal), ``"elk"`` or
        ``"quasi_elk"`` (damped, dense or diagonal).
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
    adapt: bool = True
    shrink: float = 0.1
    grow: float = 10.0
    mesh: Any = None
    axis: str = "time"

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

    def lam(self) -> float:
        return (1.0 if self.damping is None else float(self.damping)) if self.damped else 0.0

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
      converged: ``residual <= tol`` (False for NaN). With ``on_failure="fallback"`` a False
        here means the returned values are the sequential scan's.
      trajectory: the Newton trajectory (state pytree, leading axis T, in processing order,
        i.e. time-reversed under ``reverse=True``), without gradient: pass it as
        ``Newton(init=...)`` to warm-start the next call.
    """

    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    trajectory: Any


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
        info = NewtonInfo(jnp.int32(0), jnp.zeros((), spec.dtype), jnp.bool_(True), empty)
        return state, jnp.zeros((0,) + y.shape, y.dtype), info
    guess = jnp.broadcast_to(s0, (T, B, spec.size)) if opts.init is None else spec.ravel(opts.init, (T,))
    f = flat_step(cell, spec)
    if opts.mesh is None:
        forward = functools.partial(_newton_loop, f, opts, tol)
    else:
        forward = sharded_forward(f, opts, tol, CLIP)
    solve = _deer_grad.implicit_solve(f, forward, _chunk(T, remat, B * spec.size ** 2),
                                      zero_on_failure=opts.on_failure == "fallback",
                                      tol=tol)
    traj, iters, residual = solve(params, x, v, s0, lax.stop_gradient(guess))
    S, ys, _ = evaluate(f, params, _shift(s0, traj), x, v)
    converged = residual <= tol
    final = spec.unravel(S[-1])
    ys = ys.reshape((T,) + batch + ys.shape[2:])
    if opts.on_failure == "raise":
        raise_unless = functools.partial(_raise_unless, method=opts.method, tol=tol)
        jax.debug.callback(raise_unless, converged, iters, residual)
    elif opts.on_failure == "fallback":
        final, ys = lax.cond(converged, lambda: (final, ys), fallback or functools.partial(
            _sequential, cell, params, xs, state, valid, unroll, remat))
    info = NewtonInfo(iters, residual, converged, spec.unravel(lax.stop_gradient(S), (T,)))
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


def _newton_loop(f, opts: Newton, tol: float, params, xs, valid, s0, guess):
    """Newton iterations from ``guess`` until the residual is below ``tol``: ``(S, iterations, residual)``.

    The damped methods adapt λ as Levenberg–Marquardt does: a step that lowers
    ``Σ|s_t − f(s_{t−1})|²`` is taken and λ shrinks; a step that does not is refused and λ grows.
    """
    alg = Algebra(dense=opts.jacobian == "dense")
    damped = opts.damped

    def assess(S):
        Fs, _, J = evaluate(f, params, _shift(s0, S), xs, valid, opts.jacobian)
        return Fs, J, residual(S, Fs), jnp.sum((S - Fs) ** 2)

    def body(carry):
        k, S, Fs, J, r, merit, lam = carry
        b = (Fs - alg.mv(J, _shift(s0, S))).at[0].set(Fs[0])     # s_0 folded into step 1
        A = J.at[0].set(0)
        S_new = damped_solve(alg, A, b, S, lam) if damped else affine_scan(alg, A, b)
        S_new = jnp.clip(S_new, -CLIP, CLIP)
        new = (S_new,) + assess(S_new)
        if not damped or not opts.adapt:
            return (k + 1,) + new + (lam,)
        take = new[4] < merit                         # False for NaN
        kept = tuple(jnp.where(take, n, o) for n, o in zip(new, (S, Fs, J, r, merit)))
        lam = jnp.where(take, lam * opts.shrink, lam * opts.grow) if opts.adapt else lam
        return (k + 1,) + kept + (lam,)

    def cond(carry):
        k, r = carry[0], carry[4]
        return (k < opts.max_iters) & (r > tol)      # a NaN residual stops the loop, unconverged

    lam0 = jnp.asarray(opts.lam(), guess.dtype)
    k, S, _, _, r, _, _ = lax.while_loop(cond, body, (jnp.int32(0), guess) + assess(guess) + (lam0,))
    return S, k, r


def _sequential(cell: Any, params: Any, xs: jax.Array, state: Any, valid: jax.Array | None, unroll: Any,
                remat: Any) -> tuple[Any, jax.Array]:
    """The plain sequential loop (the fallback of a direct :func:`newton_scan` call)."""
    request = Request(valid, None, None, NO_REGULARISERS, Sequential(unroll, remat), current_plan())
    return request.loop.evaluate(cell, params, xs, state, request)[:2]


def _raise_unless(converged, iterations, residual, *, method: str, tol: float) -> None:
    if not np.all(converged):
        raise NewtonConvergenceError(
            f"jlstm.scan(method={method!r}): Newton's method did not converge: residual "
            f"{np.max(residual):.3g} > tol {tol:g} after {np.max(iterations)} iterations. Raise max_iters, "
            f"use method='elk' (damped), or pass jlstm.Newton(..., on_failure='fallback') to get the "
            f"sequential scan's result instead.")
