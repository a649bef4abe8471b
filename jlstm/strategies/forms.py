"""A cell's own whole-sequence forms: the parallel form and the chunkwise form (mLSTM, min cells)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jlstm.core.linear import linear_form
from jlstm.core.types import Cell
from jlstm.strategies.base import Request, Strategy


def cell_forms(cell: Cell) -> dict[str, Any]:
    """The whole-sequence forms a cell declares (``CellFast.methods``), by name. A cell that declares
    its recurrence diagonal-linear (``CellFast.linear``) has a ``"parallel"`` form by that alone:
    :func:`jlstm.linear_recurrence` over the whole sequence."""
    if cell.fast is None:
        return {}
    forms = dict(cell.fast.methods)
    if cell.fast.linear is not None:
        forms.setdefault("parallel", linear_form(cell))
    return forms


class _Form(Strategy):
    """Runs the cell's form named :attr:`name`, with the caller's unroll and remat."""

    def check(self, cell: Cell, request: Request, where: str) -> None:
        forms = cell_forms(cell)
        if self.name not in forms:
            supported = ("auto", "sequential", *forms, "deer", "quasi_deer", "elk", "quasi_elk")
            raise ValueError(f"{where}: method={self.name!r} is not supported by {cell.name}; it supports "
                             f"{', '.join(map(repr, supported))} (its own forms: {sorted(forms) or 'none'}).")
        super().check(cell, request, where)

    def options(self) -> dict[str, Any]:
        """Keyword options this form passes to the cell's form function."""
        return {}

    def evaluate(self, cell: Cell, params: Any, xs: jax.Array, state: Any,
                 request: Request) -> tuple[Any, jax.Array, None]:
        form = cell_forms(cell)[self.name]
        loop = request.loop
        unroll = request.plan.unroll if loop.unroll is None else loop.unroll
        extra = self.options()
        if request.resets is not None:
            extra["resets"] = request.resets
        final, ys = form(params, xs, state, request.valid, unroll=unroll, remat=loop.remat, **extra)
        return final, ys, None


@dataclasses.dataclass(frozen=True)
class Parallel(_Form):
    """The cell's parallel form (all steps at once): ``method=jlstm.Parallel()`` or ``"parallel"``.

    The mLSTM's quadratic form over T, the min cells' linear recurrence in O(log T) depth.
    """

    name = "parallel"


@dataclasses.dataclass(frozen=True)
class Chunkwise(_Form):
    """The cell's chunkwise form: parallel inside chunks, a short loop over chunks (the mLSTM).

    Args:
      chunk_size: steps per chunk; ``None`` takes the cell's own (``mlstm(..., chunk_size=64)``).

    Example:
      >>> cell = jlstm.mlstm(16, num_heads=2)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> _, ys = jlstm.scan(cell, params, jnp.ones((20, 4)), method=jlstm.Chunkwise(chunk_size=8))
      >>> ys.shape
      (20, 16)
    """

    chunk_size: int | None = None
    name = "chunkwise"

    def __post_init__(self) -> None:
        size = self.chunk_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"jlstm.Chunkwise: chunk_size must be a positive int or None, got {size!r}.")

    def options(self) -> dict[str, Any]:
        return {} if self.chunk_size is None else {"chunk_size": self.chunk_size}
