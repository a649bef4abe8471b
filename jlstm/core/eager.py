"""Eager calls of the front doors, compiled once per configuration instead of once per call.

Called outside ``jit``, :func:`jlstm.scan` used to run op by op: every call traced its loop body
afresh (a new closure each time), so ``lax.scan`` compiled again on every call: 0.2-0.5 s for the
cells of ``python -m benchmarks.eager`` on CPU, however often a notebook repeated the same call.
:func:`call` instead runs such a call through a ``jax.jit`` kept per (function, static arguments),
so a repeat with the same cell, options and argument shapes reuses the compiled program. The other
front doors over whole arrays (:func:`jlstm.mlstm_core`, :func:`jlstm.linear_recurrence`,
:func:`jlstm.lstm_sequence`) and the xLSTM models' ``apply`` (:func:`compiled_apply`) go the same way.

A call takes this path only where compiling cannot change what the user sees:

* every leaf of the array arguments is a concrete array (a ``jax.Array`` that is no tracer, or a
  NumPy array). Under ``jit``, ``grad`` or ``vmap`` the leaves are tracers and the call runs as
  before, inside the caller's trace. Python numbers stay on the direct path too: under ``jit`` they
  would become weakly typed tracers and a cell branching on them would break;
* the static arguments hash (cells hash by their config, strategies by value); each number among
  them is keyed with its type (``reverse=1`` is not ``reverse=True``); the routing plan that
  tracing reads is part of the key too;
* ``jax.disable_jit()`` is not in effect.

Trace-time errors (bad shapes, dtypes, options) are raised as before: JAX re-raises what tracing
raises. Checks that read values (``lengths`` within ``[0, T]``) run before the compiled call.
The cache is bounded (:data:`CACHE_SIZE` entries, least recently used dropped).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np
from jax.core import Tracer

from jlstm.core.plan import current_plan
from jlstm.core.time import check_concrete_lengths

CACHE_SIZE = 64


def concrete(*trees: Any) -> bool:
    """Whether every leaf of ``trees`` is a concrete array: a non-tracer ``jax.Array`` or NumPy array."""
    return all(isinstance(leaf, (jax.Array, np.ndarray, np.generic)) and not isinstance(leaf, Tracer)
               for leaf in jax.tree_util.tree_leaves(trees))


class _Static:
    """The static arguments as a cache key that tells apart values which compare equal but trace differently.

    ``True == 1 == 1.0`` and they hash alike, so as plain tuple members ``reverse=1`` (refused by its check)
    and ``reverse=True`` would share a program, and so would ``unroll=1`` and ``unroll=True`` (no unrolling
    against a full one). The key pairs each number with its type, inside tuples (named ones included) too.
    """

    __slots__ = ("args", "_key", "_hash")

    def __init__(self, args: tuple) -> None:
        self.args = args
        self._key = _typed(args)
        self._hash = hash(self._key)                            # TypeError when unhashable: the direct path

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and self._key == other._key


def _typed(x: Any) -> Any:
    """``x`` with every number paired with its type, inside tuples and inside the dataclasses that compare
    their fields as a tuple (``jlstm.Sequential(unroll=True) == jlstm.Sequential(unroll=1)``); a class with
    an equality of its own (a cell: by config, whatever its closures) keys as itself."""
    if isinstance(x, tuple):
        return type(x), tuple(_typed(item) for item in x)
    if isinstance(x, (bool, int, float, complex)):
        return type(x), x
    params = getattr(type(x), "__dataclass_params__", None)
    if params is not None and params.eq and not isinstance(x, type):
        return type(x), tuple(_typed(getattr(x, f.name)) for f in dataclasses.fields(x))
    return x


@functools.lru_cache(maxsize=CACHE_SIZE)
def _jitted(fn: Callable, static: _Static, context: Hashable) -> Callable:
    del context                                                 # part of the key only
    args = static.args
    return jax.jit(lambda *dynamic: fn(*args, *dynamic))


def call(fn: Callable, static: tuple[Hashable, ...], dynamic: tuple,
         check_values: Callable[[], None] | None = None, context: Hashable = None) -> Any:
    """``fn(*static, *dynamic)``: compiled once per ``(fn, static)`` when eager, else called directly.

    ``fn`` must be a module-level function (it is part of the key); ``static`` holds everything
    that is not an array (cells, options, names), ``dynamic`` the arrays (pytrees, ``None`` allowed).
    A call whose eager behaviour would differ under ``jit`` must be reshaped by its caller first
    (:func:`jlstm._scan.eager_call` does so for a Newton that raises on failure or starts warm).
    ``check_values`` runs first on the compiled path: the checks that read concrete values (``fn``
    makes them itself when run directly, but its trace under ``jit`` cannot read them).
    ``context`` joins the key without being passed on: what tracing ``fn`` reads from elsewhere (the
    routing plan), so that a program traced under one context is not served under another.
    """
    if not jit_disabled() and concrete(dynamic):
        try:
            jitted = _jitted(fn, _Static(static), context)
        except TypeError:                                       # unhashable static: the direct path
            jitted = None
        if jitted is not None:
            if check_values is not None:
                check_values()
            return jitted(*dynamic)
    return fn(*static, *dynamic)


def split_numbers(values: tuple) -> tuple[tuple, tuple]:
    """Python numbers among ``values`` as static arguments, the rest as dynamic ones (``None`` in their place).

    For :func:`call`'s front doors that take a number where an array may go (``linear_recurrence(0.99,
    rewards)``): a number is part of the key instead of sending the call down the direct path, and the
    program sees the number itself, weakly typed as the direct call would (the key tells ``1`` from
    ``1.0``, as it does every static number).
    """
    def number(x: Any) -> bool:
        return isinstance(x, (int, float, complex)) and not isinstance(x, bool)

    return tuple(x if number(x) else None for x in values), tuple(None if number(x) else x for x in values)


def join_numbers(numbers: tuple, values: tuple) -> tuple:
    """The inverse of :func:`split_numbers`: each value, or the number in its place."""
    return tuple(value if number is None else number for number, value in zip(numbers, values))


def compiled_apply(apply: Callable, where: str, config: Any) -> Callable:
    """A sequence model's ``apply`` whose eager calls run through :func:`call`, compiled once per model and shapes.

    For models whose ``apply`` is more than one :func:`jlstm.scan` (the xLSTM blocks and stacks: norms,
    projections, a causal convolution around the scan), which otherwise run op by op when called
    outside ``jit``. The key is the ``apply`` itself, so a model built once and called repeatedly
    reuses its program; inside a trace the call is ``apply``'s own. ``lengths`` is range-checked on
    its values first, as the direct call checks it. A model whose ``config`` holds a Newton method
    that raises on failure or starts warm keeps the direct path, where each of its scans handles
    those eagerly (:func:`jlstm._scan.eager_call`): compiled whole, the failure would surface as a
    ``JaxRuntimeError`` from a callback instead of a ``jlstm.NewtonConvergenceError``.
    """
    direct = _eager_only(config)

    @functools.wraps(apply)
    def wrapped(params: Any, xs: Any, state: Any = None, *, lengths: Any = None, mask: Any = None, key: Any = None,
                time_major: bool = True, resets: Any = None) -> Any:
        if direct:
            return apply(params, xs, state, lengths=lengths, mask=mask, key=key, time_major=time_major,
                         resets=resets)
        def check_values() -> None:
            check_concrete_lengths(xs, lengths, time_major, where)

        return call(_apply_with, (apply, time_major), (params, xs, state, lengths, mask, key, resets),
                    check_values=check_values, context=current_plan())

    return wrapped


def _eager_only(obj: Any) -> bool:
    """Whether a model's configuration holds, at any depth, an object whose class has an ``eager_only``
    property that is true: a :class:`jlstm.Strategy` (a Newton that raises on failure or starts warm).
    Read off the class, so that ``core`` imports no strategy."""
    from jlstm.core.types import Cell, CellConfig, SequenceModel

    if isinstance(getattr(type(obj), "eager_only", None), property):
        return bool(obj.eager_only)
    if isinstance(obj, (Cell, SequenceModel)):
        return _eager_only(obj.config)
    if isinstance(obj, CellConfig):
        return any(_eager_only(v) for v in obj.as_dict().values())
    if isinstance(obj, (tuple, list)):
        return any(_eager_only(v) for v in obj)
    return False


def _apply_with(apply: Callable, time_major: bool, params: Any, xs: Any, state: Any, lengths: Any, mask: Any,
                key: Any, resets: Any) -> Any:
    return apply(params, xs, state, lengths=lengths, mask=mask, key=key, time_major=time_major, resets=resets)


def jit_disabled() -> bool:
    """Whether ``jax.disable_jit()`` is in effect (a flag JAX's type stubs do not list)."""
    return bool(jax.config.jax_disable_jit)  # pyright: ignore[reportAttributeAccessIssue]


def clear() -> None:
    """Drop the table of compiled front-door calls, and with it their programs."""
    _jitted.cache_clear()
