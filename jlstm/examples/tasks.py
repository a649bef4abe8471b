"""Synthetic long-lag tasks from the LSTM literature, generated with a PRNG key."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jlstm.core import checks as _checks


class Batch(NamedTuple):
    """A batch of sequences: ``xs`` [T, B, features], ``ys`` targets."""

    xs: jax.Array
    ys: jax.Array


def adding_problem(key: jax.Array, batch_size: int, length: int) -> Batch:
    """The adding problem (Hochreiter & Schmidhuber 1997).

    Each step carries a value ``u ~ U(0, 1)`` and a marker. Exactly two steps are
    marked: one in the first half, one in the second. The target is the sum of the
    two marked values, so the first one must be remembered for up to ``length`` steps.
    Predicting the mean (1.0) gives an MSE of 1/6 ≈ 0.167.

    Returns:
      ``Batch(xs [length, batch, 2], ys [batch])``.
    """
    _checks.check_size("batch_size", batch_size)
    _checks.check_size("length", length, minimum=2)
    ku, k1, k2 = jax.random.split(key, 3)
    u = jax.random.uniform(ku, (length, batch_size))
    half = length // 2
    first = jax.random.randint(k1, (batch_size,), 0, half)
    second = jax.random.randint(k2, (batch_size,), half, length)
    t = jnp.arange(length)[:, None]
    marks = ((t == first[None]) | (t == second[None])).astype(jnp.float32)
    xs = jnp.stack([u, marks], axis=-1)
    ys = jnp.sum(u * marks, axis=0)
    return Batch(xs, ys)


def copy_first(key: jax.Array, batch_size: int, length: int, n_symbols: int = 4) -> Batch:
    """Remember the first symbol: a one-hot symbol at t=0, noise after; the target is that symbol.

    Returns:
      ``Batch(xs [length, batch, n_symbols], ys [batch] int)``; chance accuracy is 1/n_symbols.
    """
    _checks.check_size("batch_size", batch_size)
    _checks.check_size("length", length)
    _checks.check_size("n_symbols", n_symbols, minimum=2)
    ks, kn = jax.random.split(key)
    sym = jax.random.randint(ks, (batch_size,), 0, n_symbols)
    noise = jax.random.randint(kn, (length, batch_size), 0, n_symbols)
    seq = noise.at[0].set(sym)
    xs = jax.nn.one_hot(seq, n_symbols) * jnp.where(jnp.arange(length) == 0, 1.0, 0.5)[:, None, None]
    return Batch(xs, sym)
