"""The reference for resets: each episode run alone, by a Python loop over ``cell.step``.

A batch row with resets holds several episodes; the reference splits it at its resets and runs
each episode by itself, the first from the row's initial state and every later one from
``cell.initial_state`` (zeros). Invalid steps keep the state and output zeros. Nothing here
knows about resets inside a loop: the episodes are separate Python loops, so a gradient cannot
cross from one episode into an earlier one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def episodes(resets_row: np.ndarray) -> list[list[int]]:
    """The steps of one batch row grouped by episode: ``[[0, 1, 2], [3, 4], ...]`` (a reset opens one)."""
    out: list[list[int]] = [[]]
    for t, r in enumerate(np.asarray(resets_row, bool)):
        if r and out[-1]:
            out.append([])
        out[-1].append(t)
    return out


def run_episodes(cell, params, xs, state, resets, valid=None):
    """``(final_state, ys)`` of ``cell`` over time-major ``xs`` [T, B, I] from ``state`` [B, ...].

    ``resets`` and ``valid`` are NumPy bool [T, B] (``valid=None``: every step); a reset at an
    invalid step does nothing, as in :func:`jlstm.scan`.
    """
    T, B = xs.shape[:2]
    valid = np.ones((T, B), bool) if valid is None else np.asarray(valid, bool)
    resets = np.asarray(resets, bool) & valid
    finals, columns = [], []
    for b in range(B):
        row_state = jax.tree.map(lambda a: a[b], state)
        ys_b = [None] * T
        for steps in episodes(resets[:, b]):
            s = cell.initial_state(params, ()) if resets[steps[0], b] else row_state
            for t in steps:
                new, y = cell.step(params, s, xs[t, b])
                if valid[t, b]:
                    s, ys_b[t] = new, y
                else:
                    ys_b[t] = jnp.zeros_like(y)
            row_state = s
        finals.append(row_state)
        columns.append(jnp.stack(ys_b))
    final = jax.tree.map(lambda *leaves: jnp.stack(leaves), *finals)
    return final, jnp.stack(columns, axis=1)
