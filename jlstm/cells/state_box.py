"""The box a cell's state cannot leave, whatever the inputs and params: ``CellFast.state_box``.

A GRU's ``h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}`` mixes ``n = tanh(·) ∈ [−1, 1]`` with the previous state, so
entry ``j`` stays in the interval spanned by ``[−1, 1]`` and ``h_0[j]``; an LSTM's ``h_t = o ⊙ tanh(c_t)``
stays in ``[−1, 1]``. The Newton methods project every iterate onto this box
(:mod:`jlstm.newton.method`): the true trajectory lies in it, so the projection moves each entry of an
iterate toward it, never away.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jlstm.core.types import State


def hull_box(**radius: float | None) -> Callable[[State], tuple[State, State]]:
    """A ``state_box`` for a NamedTuple state: field ``name`` within ``[−r, r]`` widened to hold the
    initial state's entries (``r = radius[name]``); fields not named, or named with ``None``, are unbounded.

    Example:
      >>> box = jlstm.cells.state_box.hull_box(h=1.0)
      >>> lo, hi = box(jlstm.cells.gru.GRUState(h=jnp.array([0.0, 3.0])))
      >>> lo.h.tolist(), hi.h.tolist()
      ([-1.0, -1.0], [1.0, 3.0])
    """

    def box(state: State) -> tuple[State, State]:
        lo, hi = {}, {}
        for name in state._fields:
            value, r = jnp.asarray(getattr(state, name)), radius.get(name)
            if r is None:
                lo[name], hi[name] = jnp.full_like(value, -jnp.inf), jnp.full_like(value, jnp.inf)
            else:
                lo[name], hi[name] = jnp.minimum(value, -r), jnp.maximum(value, r)
        return jax.tree.map(jax.lax.stop_gradient, (type(state)(**lo), type(state)(**hi)))

    return box
