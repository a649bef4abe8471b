"""Resets for the Newton methods: the reset flags become one more input of the step.

``s_t = f(r_t ? s_init : s_{t-1}, x_t)``: the wrapped step reads its reset flag from the last input
column, so a reset is part of the map the Newton methods linearise. Its state Jacobian is exactly
zero at a reset step (``jnp.where`` picks the constant), and the linear solves need nothing new.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jlstm.core.loop import select
from jlstm.core.types import Cell


def with_reset_input(cell: Cell) -> Cell:
    """A cell whose input is ``[x, r]`` (``r`` 1.0 at a reset): the step restarts from ``cell.initial_state``."""

    def step(params: Any, state: Any, xr: jax.Array) -> tuple[Any, jax.Array]:
        x, r = xr[..., :-1], xr[..., -1] > 0.5
        fresh = cell.initial_state(params, x.shape[:-1])
        return cell.step(params, select(r, fresh, state), x)

    return Cell(init=cell.init, initial_state=cell.initial_state, step=step, output_size=cell.output_size,
                name=f"{cell.name} with resets")


def append_resets(xs: jax.Array, resets: jax.Array) -> jax.Array:
    """``[T, *batch, I]`` inputs and ``[T, *batch]`` flags as ``[T, *batch, I + 1]`` inputs."""
    return jnp.concatenate([xs, resets[..., None].astype(xs.dtype)], axis=-1)
