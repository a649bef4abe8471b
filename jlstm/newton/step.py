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
from jax import lax

# Elements of one chunk's dense Jacobians [C, B, D, D] when only their diagonal is kept.
DIAG_CHUNK_ELEMENTS = 1 << 24


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
    """A cell's step on flat state vectors: ``step`` and, where the cell can, a cheap ``diag``.

    ``step(params, s[D], x[I], valid[]) -> (s'[D], y[O])`` for one example, the identity where
    invalid; ``diag(params, s, x, valid) -> (s', y, diag(∂s'/∂s) [D])`` from the cell's
    ``CellFast.step_decoupled`` (one JVP per state leaf), or ``None``.
    """

    step: Callable
    diag: Callable | None = None

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
    if fast is None or fast.step_decoupled is None or fast.project is None:
        return FlatStep(f)
    decoupled, project = fast.step_decoupled, fast.project

    @_full_precision
    def diag(params, s, x, v):
        state = spec.unravel(s, batch=())
        xp = project(params, x)
        (new, y), tangent = jax.linearize(lambda st: decoupled(params, st, xp), state)
        leaves, treedef = jax.tree.flatten(state)
        parts = []
        for k in range(len(leaves)):                   # ones on leaf k: its own diagonal comes back
            ones = [jnp.ones_like(a) if j == k else jnp.zeros_like(a) for j, a in enumerate(leaves)]
            parts.append(jax.tree.leaves(tangent(treedef.unflatten(ones))[0])[k].reshape(-1).astype(spec.dtype))
        d = jnp.concatenate(parts)
        new = jnp.where(v, _ravel_one(spec, new), s)
        return new, jnp.where(v, y, jnp.zeros((), y.dtype)), jnp.where(v, d, jnp.ones((), d.dtype))

    return FlatStep(f, diag)


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

    ``jac`` is ``None``, ``"dense"`` (``[T, B, D, D]``) or ``"diag"`` (``[T, B, D]``; from
    ``f.diag`` where the cell has a decoupled step, else a full ``jacfwd`` per chunk).
    """
    if jac is None:
        s, ys = both_with(f)(params, s_prev, xs, valid)
        return s, ys, None

    if jac == "diag" and getattr(f, "diag", None) is not None:
        return both_with(f.diag)(params, s_prev, xs, valid)

    def with_jac(p, s, x, v):
        J, (new, y) = jax.jacfwd(lambda s_: (lambda o: (o[0], o))(f(p, s_, x, v)), has_aux=True)(s)
        return new, y, (J if jac == "dense" else jnp.diagonal(J))

    per_step = jax.vmap(with_jac, (None, 0, 0, 0))
    T, B, D = s_prev.shape
    chunk = max(1, DIAG_CHUNK_ELEMENTS // max(1, B * D * D))
    if jac == "dense" or chunk >= T:
        return jax.vmap(per_step, (None, 0, 0, 0))(params, s_prev, xs, valid)
    return lax.map(lambda a: per_step(params, *a), (s_prev, xs, valid), batch_size=chunk)
