"""A cell's step as a map on one flat state vector, evaluated for all steps at once.

Newton's method needs ``s_t = f(s_{t-1}, x_t)`` with ``s`` a vector. :class:`FlatState` ravels
each leaf of a state pytree over its non-batch axes and concatenates them (the LSTM's
``LSTMState(h, c)`` becomes ``[h, c]``); :func:`flat_step` wraps ``cell.step`` on that vector,
with the identity at invalid steps (``J = I``, output 0). :func:`evaluate` applies it to a
whole trajectory in one vectorised call and returns, on request, the Jacobians ``∂f/∂s``:
dense (``jax.jacfwd``) or their diagonal, computed in chunks of steps so that memory stays
O(T·D) when only the diagonal is kept.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jlstm.core.linear import Algebra

# Elements of one chunk's dense Jacobians [C, B, D, D] when only their diagonal (or their mean) is kept.
DIAG_CHUNK_ELEMENTS = 1 << 24
# Steps whose dense Jacobians are averaged into the time-averaged Jacobian of ``Newton(quasi="mean")``.
MEAN_SAMPLES = 64


class FlatState(NamedTuple):
    """How a state pytree with batch shape ``batch`` maps to ``[B, D]`` and back."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]               # per-leaf shape without the batch axes
    dtypes: tuple[Any, ...]
    batch: tuple[int, ...]
    dtype: Any                                        # the common dtype of the flat vector

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @staticmethod
    def of(state: Any, batch: tuple[int, ...]) -> FlatState:
        leaves, treedef = jax.tree.flatten(state)
        nb = len(batch)
        return FlatState(treedef, tuple(tuple(a.shape[nb:]) for a in leaves), tuple(a.dtype for a in leaves),
                         tuple(batch), jnp.result_type(*leaves))

    def ravel(self, state: Any, lead: tuple[int, ...] = ()) -> jax.Array:
        """``state`` with leaves ``[*lead, *batch, *shape]`` -> ``[*lead, B, D]``."""
        B = math.prod(self.batch)
        return jnp.concatenate([a.reshape(lead + (B, -1)).astype(self.dtype) for a in jax.tree.leaves(state)], -1)

    def unravel(self, flat: jax.Array, lead: tuple[int, ...] = (), batch: tuple[int, ...] | None = None) -> Any:
        """The inverse of :meth:`ravel`; ``batch=()`` unravels one example's ``[D]`` vector."""
        batch = self.batch if batch is None else batch
        sizes = [math.prod(s) for s in self.shapes]
        parts = jnp.split(flat, list(_cumsum(sizes)[:-1]), axis=-1)
        return self.treedef.unflatten([p.reshape(lead + batch + s).astype(d)
                                       for p, s, d in zip(parts, self.shapes, self.dtypes)])


def _cumsum(xs: list[int]) -> list[int]:
    out, total = [], 0
    for x in xs:
        total += x
        out.append(total)
    return out


class FlatStep(NamedTuple):
    """A cell's step on flat state vectors: ``step`` and, where the cell can, cheap Jacobian parts.

    ``step(params, s[D], x[I], valid[]) -> (s'[D], y[O])`` for one example, the identity where
    invalid; ``diag(params, s, x, valid) -> (s', y, diag(∂s'/∂s) [D])`` from the cell's
    ``CellFast.step_decoupled`` (one JVP per state leaf), or ``None``; ``block`` likewise returns
    each unit's ``k×k`` block ``[U, k, k]`` of ``∂s'/∂s`` (``k`` leaves of ``U`` units, entry
    ``[j, a, b] = ∂leaf_a'[j] / ∂leaf_b[j]``) where the cell declares ``CellFast.jacobian_blocks``;
    ``box(s0 [B, D]) -> (lo, hi)`` the cell's ``CellFast.state_box`` on flat states, or ``None``.
    """

    step: Callable
    diag: Callable | None = None
    block: Callable | None = None
    box: Callable | None = None

    def __call__(self, params, s, x, v):
        return self.step(params, s, x, v)


def _full_precision(fn: Callable) -> Callable:
    """``fn`` with its matrix products at full precision, whatever ``jax_default_matmul_precision`` says.

    A GPU multiplies float32 matrices in TF32 by default (about 3 decimal digits). Newton's method
    then solves a step whose Jacobian and values carry that rounding, and it stalls above float32's
    tolerance: measured on an H200, DEER ran 200 iterations unconverged where it needs 4, and
    quasi-DEER 42 where it needs 15. The GPU timings in ``benchmarks/results/deer_gpu.json`` were
    measured with full precision on.
    """

    @functools.wraps(fn)
    def wrapped(*args):
        with jax.default_matmul_precision("highest"):
            return fn(*args)

    return wrapped


