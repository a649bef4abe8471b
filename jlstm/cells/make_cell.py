"""Build a :class:`jlstm.Cell` from an input projection and a projected step."""

from __future__ import annotations

from typing import Any, Callable

from jlstm.core.types import (
    Cell,
    CellConfig,
    CellFast,
    CheckFn,
    InitFn,
    InitialStateFn,
    ProjectFn,
    SequenceFn,
    StepProjectedFn,
)


def make_cell(
    *,
    init: InitFn,
    initial_state: InitialStateFn,
    project: ProjectFn,
    step_projected: StepProjectedFn,
    output_size: int,
    name: str = "cell",
    config: CellConfig | None = None,
    check: CheckFn | None = None,
    sequence: SequenceFn | None = None,
    methods: tuple[tuple[str, Callable[..., Any]], ...] = (),
    auto_method: Callable[[int], str] | None = None,
    step_decoupled: Callable[..., Any] | None = None,
    jacobian_blocks: int | None = None,
    jacobian_exact: bool = False,
) -> Cell:
    """A cell whose ``step`` is derived: ``step(p, s, x) = step_projected(p, s, project(p, x))``.

    :func:`jlstm.scan` applies ``project`` to the whole sequence at once (one GEMM over all
    steps) and loops over ``step_projected``; since ``step`` is built from the same two
    functions, a loop over ``step`` gives the same answer by construction.

    Args:
      init, initial_state: as in :class:`jlstm.Cell`.
      project: ``project(params, x) -> xp``, the part of the step that reads ``x`` alone.
      step_projected: ``step_projected(params, state, xp, recurrent_mask=None) -> (state, y)``.
      output_size, name, config: as in :class:`jlstm.Cell`.
      check: optional ``check(params, state=None, x=None, where=...)``, run by ``step``
        and by :func:`jlstm.scan` at trace time.
      sequence, methods, auto_method: optional whole-sequence forms (:class:`jlstm.CellFast`).
      step_decoupled: optional step with a diagonal state Jacobian, for quasi-DEER
        (:class:`jlstm.CellFast`).
      jacobian_blocks, jacobian_exact: the Jacobian's per-unit block structure (:class:`jlstm.CellFast`).

    Example:
      >>> import jax.numpy as jnp
      >>> def init(key, n):
      ...     return {"w": jax.random.normal(key, (n, 3)), "u": jnp.eye(3) * 0.5}
      >>> cell = jlstm.make_cell(
      ...     init=init,
      ...     initial_state=lambda p, b=(): jnp.zeros(jlstm.batch_tuple(b) + (3,)),
      ...     project=lambda p, x: x @ p["w"],
      ...     step_projected=lambda p, h, xp, recurrent_mask=None: (
      ...         (h := jnp.tanh(xp + (h if recurrent_mask is None else h * recurrent_mask) @ p["u"])), h),
      ...     output_size=3, name="elman")
      >>> p = cell.init(jax.random.key(0), 2)
      >>> h, y = cell.step(p, cell.initial_state(p, 4), jnp.ones((4, 2)))
      >>> y.shape
      (4, 3)
    """

    def step(params, state, x):
        if check is not None:
            check(params, state, x, f"{name}.step")
        return step_projected(params, state, project(params, x))

    fast = CellFast(project=project, step_projected=step_projected, sequence=sequence, check=check,
                    methods=tuple(methods), auto_method=auto_method,
                    step_decoupled=step_decoupled, jacobian_blocks=jacobian_blocks, jacobian_exact=jacobian_exact)
    return Cell(init=init, initial_state=initial_state, step=step, output_size=output_size, name=name,
                config=config, fast=fast)
