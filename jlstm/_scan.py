"""``jlstm.scan``: validate once, put the sequence in processing order, hand it to a strategy.

The flow of a call: :func:`scan` → :func:`run_scan` checks the arguments and the cell's contract at
trace time, folds ``lengths`` and ``mask`` into one ``valid`` array, reverses each valid prefix
under ``reverse=True``, zeroes the inputs of invalid steps, and resolves ``method`` into a strategy
object (:func:`as_strategy`): :class:`~jlstm.Sequential`, :class:`~jlstm.Parallel`,
:class:`~jlstm.Chunkwise`, :class:`~jlstm.Newton` or :class:`~jlstm.Auto`. The strategy's
``evaluate`` does the rest; nothing here knows a specific cell or backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
from jax import lax

from jlstm.core import checks as _checks
from jlstm.core import eager
from jlstm.core.loop import time_loop
from jlstm.core.plan import current_plan, plan_for
from jlstm.core.time import check_concrete_lengths, flip_time, reverse_index, time_flags, valid_steps
from jlstm.core.types import Cell, CellConfig, Method, Params, RematPolicy, State
from jlstm.newton.method import METHODS as NEWTON_METHODS
from jlstm.newton.method import Newton, raise_unless_converged
from jlstm.strategies.auto import Auto
from jlstm.strategies.base import NO_REGULARISERS, Request, StepRegularisers, Strategy
from jlstm.strategies.forms import Chunkwise, Parallel
from jlstm.strategies.sequential import Sequential

__all__ = ["ScanOptions", "as_strategy", "default_unroll", "eager_call", "reverse_index", "run_scan", "scan",
           "time_loop"]


def default_unroll(backend: str | None = None) -> int:
    """The ``unroll`` used when the caller passes none: the backend's (:class:`jlstm.core.plan.Plan`).

    On GPU an XLA while-loop iteration costs several microseconds, so unrolling 8 steps
    amortises it. On CPU the per-step matmul dominates and unrolling only lengthens
    compilation.
    """
    return (plan_for(backend) if backend else current_plan()).unroll


class ScanOptions(NamedTuple):
    """The static options of one :func:`scan` call (everything but the arrays)."""

    reverse: bool = False
    unroll: Union[int, bool] | None = None
    time_major: bool = True
    remat: RematPolicy = None
    fast: bool = True
    method: Method = "auto"


def as_strategy(method: Any, loop: Sequential, where: str = "jlstm.scan") -> Strategy:
    """The strategy object for ``method``: a name maps to its object, an object passes through.

    ``loop`` is the caller's :class:`Sequential` (from ``unroll``, ``remat``, ``fast``), which
    ``"sequential"`` means. A ``Sequential`` object passed as ``method`` replaces it.
    """
    if isinstance(method, Strategy):
        return method
    if isinstance(method, str):
        named = {"auto": Auto(), "sequential": loop, "parallel": Parallel(), "chunkwise": Chunkwise()}
        if method in named:
            return named[method]
        if method in NEWTON_METHODS:
            return Newton(method=method)
        raise ValueError(f"{where}: method={method!r} is not a method; use one of "
                         f"{', '.join(map(repr, (*named, *NEWTON_METHODS)))} or a strategy object such as "
                         f"jlstm.Sequential(), jlstm.Chunkwise(chunk_size=64) or jlstm.Newton('deer').")
    raise TypeError(f"{where}: method must be a str such as 'sequential' or 'deer', or a strategy object such "
                    f"as jlstm.Newton(...), got {type(method).__name__}.")


def scan(
    cell: Cell,
    params: Params,
    xs: jax.Array,
    state: State = None,
    *,
    lengths: jax.Array | None = None,
    mask: jax.Array | None = None,
    resets: jax.Array | None = None,
    reverse: bool = False,
    unroll: Union[int, bool] | None = None,
    time_major: bool = True,
    remat: RematPolicy = None,
    fast: bool = True,
    method: Method = "auto",
    return_info: bool = False,
) -> tuple[Any, ...]:
    """Run ``cell`` over a sequence: a loop over ``cell.step``, a parallel form, or Newton's method.

    Args:
      cell, params: a :class:`jlstm.Cell` (``jlstm.lstm(...)``, your own, ...) and its params.
      xs: ``[T, *batch, input_size]`` (``[*batch, T, input_size]`` with ``time_major=False``).
      state: the initial state; ``None`` means ``cell.initial_state`` (zeros).
      lengths: int ``[*batch]`` in ``[0, T]``: steps ``t >= length`` keep the state and output
        zeros; padding values (NaN too) change neither results nor gradients.
      mask: bool ``[T, *batch]``: a False step keeps the state and outputs zeros.
      resets: bool ``[T, *batch]``: where True the state restarts from ``cell.initial_state``
        (not ``state``) before step t: episodes in a rollout, documents in packed text. A reset
        on an invalid step does nothing. Every method supports it, values and gradients.
      reverse: run each valid prefix backwards (each segment within itself, with ``resets``);
        outputs come back in the original order.
      unroll, remat, fast: the loop's options (:class:`jlstm.Sequential`): steps per iteration
        (``None``: the backend's), ``None``/``"step"``/``"segment"``/an int segment length, and
        whether the cell's fused kernel may run.
      time_major: layout of ``xs``, ``mask``, ``resets`` and ``ys``.
      method: a strategy or its name: ``"sequential"``, ``"parallel"``, ``"chunkwise"``, a Newton
        method (``"deer"``, ``"quasi_deer"``, ``"elk"``, ``"quasi_elk"``) or ``"auto"`` (default:
        the cell's choice for this T and backend). See :class:`jlstm.Auto`.
      return_info: also return the strategy's info (a :class:`jlstm.NewtonInfo`, else ``None``).

    Returns:
      ``(final_state, ys)``, ``ys`` of shape ``[T, *batch, cell.output_size]``; with
      ``return_info=True``, ``(final_state, ys, info)``.

    Example:
      >>> cell = jlstm.lstm(16)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> state, ys = jlstm.scan(cell, params, jnp.ones((10, 3, 4)), lengths=jnp.array([10, 4, 0]))
      >>> ys.shape
      (10, 3, 16)
    """
    options = ScanOptions(reverse=reverse, unroll=unroll, time_major=time_major, remat=remat,
                          fast=fast, method=method)
    final, ys, info = eager_call(_run_scan_call, (cell, options), (params, xs, state, lengths, mask, resets),
                                 method=method, time_major=time_major, where="jlstm.scan")
    return (final, ys, info) if return_info else (final, ys)


def _run_scan_call(cell: Cell, options: ScanOptions, params: Params, xs: jax.Array, state: State,
                   lengths: jax.Array | None, mask: jax.Array | None, resets: jax.Array | None):
    """:func:`run_scan` with the static arguments first, for :func:`eager_call`."""
    return run_scan(cell, params, xs, state, lengths, mask, options, resets=resets)


def eager_call(fn: Any, static: tuple, dynamic: tuple, *, method: Any, time_major: bool, where: str) -> Any:
    """A front door's call of ``fn``, which runs :func:`run_scan`, through :func:`jlstm.core.eager.call`.

    ``dynamic`` opens with ``(params, xs, state, lengths, ...)``; ``fn`` returns ``(final, ys, info)``.
    The program is keyed by the plan as well (tracing reads it); ``lengths`` is range-checked on its
    values first. Two Newton options need more than the cache (:func:`_eager_newton`): one that raises
    on failure, and a warm start.
    """
    xs, lengths = dynamic[1], dynamic[3]

    def check_values() -> None:
        check_concrete_lengths(xs, lengths, time_major, where)

    if isinstance(method, Newton) and (method.on_failure == "raise" or method.init is not None):
        return _eager_newton(fn, static, dynamic, method, check_values)
    return eager.call(fn, static, dynamic, context=current_plan(), check_values=check_values)


def _eager_newton(fn: Any, static: tuple, dynamic: tuple, method: Newton, check_values: Any) -> Any:
    """``fn`` with a Newton that raises on failure or starts warm: compiled once per configuration when eager.

    Inside a trace (or under ``jax.disable_jit()``) the call runs directly: there a failure raises from
    the compiled program (a debug callback) and the start is the caller's tracer. Called eagerly, the
    kept program runs the same iterations with ``on_failure="ignore"`` and takes the warm start as an
    argument (a trajectory has no value hash, and as a constant it would key a program per start);
    an unconverged solve then raises :class:`jlstm.NewtonConvergenceError` here, with the direct path's
    message, so the error is itself and not wrapped in a ``JaxRuntimeError``.
    """
    if not eager.concrete(dynamic, method.init) or eager.jit_disabled():
        return fn(*static, *dynamic)
    keep = dataclasses.replace(method, init=None, on_failure="ignore" if method.on_failure == "raise"
                               else method.on_failure)
    static = tuple(_with_method(s, method, keep) for s in static)
    out = eager.call(_call_with_start, (fn, len(static), *static), (*dynamic, method.init),
                     context=current_plan(), check_values=check_values)
    if method.on_failure == "raise":
        info = out[2]
        dtype = jnp.result_type(*jax.tree.leaves(info.trajectory))    # the flat state's, as the solve's tol
        raise_unless_converged(info.converged, info.iterations, info.error, method=method.method,
                               tol=method.tolerance(dtype))
    return out


def _with_method(arg: Any, method: Newton, keep: Newton) -> Any:
    """A static argument with ``method`` replaced by ``keep``: the scan options, or a layer's config."""
    if isinstance(arg, ScanOptions) and arg.method is method:
        return arg._replace(method=keep)
    if isinstance(arg, CellConfig) and arg.get("method") is method:
        return arg.replace(method=keep)
    return arg


def _call_with_start(fn: Any, n_static: int, *args: Any) -> Any:
    """``fn(*static, *dynamic)`` with the warm start ``args[-1]`` (traced, or ``None``) put back in the options."""
    static, dynamic, start = args[:n_static], args[n_static:-1], args[-1]
    if start is not None:
        static = tuple(s._replace(method=dataclasses.replace(s.method, init=start))
                       if isinstance(s, ScanOptions) and isinstance(s.method, Newton) else s for s in static)
    return fn(*static, *dynamic)


def run_scan(
    cell: Cell,
    params: Params,
    xs: jax.Array,
    state: State,
    lengths: jax.Array | None,
    mask: jax.Array | None,
    options: ScanOptions,
    regularisers: StepRegularisers = NO_REGULARISERS,
    where: str = "jlstm.scan",
    resets: jax.Array | None = None,
) -> tuple[Any, jax.Array, Any]:
    """:func:`scan` with its options as one record, plus the layers' regularisers.

    Returns ``(final_state, ys, info)``.
    """
    _check_scan_args(cell, xs, options, where)
    strategy, loop = _strategy(options, where)
    if not options.time_major:
        xs = jnp.moveaxis(xs, -2, 0)
        mask, resets = (None if a is None else jnp.moveaxis(jnp.asarray(a), -1, 0) for a in (mask, resets))
    T, batch = xs.shape[0], tuple(xs.shape[1:-1])
    x_struct = jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype)
    if cell.fast is not None and cell.fast.check is not None:
        cell.fast.check(params, state, x_struct, where)
    valid, lengths = valid_steps(T, batch, lengths, mask, where)
    if state is None:
        state = cell.initial_state(params, batch)
    if cell.fast is None or cell.fast.check is None:
        _check_step_contract(cell, params, state, x_struct, where)
    request = _request(cell, params, batch, T, valid, resets, lengths, options.reverse, regularisers, loop, where)
    strategy.check(cell, request, where)
    if options.reverse:
        xs, valid = flip_time((xs, valid), lengths)
        request = request._replace(valid=valid)
    if valid is not None:
        xs = jnp.where(valid[..., None], xs, jnp.zeros((), xs.dtype))
    final, ys, info = strategy.evaluate(cell, params, xs, state, request)
    if options.reverse:
        ys = flip_time(ys, lengths)
    if not options.time_major:
        ys = jnp.moveaxis(ys, 0, -2)
    return final, ys, info


def _strategy(options: ScanOptions, where: str) -> tuple[Strategy, Sequential]:
    """The strategy of this call and the caller's loop options (``Sequential``)."""
    try:
        loop = Sequential(unroll=options.unroll, remat=options.remat, fast=options.fast)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: {e}") from None
    strategy = as_strategy(options.method, loop, where)
    if isinstance(strategy, Sequential) and strategy is not loop:
        if (options.unroll, options.remat, options.fast) != (None, None, True):
            raise ValueError(f"{where}: method={strategy!r} carries its own unroll, remat and fast; pass them "
                             f"there, not also to scan (got unroll={options.unroll!r}, remat={options.remat!r}, "
                             f"fast={options.fast!r}).")
        loop = strategy
    return strategy, loop


def _request(cell: Cell, params: Any, batch: tuple[int, ...], T: int, valid: jax.Array | None,
             resets: Any, lengths: jax.Array | None, reverse: bool, regularisers: StepRegularisers,
             loop: Sequential, where: str) -> Request:
    """The :class:`Request` of a call: resets checked, masked by ``valid`` and put in processing order."""
    reset_state = None
    if resets is not None:
        resets = time_flags("resets", resets, T, batch, where, "True = start the state afresh before this step")
        if valid is not None:
            resets = resets & valid
        if reverse:
            resets = _reverse_resets(resets, valid, lengths)
        reset_state = cell.initial_state(params, batch)
    return Request(valid=valid, resets=resets, reset_state=reset_state, regularisers=regularisers,
                   loop=loop, plan=current_plan())


def _reverse_resets(resets: jax.Array, valid: jax.Array | None, lengths: jax.Array | None) -> jax.Array:
    """Resets for a backward pass over each segment, in processing (reversed) order.

    Going backwards, a segment ``[a, b)`` (a reset at ``a``, the next at ``b``) starts at its last
    valid step before ``b``: a reset there, where the original order has one at the next valid
    step. The first step processed (the last valid one) starts from the ``state`` argument, as
    without resets.
    """
    T = resets.shape[0]
    t = jnp.arange(T).reshape((T,) + (1,) * (resets.ndim - 1))
    v = jnp.ones_like(resets) if valid is None else valid   # False past each length too
    # the next valid step after t (T where there is none): invalid steps between t and a reset
    # do not hide it, since they keep the state
    first_valid = lax.cummin(jnp.where(v, t, T), axis=0, reverse=True)
    after = jnp.concatenate([first_valid[1:], jnp.full_like(first_valid[:1], T)], 0)
    padded = jnp.concatenate([resets, jnp.zeros_like(resets[:1])], 0)
    nxt = v & jnp.take_along_axis(padded, after, axis=0)
    return flip_time(nxt, lengths)


def _check_scan_args(cell: Any, xs: Any, options: ScanOptions, where: str) -> None:
    if not isinstance(cell, Cell):
        raise TypeError(f"{where}: cell must be a jlstm.Cell (e.g. jlstm.lstm(32)), got "
                        f"{type(cell).__name__}.")
    _checks.check_array("xs", xs, where)
    if xs.ndim < 2:
        raise ValueError(
            f"{where}: xs must have a time and a feature axis, shape [T, *batch, input_size], "
            f"got shape {tuple(xs.shape)}; for a single step call cell.step instead, or add "
            f"a time axis with xs[None].")
    if not isinstance(options.time_major, bool):
        raise TypeError(f"{where}: time_major must be True or False, got {options.time_major!r}.")
    if not isinstance(options.reverse, bool):
        raise TypeError(f"{where}: reverse must be True or False, got {options.reverse!r}.")




def _check_step_contract(cell: Cell, params: Any, state: Any, x: jax.ShapeDtypeStruct, where: str) -> None:
    """For a cell without its own check: trace one step and check its shapes against the contract."""
    try:
        new, y = jax.eval_shape(cell.step, params, state, x)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: {cell.name}.step(params, state, x) failed for x of shape "
                      f"{tuple(x.shape)} and the given params/state: {e}") from e
    batch = tuple(x.shape[:-1])
    if getattr(y, "shape", None) != batch + (cell.output_size,):
        raise ValueError(f"{where}: {cell.name}.step returned y of shape {getattr(y, 'shape', y)}, expected "
                         f"{batch + (cell.output_size,)} ([*batch, output_size]); fix the cell's step or "
                         f"its output_size.")
    got = jax.tree.map(lambda a: (a.shape, a.dtype), new)
    want = jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), state)
    if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
        raise ValueError(f"{where}: {cell.name}.step changed the state's structure, shapes or dtypes "
                         f"(from {want} to {got}); a step must return a state like the one it got. Check "
                         f"the state's batch shape (initial_state(params, batch_shape)) and dtypes.")
