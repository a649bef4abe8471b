"""All of jlstm's time looping: lengths, masks, reverse, unroll and remat, written once."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.core import Tracer

from jlstm import _checks
from jlstm._types import Cell, CellFast, Method, Params, RematPolicy, SequenceFn, State

REMAT_POLICIES = (None, "step", "segment")


def default_unroll(backend: str | None = None) -> int:
    """The ``unroll`` used when the caller passes none: measured per backend.

    On GPU an XLA while-loop iteration costs several microseconds, so unrolling 8 steps
    amortises it. On CPU the per-step matmul dominates and unrolling only lengthens
    compilation.
    """
    backend = backend or jax.default_backend()
    return 8 if backend in ("gpu", "cuda", "rocm", "tpu") else 1


def _check_unroll(unroll: Any) -> Union[int, bool]:
    if unroll is None:
        return default_unroll()
    if isinstance(unroll, bool):
        return unroll
    if not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be a positive int (or True for a full unroll), got {unroll!r}.")
    return unroll


def _check_remat(remat: Any) -> RematPolicy:
    if isinstance(remat, int) and not isinstance(remat, bool):
        if remat < 1:
            raise ValueError(f"remat as a segment length must be >= 1, got {remat}.")
        return remat
    if remat is False:
        return None
    _checks.check_option("remat", remat, REMAT_POLICIES + (True,))
    return "step" if remat is True else remat


def valid_steps(
    T: int,
    batch_shape: tuple[int, ...],
    lengths: jax.Array | None,
    mask: jax.Array | None,
    where: str,
) -> tuple[jax.Array | None, jax.Array | None]:
    """Check ``lengths``/``mask`` and combine them into one boolean ``[T, *batch]`` array.

    Returns ``(valid, lengths)``; ``valid`` is ``None`` when every step is valid.
    """
    valid = None
    if lengths is not None:
        if not hasattr(lengths, "dtype"):
            lengths = jnp.asarray(lengths)
        if not jnp.issubdtype(lengths.dtype, jnp.integer) or lengths.dtype == jnp.bool_:
            raise TypeError(
                f"{where}: lengths must be integers, got dtype {lengths.dtype}; pass "
                f"lengths.astype(jnp.int32) (a count of valid steps per sequence).")
        if tuple(lengths.shape) != tuple(batch_shape):
            raise ValueError(
                f"{where}: lengths has shape {tuple(lengths.shape)}, expected the batch shape "
                f"{tuple(batch_shape)} of xs (one length per sequence).")
        _check_length_values(lengths, T, where)
        t = jnp.arange(T).reshape((T,) + (1,) * len(batch_shape))
        valid = t < lengths[None]
    if mask is not None:
        if not hasattr(mask, "dtype"):
            mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(
                f"{where}: mask must be boolean (True = a step to process), got dtype "
                f"{mask.dtype}; pass mask.astype(bool).")
        if tuple(mask.shape) != (T,) + tuple(batch_shape):
            raise ValueError(
                f"{where}: mask has shape {tuple(mask.shape)}, expected {(T,) + tuple(batch_shape)} "
                f"([T, *batch], time-major like xs).")
        valid = mask if valid is None else valid & mask
    return valid, lengths


def _check_length_values(lengths: Any, T: int, where: str) -> None:
    """Reject lengths outside ``[0, T]`` when they are concrete (traced lengths cannot be read)."""
    if isinstance(lengths, Tracer):
        return
    values = np.asarray(lengths)
    if values.size and (values.max() > T or values.min() < 0):
        raise ValueError(
            f"{where}: lengths must lie in [0, T] = [0, {T}], got values from {values.min()} to "
            f"{values.max()}; a length counts the valid steps of a sequence, so pad xs to the longest "
            f"sequence or clip the lengths.")


def reverse_index(T: int, lengths: jax.Array) -> jax.Array:
    """``[T, *batch]`` indices that reverse each sequence's valid prefix and leave its padding.

    The permutation is its own inverse, so the same indices restore the original order.
    """
    t = jnp.arange(T).reshape((T,) + (1,) * lengths.ndim)
    L = jnp.clip(lengths, 0, T)[None]
    return jnp.where(t < L, L - 1 - t, t)


def _gather_time(x: jax.Array, idx: jax.Array) -> jax.Array:
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - idx.ndim))
    return jnp.take_along_axis(x, jnp.broadcast_to(idx, x.shape), axis=0)


def flip_time(tree: Any, lengths: jax.Array | None) -> Any:
    """Reverse every leaf along time: whole sequences, or each valid prefix given lengths."""
    if lengths is None:
        return jax.tree.map(lambda a: jnp.flip(a, axis=0), tree)
    T = jax.tree.leaves(tree)[0].shape[0]
    idx = reverse_index(T, lengths)
    return jax.tree.map(lambda a: _gather_time(a, idx), tree)


def _select(valid_t: jax.Array, new: Any, old: Any) -> Any:
    def pick(n, o):
        v = valid_t.reshape(valid_t.shape + (1,) * (n.ndim - valid_t.ndim))
        return jnp.where(v, n, o)

    return jax.tree.map(pick, new, old)


def time_loop(
    step: Callable[[Any, Any], tuple[Any, jax.Array]],
    state: Any,
    inputs: Any,
    valid: jax.Array | None,
    *,
    unroll: Union[int, bool] = 1,
    remat: RematPolicy = None,
) -> tuple[Any, Any]:
    """Run ``step(state, input_t) -> (state, y_t)`` over the leading axis of ``inputs``.

    Where ``valid[t]`` is False the state is kept and ``y_t`` is zero. ``remat`` is
    ``None``, ``"step"`` (checkpoint each step), ``"segment"`` (checkpoint segments of
    ⌈√T⌉ steps, so memory grows like √T) or an int segment length.
    """
    T = jax.tree.leaves(inputs)[0].shape[0]
    if T == 0:
        y_dtypes = None
    else:
        first = jax.tree.map(lambda a: a[0], inputs)
        y_dtypes = [a.dtype for a in jax.tree.leaves(jax.eval_shape(step, state, first)[1])]

    def body(carry, inp):
        x_t, v_t = inp
        new, y = step(carry, x_t)
        if v_t is not None:
            new = _select(v_t, new, carry)
            y = jax.tree.map(lambda a: jnp.where(
                v_t.reshape(v_t.shape + (1,) * (a.ndim - v_t.ndim)), a, jnp.zeros_like(a)), y)
        # Low-precision outputs are stacked in float32 and cast once after the loop: a
        # per-step cast to bf16 let XLA:CPU re-convert the whole stacked buffer each step.
        return new, jax.tree.map(_widen, y)

    def narrow(out):
        final, ys = out
        if y_dtypes is None:
            return final, ys
        leaves, treedef = jax.tree.flatten(ys)
        return final, treedef.unflatten([a.astype(d) for a, d in zip(leaves, y_dtypes)])

    if remat is None or T == 0:
        return narrow(lax.scan(body, state, (inputs, valid), unroll=unroll))
    if remat == "step":
        return narrow(lax.scan(jax.checkpoint(body), state, (inputs, valid), unroll=unroll))
    return narrow(_segmented(body, state, inputs, valid, T, remat, unroll))


def _segmented(body, state, inputs, valid, T, remat, unroll):
    """``lax.scan(body)`` over checkpointed segments: memory grows like the segment count."""
    seg = _segment_length(T, remat)
    n_seg = -(-T // seg)
    pad = n_seg * seg - T
    if valid is None:  # one flag per step, broadcast over every state leaf (their shapes differ: mLSTM's C, n, m)
        valid = jnp.ones((T,), bool)

    def pad_split(a, fill):
        a = jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], fill, a.dtype)]) if pad else a
        return a.reshape((n_seg, seg) + a.shape[1:])

    seg_inputs = jax.tree.map(lambda a: pad_split(a, 0), inputs)
    seg_valid = pad_split(valid, False)

    @jax.checkpoint
    def segment(carry, inp):
        return lax.scan(body, carry, inp, unroll=unroll)

    final, ys = lax.scan(segment, state, (seg_inputs, seg_valid))
    return final, jax.tree.map(lambda a: a.reshape((n_seg * seg,) + a.shape[2:])[:T], ys)


def _segment_length(T: int, remat: Any) -> int:
    """Steps per checkpointed segment: ⌈√T⌉ for ``"segment"``, else the given int (≤ T)."""
    seg = max(1, math.isqrt(max(T - 1, 0)) + 1) if remat == "segment" else int(remat)
    return min(seg, T)


def _fused_segments(kernel: SequenceFn, params: Any, xs: jax.Array, state: Any, valid: jax.Array | None,
                    unroll: Union[int, bool], remat: Any) -> tuple[Any, jax.Array]:
    """The fused path under segment remat: a scan over checkpointed segments of ``cell.fast.sequence``.

    Training stores only the state at each segment boundary; the backward pass re-runs one
    segment's fused forward at a time, so memory grows like √T while every segment keeps
    the fast path's hoisted GEMMs. Padding steps (to a whole number of segments) are
    invalid steps, which keep the state.
    """
    T, batch = xs.shape[0], xs.shape[1:-1]
    seg = _segment_length(T, remat)
    n_seg = -(-T // seg)
    pad = n_seg * seg - T
    if pad:
        valid = jnp.ones((T,) + batch, bool) if valid is None else valid
        xs = jnp.concatenate([xs, jnp.zeros((pad,) + xs.shape[1:], xs.dtype)])
        valid = jnp.concatenate([valid, jnp.zeros((pad,) + batch, bool)])
    xs_seg = xs.reshape((n_seg, seg) + xs.shape[1:])
    valid_seg = None if valid is None else valid.reshape((n_seg, seg) + batch)

    @jax.checkpoint
    def segment(carry, inp):
        x, v = inp
        return kernel(params, x, carry, v, unroll)

    final, ys = lax.scan(segment, state, (xs_seg, valid_seg))
    return final, ys.reshape((n_seg * seg,) + ys.shape[2:])[:T]


def _widen(a: jax.Array) -> jax.Array:
    return a.astype(jnp.float32) if a.dtype in (jnp.bfloat16, jnp.float16) else a


NEWTON_METHODS = ("deer", "quasi_deer", "elk", "quasi_elk")


class ScanOptions(NamedTuple):
    """The static options of one :func:`scan` call (everything but the arrays)."""

    reverse: bool = False
    unroll: Union[int, bool] | None = None
    time_major: bool = True
    remat: RematPolicy = None
    fast: bool = True
    method: Method = "auto"


class StepRegularisers(NamedTuple):
    """Per-step regularisers that the layers add to a scan (see :func:`jlstm.recurrent`).

    ``recurrent_mask`` ([*batch, R]) multiplies ``h_{t-1}`` in the recurrent matmul.
    ``zoneout`` keeps each unit of the previous state with that probability: sampled
    with ``zoneout_key``, or in expectation without it.
    """

    recurrent_mask: jax.Array | None = None
    zoneout: float = 0.0
    zoneout_key: jax.Array | None = None


NO_REGULARISERS = StepRegularisers()


def scan(
    cell: Cell,
    params: Params,
    xs: jax.Array,
    state: State = None,
    *,
    lengths: jax.Array | None = None,
    mask: jax.Array | None = None,
    reverse: bool = False,
    unroll: Union[int, bool] | None = None,
    time_major: bool = True,
    remat: RematPolicy = None,
    fast: bool = True,
    method: Method = "auto",
    return_info: bool = False,
) -> tuple[Any, ...]:
    """Run ``cell`` over a sequence: the classic loop over ``cell.step``, or a parallel form.

    Args:
      cell: a :class:`jlstm.Cell` (``jlstm.lstm(...)``, ``jlstm.gru(...)``, your own, ...).
      params: the cell's params.
      xs: ``[T, *batch, input_size]`` (time-major, lax.scan's convention) or, with
        ``time_major=False``, ``[*batch, T, input_size]``. A single sequence ``[T, input]``
        works.
      state: the initial state; ``None`` means zeros (``cell.initial_state``).
      lengths: int ``[*batch]``, each in ``[0, T]``. Steps ``t >= lengths`` keep the state
        and output zeros, so the final state is the state after step ``length - 1``.
        Values in the padding, NaN included, change neither the results nor the gradients.
      mask: bool ``[T, *batch]`` (``[*batch, T]`` with ``time_major=False``). A step whose
        mask is False keeps the state and outputs zeros: missing values inside a sequence.
      reverse: run from the last valid step to the first. With ``lengths``, only each
        valid prefix is reversed; the outputs come back in the original order.
      unroll: steps per loop iteration; ``None`` picks :func:`default_unroll`.
      time_major: layout of ``xs``, ``mask`` and the returned ``ys``.
      remat: ``None``, ``"step"``, ``"segment"`` (⌈√T⌉-step segments) or an int segment
        length: trade recomputation for memory in training.
      fast: allow the cell's fused whole-sequence kernel (``jlstm.lstm`` without
        projection or clipping). ``fast=False`` always loops over the step.
      method: how to evaluate the recurrence. ``"sequential"``: a loop over time.
        ``"parallel"``/``"chunkwise"``: the parallel forms of cells that have them (mLSTM,
        minGRU, minLSTM). ``"deer"``, ``"quasi_deer"``, ``"elk"`` or a
        :class:`jlstm.Newton` object: Newton's method over the whole trajectory, for any
        cell. ``"auto"`` (default): the cell's choice for this T, else sequential.
      return_info: also return the method's info (iterations and residual of a Newton
        method; ``None`` for the others).

    Returns:
      ``(final_state, ys)`` with ``ys`` of shape ``[T, *batch, cell.output_size]``, or
      ``(final_state, ys, info)`` with ``return_info=True``.

    Example:
      >>> cell = jlstm.lstm(16)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> xs = jnp.ones((10, 3, 4))                  # T=10, batch 3
      >>> state, ys = jlstm.scan(cell, params, xs, lengths=jnp.array([10, 4, 0]))
      >>> ys.shape
      (10, 3, 16)
    """
    options = ScanOptions(reverse=reverse, unroll=unroll, time_major=time_major, remat=remat,
                          fast=fast, method=method)
    final, ys, info = run_scan(cell, params, xs, state, lengths, mask, options)
    return (final, ys, info) if return_info else (final, ys)


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
) -> tuple[Any, jax.Array, Any]:
    """:func:`scan` with its options as one record, plus the layers' regularisers.

    Returns ``(final_state, ys, info)``.
    """
    _check_scan_args(cell, xs, options, where)
    unroll = _check_unroll(options.unroll)
    remat = _check_remat(options.remat)
    time_major = options.time_major
    if not time_major:
        xs = jnp.moveaxis(xs, -2, 0)
        if mask is not None and getattr(mask, "ndim", 0) >= 1:
            mask = jnp.moveaxis(jnp.asarray(mask), -1, 0)
    T, batch = xs.shape[0], tuple(xs.shape[1:-1])
    x_struct = jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype)
    if cell.fast is not None and cell.fast.check is not None:
        cell.fast.check(params, state, x_struct, where)
    valid, lengths = valid_steps(T, batch, lengths, mask, where)
    if state is None:
        state = cell.initial_state(params, batch)
    if cell.fast is None or cell.fast.check is None:
        _check_step_contract(cell, params, state, x_struct, where)
    kind, form = _resolve_method(cell, options.method, T, regularisers, where)

    if options.reverse:
        xs, valid = flip_time((xs, valid), lengths)
    if valid is not None:
        xs = jnp.where(valid[..., None], xs, jnp.zeros((), xs.dtype))

    info = None
    if kind == "newton":
        from jlstm import _deer

        final, ys, info = _deer.newton_scan(cell, params, xs, state, valid, form, unroll=unroll, remat=remat)
    elif kind == "form":
        final, ys = form(params, xs, state, valid, unroll=unroll, remat=remat)
    else:
        final, ys = _sequential(cell, params, xs, state, valid, unroll, remat, options.fast, regularisers)
    if options.reverse:
        ys = flip_time(ys, lengths)
    if not time_major:
        ys = jnp.moveaxis(ys, 0, -2)
    return final, ys, info


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


def _resolve_method(cell: Cell, method: Any, T: int, regularisers: StepRegularisers,
                    where: str) -> tuple[str, Any]:
    """``("sequential", None)``, ``("form", fn)`` or ``("newton", method)`` for this cell and T."""
    forms = dict(cell.fast.methods) if cell.fast is not None else {}
    regularised = regularisers.recurrent_mask is not None or regularisers.zoneout
    if isinstance(method, str):
        if method == "auto":
            # The regularisers act inside the step loop, so "auto" takes the loop for them.
            auto = cell.fast.auto_method if cell.fast is not None and not regularised else None
            method = auto(T) if auto is not None else "sequential"
        supported = ("auto", "sequential", *forms, *NEWTON_METHODS)
        if method not in supported:
            raise ValueError(f"{where}: method={method!r} is not supported by {cell.name}; it supports "
                             f"{', '.join(map(repr, supported))}.")
        kind = "sequential" if method == "sequential" else "form" if method in forms else "newton"
        payload = forms.get(method) if kind == "form" else method
    elif hasattr(method, "name"):
        kind, payload = "newton", method
    else:
        raise TypeError(f"{where}: method must be a str such as 'sequential' or 'deer', or a method object "
                        f"such as jlstm.Newton(...), got {type(method).__name__}.")
    if kind != "sequential" and regularised:
        raise ValueError(f"{where}: recurrent dropout and zoneout act inside the step loop and need "
                         f"method='sequential', got method={method!r}; drop the regulariser or the method.")
    return kind, payload


def _sequential(cell: Cell, params: Any, xs: jax.Array, state: Any, valid: jax.Array | None,
                unroll: Union[int, bool], remat: Any, fast: bool,
                regularisers: StepRegularisers) -> tuple[Any, jax.Array]:
    """The loop over time: the cell's fused kernel where allowed, else a scan over its step."""
    T = xs.shape[0]
    rec_mask, zoneout = regularisers.recurrent_mask, regularisers.zoneout
    plain = rec_mask is None and not zoneout
    pieces = cell.fast if cell.fast is not None else CellFast()
    kernel = pieces.sequence
    if plain and fast and kernel is not None and T > 0:
        if remat is None:
            return kernel(params, xs, state, valid, unroll)
        if remat != "step":
            return _fused_segments(kernel, params, xs, state, valid, unroll, remat)
    step, inputs = _step_function(cell, pieces, params, xs, remat, rec_mask)
    if zoneout:
        step, inputs = _zoneout(step, inputs, state, T, zoneout, regularisers.zoneout_key)
    return time_loop(step, state, inputs, valid, unroll=unroll, remat=remat)


