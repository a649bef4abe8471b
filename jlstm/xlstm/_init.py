"""The initialisers of the ``xlstm`` package's layers, written from their formulas (private)."""

from __future__ import annotations

import math

import jax


def small_init(key: jax.Array, shape: tuple[int, ...], dim: int, dtype) -> jax.Array:
    """Normal with standard deviation ``sqrt(2 / (5·dim))`` (Nguyen & Salazar 2019)."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / (5.0 * dim))


def wang_init(key: jax.Array, shape: tuple[int, ...], dim: int, num_blocks: int, dtype) -> jax.Array:
    """Normal with standard deviation ``2 / (num_blocks·√dim)``, for the projections into the residual."""
    return jax.random.normal(key, shape, dtype) * (2.0 / num_blocks / math.sqrt(dim))
