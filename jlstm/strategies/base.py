"""The strategy contract: a frozen, hashable object with one method that evaluates a cell over time.

:func:`jlstm.scan` validates its arguments once, puts the sequence in processing order (time-major,
reversed under ``reverse=True``, zeroed at invalid steps) and hands it to a strategy's
:meth:`Strategy.evaluate` with a :class:`Request`: the valid steps, the resets, the regularisers the
layers add, the caller's loop options (for fallbacks and inner loops) and the routing plan.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import jax

from jlstm.core.plan import Plan
from jlstm.core.types import Cell, Params, State


class StepRegularisers(NamedTuple):
    """Per-step regularisers that the layers add to a scan (see :func:`jlstm.recurrent`).

    ``recurrent_mask`` ([*batch, R]) multiplies ``h_{t-1}`` in the recurrent matmul.
    ``zoneout`` keeps each unit of the previous state with that probability: sampled
    with ``zoneout_key``, or in expectation without it.
    """

    recurrent_mask: jax.Array | None = None
    zoneout: float = 0.0
    zoneout_key: jax.Array | None = None

    @property
    def active(self) -> bool:
        """Whether any regulariser acts (they act inside the step loop only)."""
        return self.recurrent_mask is not None or bool(self.zoneout)


NO_REGULARISERS = StepRegularisers()


class Request(NamedTuple):
    """Everything a strategy gets besides the cell, params, inputs and initial state.

    Attributes:
      valid: bool ``[T, *batch]`` (False: the step keeps the state and outputs zeros), or ``None``.
      resets: bool ``[T, *batch]`` in processing order, False wherever ``valid`` is: where True
        the step starts from ``reset_state`` instead of the carried state; or ``None``.
      reset_state: the cell's initial state (``cell.initial_state(params, batch)``), or ``None``.
      regularisers: the layers' recurrent dropout and zoneout.
      loop: the caller's :class:`jlstm.Sequential` options (unroll, remat, fast), which inner
        loops and a Newton method's fallback keep.
      plan: the routing table of the backend (:class:`jlstm.core.plan.Plan`).
    """

    valid: jax.Array | None
    resets: jax.Array | None
    reset_state: Any
    regularisers: StepRegularisers
    loop: Any
    plan: Plan


class Strategy(abc.ABC):
    """How a sequence is evaluated. Subclasses are frozen dataclasses: equal and hashable by value."""

    #: the string that names the strategy in ``jlstm.scan(..., method=...)``
    name: str = ""

    @abc.abstractmethod
    def evaluate(self, cell: Cell, params: Params, xs: jax.Array, state: State,
                 request: Request) -> tuple[State, jax.Array, Any]:
        """Evaluate ``cell`` over time-major ``xs [T, *batch, I]`` (processing order, zeroed at
        invalid steps) from ``state``: ``(final_state, ys [T, *batch, O], info)``.
        """

    @property
    def eager_only(self) -> bool:
        """Whether a model holding this strategy must keep its eager calls op by op, uncompiled
        (:func:`jlstm.core.eager.compiled_apply`): what it does eagerly differs from what it does traced."""
        return False

    def check(self, cell: Cell, request: Request, where: str) -> None:
        """Reject, at trace time, a cell or request this strategy cannot serve (default: the
        layers' step regularisers, which act inside the step loop alone)."""
        del cell
        require_no_regularisers(request, self.name, where)


def require_no_regularisers(request: Request, method: str, where: str) -> None:
    """Recurrent dropout and zoneout act inside the step loop: a strategy without one refuses them."""
    if request.regularisers.active:
        raise ValueError(f"{where}: recurrent dropout and zoneout act inside the step loop and need "
                         f"method='sequential', got method={method!r}; drop the regulariser or the method.")
