"""Synthetic long-lag tasks from the LSTM literature, generated with a PRNG key, and a short training run on one.

:func:`adding_problem` and :func:`copy_first` make batches; :func:`train_on_adding` trains a cell on the
adding problem (the ``trained`` params of notebook 07 and of ``benchmarks/deer.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import jlstm
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


def train_on_adding(cell: jlstm.Cell, steps: int = 400, *, length: int = 64, batch_size: int = 32,
                    learning_rate: float = 1e-2, clip_norm: float = 1.0, seed: int = 0) -> tuple[Any, jax.Array]:
    """Train ``cell`` on the adding problem: ``steps`` Adam steps, gradients clipped to a global norm.

    The model is the cell followed by a linear read-out with a bias of its last output,
    ``ys[-1] @ w + b``, trained on the mean squared error; ``w`` and ``b`` start at zero and the
    cell's params at ``cell.init(jax.random.key(seed), 2)``. Step ``i`` draws a fresh batch of
    :func:`adding_problem` from ``jax.random.split(jax.random.key(seed + 1), steps)[i]``. The whole
    run is one jitted ``lax.scan`` (compiled once per call), run with the sequential scan.

    Predicting the mean scores 1/6; a loss well below that means the cell learned to carry the
    first marked value (with the defaults, a ParaGRU(32) or ParaLSTM(32) ends below 0.05).

    Args:
      cell: a :class:`jlstm.Cell` that reads 2 input features (value, marker).
      steps: the number of Adam steps (>= 1).
      length: the sequence length T of every batch (>= 2).
      batch_size: the sequences per step.
      learning_rate: Adam's step size.
      clip_norm: the global gradient norm each step's gradient is clipped to (``optax.clip_by_global_norm``).
      seed: the cell's init key is ``key(seed)``, the batches come from ``key(seed + 1)``.

    Returns:
      ``(params, losses)``: the cell's trained params (the read-out is dropped) and the training
      loss of each step, a float32 array of shape ``[steps]`` (``losses[i]`` is the loss before
      step ``i``'s update).
    """
    _checks.check_size("steps", steps)
    _checks.check_size("length", length, minimum=2)
    _checks.check_size("batch_size", batch_size)
    for name, value in (("learning_rate", learning_rate), ("clip_norm", clip_norm)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}; pass e.g. {name}=0.01.")
    params = {"cell": cell.init(jax.random.key(seed), 2), "w": jnp.zeros((cell.output_size,)), "b": jnp.zeros(())}
    opt = optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(learning_rate))

    def loss(p, key):
        batch = adding_problem(key, batch_size, length)
        _, ys = jlstm.scan(cell, p["cell"], batch.xs)
        return jnp.mean((ys[-1] @ p["w"] + p["b"] - batch.ys) ** 2)

    @jax.jit
    def run(p):
        def one(carry: Any, key: jax.Array) -> tuple[Any, jax.Array]:
            p, s = carry
            value, g = jax.value_and_grad(loss)(p, key)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), value

        (p, _), losses = jax.lax.scan(one, (p, opt.init(p)), jax.random.split(jax.random.key(seed + 1), steps))
        return p["cell"], losses

    return run(params)
