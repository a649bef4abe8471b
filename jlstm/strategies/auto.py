"""``Auto``: every backend and shape decision of an evaluation, in one place."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jlstm.core.plan import Plan, current_plan
from jlstm.core.types import Cell
from jlstm.strategies.base import Request, Strategy
from jlstm.strategies.forms import Chunkwise, Parallel
from jlstm.strategies.sequential import Sequential

FORMS: dict[str, type[Strategy]] = {"parallel": Parallel, "chunkwise": Chunkwise}


@dataclasses.dataclass(frozen=True)
class Auto(Strategy):
    """The default strategy: picks the evaluation for this cell, sequence length and backend.

    * The backend's routing table (:class:`jlstm.core.plan.Plan`, ``plan=None``: the default
      backend's) decides the loop's unroll, where the fused LSTM projects its inputs, whether
      the Pallas kernel may run, and which evaluation an affine recurrence takes; the plan
      travels with the request to the kernels, which ask no one else.
    * A cell that declares a choice (``CellFast.auto_method``: the mLSTM takes its parallel
      form up to ``parallel_max_length`` and its chunkwise form beyond; the min cells take
      their parallel form on accelerators from ``plan.parallel_from_T``) gets it, unless the
      layers' step regularisers need the loop.
    * A cell that declares its recurrence diagonal-linear (``CellFast.linear``) takes the
      parallel form where the plan does (``plan.parallel_from_T``).
    * Everything else runs :class:`Sequential` with the caller's loop options.

    Example:
      >>> cell = jlstm.mlstm(8, num_heads=2, parallel_max_length=64)
      >>> jlstm.Auto().choose(cell, 50), jlstm.Auto().choose(cell, 100)
      (Parallel(), Chunkwise(chunk_size=None))
    """

    plan: Plan | None = None
    name = "auto"

    def resolve_plan(self) -> Plan:
        return self.plan if self.plan is not None else current_plan()

    def choose(self, cell: Cell, T: int, loop: Sequential | None = None, regularised: bool = False) -> Strategy:
        """The strategy this cell gets for ``T`` steps (``loop``: the caller's loop options)."""
        loop = loop if loop is not None else Sequential()
        fast = cell.fast
        if regularised or fast is None:
            return loop
        if fast.auto_method is not None:
            name = fast.auto_method(T)
            return FORMS[name]() if name in FORMS else loop
        start = self.resolve_plan().parallel_from_T
        if fast.linear is not None and start is not None and T >= start:
            return Parallel()                  # a declared linear recurrence: the plan's threshold
        return loop

    def check(self, cell: Cell, request: Request, where: str) -> None:
        """Any cell and any request: the regularisers act inside this loop."""

    def evaluate(self, cell: Cell, params: Any, xs: jax.Array, state: Any,
                 request: Request) -> tuple[Any, jax.Array, Any]:
        if self.plan is not None:                      # an explicit plan reaches the kernels too
            request = request._replace(plan=self.plan)
        chosen = self.choose(cell, xs.shape[0], request.loop, request.regularisers.active)
        return chosen.evaluate(cell, params, xs, state, request)