def flat_step(cell: Any, spec: FlatState) -> FlatStep:
    """The :class:`FlatStep` of ``cell`` for states laid out by ``spec``, at full matmul precision."""

    @_full_precision
    def f(params, s, x, v):
        new, y = cell.step(params, spec.unravel(s, batch=()), x)
        new = _ravel_one(spec, new)
        new = jnp.where(v, new, s)
        return new, jnp.where(v, y, jnp.zeros((), y.dtype))

    fast = cell.fast
    box = None if fast is None or fast.state_box is None else _flat_box(fast.state_box, spec)
    if fast is None or fast.step_decoupled is None or fast.project is None:
        return FlatStep(f, box=box)

    def diag(params, s, x, v):
        new, y, columns = _columns(fast, spec, params, s, x)      # leaf k's own part of column k
        d = jnp.concatenate([col[k] for k, col in enumerate(columns)])
        y = jnp.where(v, y, jnp.zeros((), y.dtype))
        return jnp.where(v, new, s), y, jnp.where(v, d, jnp.ones((), d.dtype))

    def block(params, s, x, v):
        new, y, columns = _columns(fast, spec, params, s, x)
        J = jnp.stack([jnp.stack(col, -1) for col in columns], -1)   # [U, a, b]: ∂leaf_a'/∂leaf_b
        eye = jnp.eye(J.shape[-1], dtype=J.dtype)
        return jnp.where(v, new, s), jnp.where(v, y, jnp.zeros((), y.dtype)), jnp.where(v, J, eye)

    return FlatStep(f, _full_precision(diag), _full_precision(block) if block_size(cell, spec) else None, box)


def _flat_box(state_box: Callable, spec: FlatState) -> Callable:
    """``CellFast.state_box`` on flat initial states ``[B, D]``."""

    def box(s0):
        lo, hi = state_box(spec.unravel(s0))
        return spec.ravel(lo), spec.ravel(hi)

    return box


def bounds(f: FlatStep, st: Structure, s0: jax.Array, clip: float) -> tuple[Any, Any]:
    """``(lo, hi)`` in the layout of ``st`` (flat ``s0 [B, D]``): the cell's state box within ``±clip``."""
    if f.box is None:
        return -clip, clip
    lo, hi = f.box(s0)
    return st.to(jnp.maximum(lo, -clip)), st.to(jnp.minimum(hi, clip))


def block_size(cell: Any, spec: FlatState) -> int | None:
    """``k`` of the cell's ``CellFast.jacobian_blocks`` where the state fits it (``k`` leaves of equal
    size, and a decoupled step to read the blocks from), else ``None``."""
    fast = cell.fast
    k = None if fast is None or fast.step_decoupled is None or fast.project is None else fast.jacobian_blocks
    sizes = {math.prod(s) for s in spec.shapes}
    return k if k is not None and k == len(spec.shapes) and len(sizes) == 1 else None


def _columns(fast: Any, spec: FlatState, params: Any, s: jax.Array, x: jax.Array) -> tuple:
    """``(s', y, columns)``: ``columns[b][a] [U_a]`` is the JVP of ``step_decoupled`` with ones on leaf ``b``
    (zeros elsewhere), read on leaf ``a``: the entries of the Jacobian that link each unit to itself."""
    state = spec.unravel(s, batch=())
    xp = fast.project(params, x)
    (new, y), tangent = jax.linearize(lambda st: fast.step_decoupled(params, st, xp), state)
    leaves, treedef = jax.tree.flatten(state)
    columns = []
    for b in range(len(leaves)):
        ones = [jnp.ones_like(a) if j == b else jnp.zeros_like(a) for j, a in enumerate(leaves)]
        out = jax.tree.leaves(tangent(treedef.unflatten(ones))[0])
        columns.append([t.reshape(-1).astype(spec.dtype) for t in out])
    return _ravel_one(spec, new), y, columns


def _ravel_one(spec: FlatState, state: Any) -> jax.Array:
    return jnp.concatenate([a.reshape(-1).astype(spec.dtype) for a in jax.tree.leaves(state)])


def residual(S: jax.Array, Fs: jax.Array) -> jax.Array:
    """``max_t,i |s_t − f(s_{t−1})|_i / (1 + |f(s_{t−1})|_i)``, and NaN if any term is not finite.

    The NaN is explicit: XLA:CPU's max-reduction skips NaNs, and returns −inf for an all-NaN
    array, which would pass any ``residual <= tol`` test.
    """
    err = jnp.abs(S - Fs) / (1.0 + jnp.abs(Fs))
    return jnp.where(jnp.all(jnp.isfinite(err)), jnp.max(err, initial=0.0), jnp.nan).astype(err.dtype)


