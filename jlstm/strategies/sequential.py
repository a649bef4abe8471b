"""The loop over time: a cell's fused whole-sequence kernel where it has one, else a scan over its step."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
from jax import lax

from jlstm.core import checks as _checks
from jlstm.core.loop import projects_in_loop, segment_length, time_loop
from jlstm.core.plan import Plan
from jlstm.core.time import join_blocks, split_blocks
from jlstm.core.types import Cell, CellFast, RematPolicy, SequenceFn
from jlstm.strategies.base import Request, StepRegularisers, Strategy

REMAT_POLICIES = (None, "step", "segment")


def check_unroll(unroll: Any) -> Union[int, bool, None]:
    """``unroll`` as given (``None``: the plan's), after checking it is a positive int or a bool."""
    if unroll is None or isinstance(unroll, bool):
        return unroll
    if not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be a positive int (or True for a full unroll), got {unroll!r}.")
    return unroll


def check_remat(remat: Any) -> RematPolicy:
    """``remat`` normalised: ``None``, ``"step"``, ``"segment"`` or a segment length ``>= 1``."""
    if isinstance(remat, int) and not isinstance(remat, bool):
        if remat < 1:
            raise ValueError(f"remat as a segment length must be >= 1, got {remat}.")
        return remat
    if remat is False:
        return None
    _checks.check_option("remat", remat, REMAT_POLICIES + (True,))
    return "step" if remat is True else remat


@dataclasses.dataclass(frozen=True)
class Sequential(Strategy):
    """A loop over time: ``jlstm.scan(..., method=jlstm.Sequential(...))`` or ``method="sequential"``.

    Args:
      unroll: steps per loop iteration; ``None`` takes the backend's (``jlstm.default_unroll``; for a
        cell's fused kernel, the plan's ``fused_unroll`` where it sets one: 2 on the CPU, where the
        fused LSTM's backward loop takes ``lstm_backward_unroll``, 1). An int given here holds for
        every loop, the fused LSTM's backward loop included.
      remat: ``None``, ``"step"``, ``"segment"`` (⌈√T⌉-step segments) or an int segment length.
      fast: allow the cell's fused whole-sequence kernel (``CellFast.sequence``); ``False``
        always loops over the cell's step.

    Example:
      >>> cell = jlstm.lstm(8)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> _, ys = jlstm.scan(cell, params, jnp.ones((6, 2, 3)), method=jlstm.Sequential(remat="segment"))
      >>> ys.shape
      (6, 2, 8)
    """

    unroll: Union[int, bool, None] = None
    remat: RematPolicy = None
    fast: bool = True
    name = "sequential"

    def __post_init__(self) -> None:
        check_unroll(self.unroll)
        object.__setattr__(self, "remat", check_remat(self.remat))
        if not isinstance(self.fast, bool):
            raise TypeError(f"jlstm.Sequential: fast must be True or False, got {self.fast!r}.")

    def check(self, cell: Cell, request: Request, where: str) -> None:
        """Any cell and any request: the regularisers act inside this loop."""

    def evaluate(self, cell: Cell, params: Any, xs: jax.Array, state: Any,
                 request: Request) -> tuple[Any, jax.Array, None]:
        unroll = request.plan.unroll if self.unroll is None else self.unroll
        regs = request.regularisers
        pieces = cell.fast if cell.fast is not None else CellFast()
        kernel = pieces.sequence
        if not regs.active and self.fast and kernel is not None and xs.shape[0] > 0 and self.remat != "step":
            fused_unroll = request.plan.fused_unroll if self.unroll is None else None
            if self.unroll is not None:  # the caller's unroll holds for every loop of the kernel
                request = request._replace(plan=request.plan._replace(lstm_backward_unroll=None))
            return (*self._fused(kernel, params, xs, state, request, fused_unroll or unroll), None)
        step, inputs = _step_function(cell, pieces, params, xs, self.remat, regs.recurrent_mask, request.plan)
        if regs.zoneout:
            step, inputs = _zoneout(step, inputs, state, xs.shape[0], regs, pieces)
        final, ys = time_loop(step, state, inputs, request.valid, unroll=unroll, remat=self.remat,
                              resets=request.resets, reset_state=request.reset_state)
        return final, ys, None

    def _fused(self, kernel: SequenceFn, params: Any, xs: jax.Array, state: Any, request: Request,
               unroll: Union[int, bool]) -> tuple[Any, jax.Array]:
        """The cell's fused kernel, whole or (segment remat) over checkpointed segments of √T steps.

        Under segment remat training stores only the state at each segment boundary; the backward
        pass re-runs one segment's fused forward at a time, so memory grows like √T while every
        segment keeps the kernel's hoisted GEMMs. Padding steps are invalid: they keep the state.
        """
        extra = {} if request.resets is None else {"resets": request.resets}

        def run(p, x, s, v, **kw):
            return kernel(p, x, s, v, unroll, plan=request.plan, **kw)

        if self.remat is None:
            return run(params, xs, state, request.valid, **extra)
        T, batch = xs.shape[0], xs.shape[1:-1]
        seg = segment_length(T, self.remat)
        valid = jnp.ones((T,) + batch, bool) if request.valid is None else request.valid
        blocks = {k: split_blocks(a, seg, False) for k, a in extra.items()}

        @jax.checkpoint
        def segment(carry, inp):
            x, v, kw = inp
            return run(params, x, carry, v, **kw)

        final, ys = lax.scan(segment, state, (split_blocks(xs, seg, 0), split_blocks(valid, seg, False), blocks))
        return final, join_blocks(ys, T)


def _step_function(cell: Cell, pieces: CellFast, params: Any, xs: jax.Array, remat: Any,
                   rec_mask: jax.Array | None, plan: Plan) -> tuple[Callable[[Any, Any], tuple[Any, Any]], Any]:
    """``(step(state, input_t), inputs)`` for the loop: the projected step where the cell has one.

    The inputs are projected in one GEMM before the loop, or per step inside it: under remat, and where
    the plan says so for a gated cell (:func:`jlstm.core.loop.projects_in_loop`; on CPU from batch 8).
    """
    project, step_projected = pieces.project, pieces.step_projected
    if project is None or step_projected is None:
        if rec_mask is not None:
            raise ValueError(f"{cell.name}: recurrent dropout needs a cell with fast.project and "
                             f"fast.step_projected (build it with jlstm.make_cell); this cell has only a step.")
        return (lambda s, x: cell.step(params, s, x)), xs
    if remat is None and not projects_in_loop(plan, project, params, xs, cell.output_size):
        return (lambda s, xp: step_projected(params, s, xp, recurrent_mask=rec_mask)), project(params, xs)
    # Under remat the input projection runs inside the loop: a projected copy of the
    # whole sequence ([T, *batch, 4H] for an LSTM) would keep memory linear in T.
    return (lambda s, x: step_projected(params, s, project(params, x), recurrent_mask=rec_mask)), xs


def _zoneout(step, xp, state, T: int, regs: StepRegularisers, pieces: CellFast):
    """Wrap ``step`` so each state unit keeps its previous value with probability ``regs.zoneout``.

    With a key the keep-masks are sampled per step and unit (Krueger et al. 2017); without one
    the update is the expectation ``rate·old + (1-rate)·new``. The output follows the zoned state
    where the cell says how (``CellFast.output_of_state``).
    """
    rate, key = regs.zoneout, regs.zoneout_key
    emit = pieces.output_of_state or (lambda s, y: y)
    leaves, treedef = jax.tree.flatten(state)
    if key is None:
        def det_step(s, x):
            new, y = step(s, x)
            new = jax.tree.map(lambda n, o: (rate * o + (1.0 - rate) * n).astype(o.dtype), new, s)
            return new, emit(new, y)

        return det_step, xp
    keys = jax.random.split(key, len(leaves))
    keep = treedef.unflatten([jax.random.bernoulli(k, rate, (T,) + leaf.shape)
                              for k, leaf in zip(keys, leaves)])

    def rand_step(s, inp):
        x, keep_t = inp
        new, y = step(s, x)
        new = jax.tree.map(lambda n, o, kp: jnp.where(kp, o, n), new, s, keep_t)
        return new, emit(new, y)

    return rand_step, (xp, keep)
