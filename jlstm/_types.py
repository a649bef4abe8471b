"""The two contracts of jlstm: a cell (one time step) and a sequence model."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any
State = Any


class Cell(NamedTuple):
    """A recurrent cell: a named tuple of pure functions plus its static configuration.

    Attributes:
      init: ``init(key, input_size) -> params``.
      initial_state: ``initial_state(params, batch_shape=()) -> state``, all zeros.
      step: ``step(params, state, x) -> (state, y)`` with ``x`` of shape
        ``[*batch, input_size]`` and ``y`` of shape ``[*batch, output_size]``.
      project: ``project(params, xs) -> xp``, the part of the step that depends on the
        input alone. It is applied to a whole sequence at once (one GEMM over all
        steps) before the time loop.
      step_projected: ``step_projected(params, state, xp, recurrent_mask=None) -> (state, y)``,
        the rest of the step. ``step(p, s, x) == step_projected(p, s, project(p, x))``.
        ``recurrent_mask`` multiplies the recurrent input ``h_{t-1}`` inside the
        recurrent matmul only (variational recurrent dropout).
      check: ``check(params, state=None, x=None, where="...")`` validates, at trace
        time, that params (and optionally a state and an input) belong to this cell.
      hidden_size: number of units H.
      output_size: size of ``y`` (H, or the projection size of an LSTMP).
      name: a short description such as ``"lstm(128, peephole='diagonal')"``.
      fused: ``None``, or a whole-sequence implementation
        ``fused(params, xs, state, valid, unroll) -> (state, ys)`` used by
        :func:`jlstm.scan` when nothing else (remat, dropout) wraps the step.
    """

    init: Callable[[PRNGKey, int], Params]
    initial_state: Callable[..., State]
    step: Callable[[Params, State, Array], tuple[State, Array]]
    project: Callable[[Params, Array], Any]
    step_projected: Callable[..., tuple[State, Array]]
    check: Callable[..., None]
    hidden_size: int
    output_size: int
    name: str
    fused: Callable[..., tuple[State, Array]] | None = None

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"Cell({self.name})"


class SequenceModel(NamedTuple):
    """A sequence model: ``init`` and ``apply`` as pure functions.

    Attributes:
      init: ``init(key, input_size) -> params``.
      apply: ``apply(params, xs, state=None, *, lengths=None, mask=None, key=None,
        time_major=True) -> (final_state, ys)``. ``key`` switches dropout and zoneout
        on; without it the model is deterministic (inference).
      initial_state: ``initial_state(params, batch_shape=()) -> state``.
      output_size: the size of the last axis of ``ys``.
      name: a short description.
    """

    init: Callable[[PRNGKey, int], Params]
    apply: Callable[..., tuple[State, Array]]
    initial_state: Callable[..., State]
    output_size: int
    name: str

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"SequenceModel({self.name})"
