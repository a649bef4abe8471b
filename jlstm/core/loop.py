"""The one loop over time: valid steps, resets, unroll and remat, written once.

Every sequential evaluation in jlstm (a cell's step, the mLSTM's sequential form, the layers'
regularised steps) runs through :func:`time_loop`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
from jax import lax

from jlstm.core.plan import Plan
from jlstm.core.time import join_blocks, split_blocks, sqrt_length
from jlstm.core.types import RematPolicy


def segment_length(T: int, remat: Any) -> int:
    """Steps per checkpointed segment: ⌈√T⌉ for ``"segment"``, else the given int (≤ T)."""
    seg = sqrt_length(T) if remat == "segment" else int(remat)
    return min(seg, T)


def projects_in_loop(plan: Plan, project: Callable[[Any, Any], Any], params: Any, xs: jax.Array,
                     output_size: int) -> bool:
    """Whether a loop over a cell's projected step should project each step's input inside the loop.

    True from ``plan.step_inloop_from_batch`` rows on (``xs`` is ``[T, *batch, I]``), for a cell whose
    projection ``project(params, x_t)`` is at least twice as wide as its output (the gated cells); else the
    loop reads one projection of all T steps made before it. Decided at trace time from shapes alone.
    """
    start = plan.step_inloop_from_batch
    if start is None or math.prod(xs.shape[1:-1]) < start:
        return False
    out = jax.eval_shape(project, params, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))
    leaves = jax.tree.leaves(out)
    return len(leaves) == 1 and leaves[0].ndim >= 1 and leaves[0].shape[-1] >= 2 * output_size


def select(flags: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where ``flags`` ([*batch]) is True, else ``old``, leaf by leaf (trailing axes broadcast)."""

    def pick(n, o):
        f = flags.reshape(flags.shape + (1,) * (jnp.ndim(n) - flags.ndim))
        return jnp.where(f, n, o)

    return jax.tree.map(pick, new, old)


def with_resets(step: Callable[[Any, Any], tuple[Any, Any]], reset_state: Any) -> Callable:
    """``step`` over inputs ``(x_t, r_t)``: where ``r_t`` is True the step starts from ``reset_state``."""

    def reset_step(state, inp):
        x, r = inp
        return step(select(r, reset_state, state), x)

    return reset_step


def time_loop(
    step: Callable[[Any, Any], tuple[Any, jax.Array]],
    state: Any,
    inputs: Any,
    valid: jax.Array | None,
    *,
    unroll: Union[int, bool] = 1,
    remat: RematPolicy = None,
    resets: jax.Array | None = None,
    reset_state: Any = None,
) -> tuple[Any, Any]:
    """Run ``step(state, input_t) -> (state, y_t)`` over the leading axis of ``inputs``.

    Where ``valid[t]`` is False the state is kept and ``y_t`` is zero. Where ``resets[t]`` is True
    the step starts from ``reset_state`` (the cell's initial state) instead of the carried state.
    ``remat`` is ``None``, ``"step"`` (checkpoint each step), ``"segment"`` (checkpoint segments
    of ⌈√T⌉ steps, so memory grows like √T) or an int segment length.
    """
    if resets is not None:
        step, inputs = with_resets(step, reset_state), (inputs, resets)
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
            new = select(v_t, new, carry)
            y = select(v_t, y, jax.tree.map(jnp.zeros_like, y))
        # Low-precision outputs are stacked in float32 and cast once after the loop: a
        # per-step cast to bf16 let XLA:CPU re-convert the whole stacked buffer each step.
        return new, jax.tree.map(_widen, y)

    if remat is None or T == 0:
        final, ys = lax.scan(body, state, (inputs, valid), unroll=unroll)
    elif remat == "step":
        final, ys = lax.scan(jax.checkpoint(body), state, (inputs, valid), unroll=unroll)
    else:
        final, ys = _segmented(body, state, inputs, valid, T, remat, unroll)
    if y_dtypes is None:
        return final, ys
    leaves, treedef = jax.tree.flatten(ys)
    return final, treedef.unflatten([a.astype(d) for a, d in zip(leaves, y_dtypes)])


def _segmented(body, state, inputs, valid, T, remat, unroll):
    """``lax.scan(body)`` over checkpointed segments: memory grows like the segment count."""
    seg = segment_length(T, remat)
    if valid is None:  # one flag per step, broadcast over every state leaf (whatever its shape)
        valid = jnp.ones((T,), bool)
    seg_inputs = jax.tree.map(lambda a: split_blocks(a, seg, 0), inputs)
    seg_valid = split_blocks(valid, seg, False)   # padding steps are invalid: they keep the state

    @jax.checkpoint
    def segment(carry, inp):
        return lax.scan(body, carry, inp, unroll=unroll)

    final, ys = lax.scan(segment, state, (seg_inputs, seg_valid))
    return final, jax.tree.map(lambda a: join_blocks(a, T), ys)


def _widen(a: jax.Array) -> jax.Array:
    return a.astype(jnp.float32) if a.dtype in (jnp.bfloat16, jnp.float16) else a