def _step_function(cell: Cell, pieces: CellFast, params: Any, xs: jax.Array, remat: Any,
                   rec_mask: jax.Array | None) -> tuple[Callable[[Any, Any], tuple[Any, Any]], Any]:
    """``(step(state, input_t), inputs)`` for the loop: the projected step where the cell has one."""
    project, step_projected = pieces.project, pieces.step_projected
    if project is None or step_projected is None:
        if rec_mask is not None:
            raise ValueError(f"{cell.name}: recurrent dropout needs a cell with fast.project and "
                             f"fast.step_projected (build it with jlstm.make_cell); this cell has only a step.")
        return (lambda s, x: cell.step(params, s, x)), xs
    if remat is None:
        return (lambda s, xp: step_projected(params, s, xp, recurrent_mask=rec_mask)), project(params, xs)
    # Under remat the input projection runs inside the loop: a projected copy of the
    # whole sequence ([T, *batch, 4H] for an LSTM) would keep memory linear in T.
    return (lambda s, x: step_projected(params, s, project(params, x), recurrent_mask=rec_mask)), xs


def _zoneout(step, xp, state, T, rate, key):
    """Wrap ``step`` so each state unit keeps its previous value with probability ``rate``.

    With a key the keep-masks are sampled per step and unit (Krueger et al. 2017);
    without one the update is the expectation ``rate·old + (1-rate)·new``.
    """
    leaves, treedef = jax.tree.flatten(state)
    if key is None:
        def det_step(s, x):
            new, y = step(s, x)
            new = jax.tree.map(lambda n, o: (rate * o + (1.0 - rate) * n).astype(o.dtype), new, s)
            return new, _zoneout_output(new, y)

        return det_step, xp
    keys = jax.random.split(key, len(leaves))
    keep = treedef.unflatten([jax.random.bernoulli(k, rate, (T,) + leaf.shape)
                              for k, leaf in zip(keys, leaves)])

    def rand_step(s, inp):
        x, keep_t = inp
        new, y = step(s, x)
        new = jax.tree.map(lambda n, o, kp: jnp.where(kp, o, n), new, s, keep_t)
        return new, _zoneout_output(new, y)

    return rand_step, (xp, keep)


def _zoneout_output(new, y):
    h = getattr(new, "h", None)
    if h is not None and h.shape == y.shape:
        return h.astype(y.dtype)
    return y
