"""Utilities on the time axis, written once: √T blocks, padding into blocks, valid steps, reversal.

Every array here is time-major (time leads). Blocks of about √T steps keep every loop of a blocked
evaluation short (the affine scans, segment remat, the gradient's chunks, the mLSTM's chunkwise
form all split time this way).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer


def sqrt_length(T: int) -> int:
    """⌈√T⌉ for ``T >= 1`` (and 1 for ``T <= 1``): a block length that makes all loops about √T long.

    Example:
      >>> [sqrt_length(T) for T in (0, 1, 2, 9, 10, 16384)]
      [1, 1, 2, 3, 4, 128]
    """
    return max(1, math.isqrt(max(T - 1, 0)) + 1)


def block_count(T: int, length: int) -> int:
    """How many blocks of ``length`` steps cover ``T`` steps (the last one may be partial)."""
    return -(-T // length)


def split_blocks(a: jax.Array, length: int, fill: Any = 0) -> jax.Array:
    """``[T, ...] -> [n, length, ...]``: pad time with ``fill`` to a whole number of blocks, then split."""
    T = a.shape[0]
    n = block_count(T, length)
    pad = n * length - T
    if pad:
        a = jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], fill, a.dtype)])
    return a.reshape((n, length) + a.shape[1:])


def join_blocks(a: jax.Array, T: int) -> jax.Array:
    """The inverse of :func:`split_blocks`: ``[n, length, ...] -> [T, ...]`` (the padding dropped)."""
    return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])[:T]


def check_concrete_lengths(xs: Any, lengths: Any, time_major: bool, where: str) -> None:
    """:func:`check_length_values` ahead of a call that will trace ``lengths`` (:mod:`jlstm.core.eager`).

    Only integer lengths of an ``xs`` with a time axis: any other mistake is left to the call's own
    checks, which name it better.
    """
    if lengths is None or np.ndim(xs) < 2:
        return
    check_length_values(lengths, np.shape(xs)[0 if time_major else -2], where)


def valid_steps(
    T: int,
    batch_shape: tuple[int, ...],
    lengths: jax.Array | None,
    mask: jax.Array | None,
    where: str,
) -> tuple[jax.Array | None, jax.Array | None]:
    """Check ``lengths``/``mask`` and combine them into one boolean ``[T, *batch]`` array.

    Returns ``(valid, lengths)``; ``valid`` is ``None`` when every step is valid.
    """
    valid = None
    if lengths is not None:
        if not hasattr(lengths, "dtype"):
            lengths = jnp.asarray(lengths)
        if not jnp.issubdtype(lengths.dtype, jnp.integer) or lengths.dtype == jnp.bool_:
            raise TypeError(
                f"{where}: lengths must be integers, got dtype {lengths.dtype}; pass "
                f"lengths.astype(jnp.int32) (a count of valid steps per sequence).")
        if tuple(lengths.shape) != tuple(batch_shape):
            raise ValueError(
                f"{where}: lengths has shape {tuple(lengths.shape)}, expected the batch shape "
                f"{tuple(batch_shape)} of xs (one length per sequence).")
        check_length_values(lengths, T, where)
        t = jnp.arange(T).reshape((T,) + (1,) * len(batch_shape))
        valid = t < lengths[None]
    if mask is not None:
        mask = time_flags("mask", mask, T, batch_shape, where, "True = a step to process")
        valid = mask if valid is None else valid & mask
    return valid, lengths


def time_flags(name: str, flags: Any, T: int, batch_shape: tuple[int, ...], where: str, meaning: str) -> jax.Array:
    """Check a boolean ``[T, *batch]`` array of per-step flags (a mask, resets): dtype and shape."""
    if not hasattr(flags, "dtype"):
        flags = jnp.asarray(flags)
    if flags.dtype != jnp.bool_:
        raise TypeError(f"{where}: {name} must be boolean ({meaning}), got dtype {flags.dtype}; "
                        f"pass {name}.astype(bool).")
    if tuple(flags.shape) != (T,) + tuple(batch_shape):
        raise ValueError(f"{where}: {name} has shape {tuple(flags.shape)}, expected {(T,) + tuple(batch_shape)} "
                         f"([T, *batch], time-major like xs).")
    return flags


def check_length_values(lengths: Any, T: int, where: str) -> None:
    """Reject lengths outside ``[0, T]`` when they are concrete (traced lengths cannot be read)."""
    if isinstance(lengths, Tracer):
        return
    values = np.asarray(lengths)
    if np.issubdtype(values.dtype, np.integer) and values.size and (values.max() > T or values.min() < 0):
        raise ValueError(
            f"{where}: lengths must lie in [0, T] = [0, {T}], got values from {values.min()} to "
            f"{values.max()}; a length counts the valid steps of a sequence, so pad xs to the longest "
            f"sequence or clip the lengths.")


def reverse_index(T: int, lengths: jax.Array) -> jax.Array:
    """``[T, *batch]`` indices that reverse each sequence's valid prefix and leave its padding.

    The permutation is its own inverse, so the same indices restore the original order.
    """
    t = jnp.arange(T).reshape((T,) + (1,) * lengths.ndim)
    L = jnp.clip(lengths, 0, T)[None]
    return jnp.where(t < L, L - 1 - t, t)


def _gather_time(x: jax.Array, idx: jax.Array) -> jax.Array:
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - idx.ndim))
    return jnp.take_along_axis(x, jnp.broadcast_to(idx, x.shape), axis=0)


def flip_time(tree: Any, lengths: jax.Array | None) -> Any:
    """Reverse every leaf along time: whole sequences, or each valid prefix given lengths."""
    if lengths is None:
        return jax.tree.map(lambda a: jnp.flip(a, axis=0), tree)
    T = jax.tree.leaves(tree)[0].shape[0]
    idx = reverse_index(T, lengths)
    return jax.tree.map(lambda a: _gather_time(a, idx), tree)