def both_with(fn: Callable) -> Callable:
    """``fn`` over the time and batch axes of ``(s [T,B,D], x [T,B,I], valid [T,B])``."""
    return jax.vmap(jax.vmap(fn, (None, 0, 0, 0)), (None, 0, 0, 0))


def evaluate(f: Callable, params: Any, s_prev: jax.Array, xs: jax.Array, valid: jax.Array,
             jac: str | None = None) -> tuple:
    """``f`` at every step of ``s_prev [T, B, D]``: ``(s [T,B,D], ys [T,B,O], J | None)``.

    ``jac`` is ``None``, ``"dense"`` (``[T, B, D, D]``), ``"diag"`` (``[T, B, D]``; from
    ``f.diag`` where the cell has a decoupled step, else a full ``jacfwd`` per chunk), ``"block"``
    (``[T, B, U, k, k]``, from ``f.block``) or ``"mean"`` (``(J̄ [B, D, D], g [T, B])``, from
    :func:`mean_jacobian`).
    """
    if jac is None:
        s, ys = both_with(f)(params, s_prev, xs, valid)
        return s, ys, None

    if jac == "mean":
        return mean_jacobian(f, params, s_prev, xs, valid)
    if jac in ("diag", "block") and getattr(f, jac, None) is not None:
        return both_with(getattr(f, jac))(params, s_prev, xs, valid)
    if jac == "block":
        raise ValueError("evaluate: jac='block' needs a cell that declares CellFast.jacobian_blocks.")

    def with_jac(p, s, x, v):
        J, (new, y) = jax.jacfwd(lambda s_: (lambda o: (o[0], o))(f(p, s_, x, v)), has_aux=True)(s)
        return new, y, (J if jac == "dense" else jnp.diagonal(J))

    per_step = jax.vmap(with_jac, (None, 0, 0, 0))
    T, B, D = s_prev.shape
    chunk = max(1, DIAG_CHUNK_ELEMENTS // max(1, B * D * D))
    if jac == "dense" or chunk >= T:
        return jax.vmap(per_step, (None, 0, 0, 0))(params, s_prev, xs, valid)
    return lax.map(lambda a: per_step(params, *a), (s_prev, xs, valid), batch_size=chunk)


def mean_jacobian(f: Callable, params: Any, s_prev: jax.Array, xs: jax.Array, valid: jax.Array) -> tuple:
    """``(s, ys, (J̄, g))``: each sequence's time-averaged Jacobian ``J̄ [B, D, D]``, and ``g [T, B]``.

    ``g_t`` is 0 where step t does not depend on the state at all (a reset: its Jacobian is 0) and 1
    elsewhere; it comes with the values from one JVP per step along the all-ones direction. ``J̄`` is the
    mean of the dense Jacobians at up to :data:`MEAN_SAMPLES` evenly spaced steps (fewer where ``B·D²``
    is large: at most :data:`DIAG_CHUNK_ELEMENTS` elements at once), over the valid steps with
    ``g = 1``; a sequence with none gets ``J̄ = 0``.
    """
    T, B, D = s_prev.shape

    def with_gate(p, s, x, v):
        (new, y), (d_new, _) = jax.jvp(lambda s_: f(p, s_, x, v), (s,), (jnp.ones_like(s),))
        return new, y, jnp.any(d_new != 0)

    s, ys, live = both_with(with_gate)(params, s_prev, xs, valid)
    n = max(1, min(T, MEAN_SAMPLES, DIAG_CHUNK_ELEMENTS // max(1, B * D * D)))
    idx = (np.arange(n) * T) // n
    jac = jax.vmap(jax.vmap(lambda p, s_, x, v: jax.jacfwd(lambda u: f(p, u, x, v)[0])(s_), (None, 0, 0, 0)),
                   (None, 0, 0, 0))
    J = jac(params, s_prev[idx], xs[idx], valid[idx])                     # [n, B, D, D]
    w = (live[idx] & valid[idx]).astype(J.dtype)                          # [n, B]
    J_mean = jnp.einsum("nb,nbij->bij", w, J) / jnp.maximum(jnp.sum(w, 0), 1)[:, None, None]
    return s, ys, (J_mean, live.astype(s.dtype))


class Structure(NamedTuple):
    """The Jacobian a Newton iteration keeps, and the layout its linear solves work in.

    ``kind``: ``"dense"`` (``[.., D, D]``, flat vectors), ``"diag"`` (``[.., D]``), ``"block"``
    (``[.., U, k, k]`` with vectors ``[.., U, k]``: unit ``j``'s entries of the ``k`` leaves side by
    side) or ``"mean"`` (one dense ``[B, D, D]`` per sequence, gated per step; flat vectors).
    ``exact``: the kept Jacobian is the step's whole Jacobian, so an iteration is exact Newton.
    """

    kind: str
    k: int = 1
    exact: bool = True

    @property
    def alg(self) -> Algebra:
        return Algebra(dense=self.kind != "diag")

    def to(self, s: jax.Array) -> jax.Array:
        """Flat ``[.., D]`` -> this layout."""
        return jnp.swapaxes(s.reshape(s.shape[:-1] + (self.k, -1)), -1, -2) if self.kind == "block" else s

    def back(self, s: jax.Array) -> jax.Array:
        """This layout -> flat ``[.., D]``."""
        return jnp.swapaxes(s, -1, -2).reshape(s.shape[:-2] + (-1,)) if self.kind == "block" else s


def structure(cell: Any, spec: FlatState, dense: bool, quasi: str = "blocks") -> Structure:
    """The :class:`Structure` of a Newton method on ``cell``: ``dense`` for DEER/ELK, else quasi.

    A cell whose declared blocks are its whole Jacobian (``CellFast.jacobian_exact``) gets them under
    every method: exact Newton at the blocks' cost. Otherwise DEER/ELK keep the dense Jacobian and the
    quasi methods what ``quasi`` names: ``"blocks"`` (the declared blocks, the diagonal where there are
    none), ``"diagonal"`` or ``"mean"`` (the time-averaged dense Jacobian).
    """
    k = block_size(cell, spec)
    if k is not None and cell.fast.jacobian_exact and (quasi != "diagonal" or k == 1):
        return Structure("block" if k > 1 else "diag", k, True)
    if dense:
        return Structure("dense")
    if quasi == "mean":
        return Structure("mean", 1, False)
    if k is not None and k > 1 and quasi == "blocks":
        return Structure("block", k, False)
    return Structure("diag", 1, False)


def step_size(S: jax.Array, S_new: jax.Array) -> jax.Array:
    """``max_t,i |s'_t − s_t|_i / (1 + |s'_t|_i)``: the size of a Newton update, NaN if not finite."""
    return residual(S, S_new)


def progress(step: jax.Array, last_step: jax.Array, r: jax.Array, exact: bool, tol: float) -> tuple:
    """``(error, converged)`` after an update of size ``step`` (the one before it: ``last_step``).

    The error estimate bounds the distance of the trajectory to the true solution, to first order:

    * exact Newton (undamped, the step's whole Jacobian): the update ``Δ`` solves the linearised
      recurrence with the residual as its input, ``Δ_t = J_t Δ_{t−1} − r_t``, so ``|Δ|`` is the
      error of the iterate it started from; the new iterate's is smaller, about ``θ/(1−θ) |Δ|`` with
      ``θ`` the ratio of the last two updates (an over-estimate by ``1/θ`` once convergence is
      quadratic). The estimate is ``|Δ| min(1, θ/(1−θ))``;
    * damped or approximate Jacobians (ELK, quasi-Newton): the iteration converges linearly at a rate
      ``θ = |Δ_k| / |Δ_{k−1}|``, and the remaining error is about ``θ/(1−θ) |Δ_k|`` (the tail of a
      geometric series; the stopping rule of simplified Newton in stiff ODE solvers). The estimate is
      ``|Δ_k| max(1, θ/(1−θ))``, infinite while ``θ`` is unknown (one update) or ``≥ 1``.

    Converged: the residual is finite and ``<= tol``, and so is the estimate. A residual at the level
    of rounding is not enough on its own: with decays near 1 a smooth residual of 4 ulp was measured to
    leave ELK's trajectory 1e-5 from the sequential one, which the update's size shows.
    """
    theta = step / last_step
    tail = jnp.where(theta < 1, theta / (1 - theta), jnp.inf)              # inf also for an unknown θ (NaN)
    if exact:
        error = step * jnp.minimum(1.0, tail)
    else:
        error = jnp.where(step == 0, 0.0, step * jnp.maximum(1.0, tail))
    return error.astype(step.dtype), converged(r, error, tol)


def converged(r: jax.Array, error: jax.Array, tol: float) -> jax.Array:
    """The convergence test of :func:`progress` (False for a NaN residual or error)."""
    return (r <= tol) & (error <= tol)
