"""Weight initialisers for the gated cells.

Each initialiser follows ``jax.nn.initializers``: ``init(key, shape, dtype) -> array``.
Gate blocks are initialised one at a time, so an orthogonal recurrent matrix is
orthogonal within each gate (as in Keras and Flax), not only across the whole
``(H, k*H)`` block.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, tuple, jnp.dtype], jax.Array]

glorot_uniform: Initializer = jax.nn.initializers.glorot_uniform()
orthogonal: Initializer = jax.nn.initializers.orthogonal()
zeros: Initializer = jax.nn.initializers.zeros


def per_gate(init: Initializer, key: jax.Array, rows: int, units: int, gates: int, dtype) -> jax.Array:
    """Initialise a ``(rows, gates*units)`` matrix one ``(rows, units)`` block at a time."""
    keys = jax.random.split(key, gates)
    low = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    build = jnp.float32 if low else dtype  # some initialisers (orthogonal) have no bf16 kernel
    return jnp.concatenate([init(k, (rows, units), build) for k in keys], axis=-1).astype(dtype)


def uniform(scale: float) -> Initializer:
    """U(-scale, scale), PyTorch's default for recurrent layers with scale = 1/sqrt(H)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init
