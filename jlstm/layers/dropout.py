"""Dropout masks for the sequence layers; each takes an explicit PRNG key."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout(key: jax.Array, rate: float, x: jax.Array) -> jax.Array:
    """Inverted dropout: zero each element with probability ``rate``, scale the rest by 1/(1-rate)."""
    if rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)


def variational_mask(key: jax.Array, rate: float, shape: tuple[int, ...], dtype) -> jax.Array:
    """One inverted-dropout mask per sequence, reused at every step (Gal & Ghahramani 2016)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return (keep / (1.0 - rate)).astype(dtype)


def check_key(key, where: str) -> None:
    """Check that ``key`` is a PRNG key (new-style ``jax.random.key`` or legacy uint32[2])."""
    if key is None:
        return
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(
                f"{where}: key must be a single PRNG key, got a batch of keys of shape {key.shape}; "
                f"pass one key such as jax.random.key(0).")
        return
    if dtype == jnp.uint32 and getattr(key, "shape", None) == (2,):
        return
    raise TypeError(
        f"{where}: key must be a PRNG key from jax.random.key(seed), got "
        f"{type(key).__name__} with dtype {dtype} and shape {getattr(key, 'shape', None)}; "
        f"pass key=jax.random.key(0) to enable dropout, or key=None for inference.")
