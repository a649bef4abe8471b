"""The causal depthwise convolution of the xLSTM layers, with its window as part of the state.

Each feature is convolved on its own over the last ``K`` steps::

    y_t = b + Σ_{j=0}^{K-1} w[j] ⊙ x_{t-K+1+j}          (w [K, F]: the last row weighs the current step)

which is ``torch.nn.Conv1d(F, F, K, groups=F, padding=K-1)`` cut to the first ``T`` outputs, the
``xlstm`` package's ``CausalConv1d``. The inputs before the first step come from a *window*, the
last ``K - 1`` inputs of the previous chunk (zeros at the start), so a sequence cut into chunks,
each starting from the window the one before returned, gives the outputs of one call.

Steps that do not count (past a sequence's length, or masked out) neither enter the window nor
shift it: the window of a valid step holds the inputs of the ``K - 1`` valid steps before it. A
reset before step ``t`` empties the window, so ``y_t`` reads no input from before ``t``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["ConvParams", "causal_conv"]


class ConvParams(NamedTuple):
    """A depthwise causal convolution: ``w`` ``[K, F]`` (row ``K - 1`` weighs the current step) and
    ``b`` ``[F]`` or ``None``."""

    w: jax.Array
    b: jax.Array | None


def init_conv(key: jax.Array, kernel_size: int, features: int, dtype) -> ConvParams:
    """PyTorch's default for a depthwise ``Conv1d``: weights and bias uniform in ``±1/√K``."""
    bound = 1.0 / math.sqrt(kernel_size)
    kw, kb = jax.random.split(key)
    return ConvParams(jax.random.uniform(kw, (kernel_size, features), dtype, -bound, bound),
                      jax.random.uniform(kb, (features,), dtype, -bound, bound))


def empty_window(batch: tuple[int, ...], kernel_size: int, features: int, dtype) -> jax.Array:
    """The zero window ``[*batch, max(K - 1, 0), F]``."""
    return jnp.zeros(batch + (max(kernel_size - 1, 0), features), dtype)


def _weighted_sum(params: ConvParams, xe: jax.Array, T: int, alive: list[jax.Array] | None) -> jax.Array:
    """``y[t] = b + Σ_j w[j] ⊙ xe[t + j]`` over ``xe [K-1+T, *batch, F]``; ``alive[j]`` drops term j."""
    y = jnp.zeros((T,) + xe.shape[1:], xe.dtype)
    for j in range(params.w.shape[0]):
        term = params.w[j] * xe[j:j + T]
        y = y + (term if alive is None else jnp.where(alive[j][..., None], term, jnp.zeros((), term.dtype)))
    return y if params.b is None else y + params.b


def causal_conv(params: ConvParams, xs: jax.Array, window: jax.Array, valid: jax.Array | None = None,
                resets: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Convolve time-major ``xs [T, *batch, F]`` after ``window [*batch, K-1, F]``.

    Args:
      params: the kernel and bias.
      xs: the inputs, time-major.
      window: the last ``K - 1`` inputs before ``xs`` (zeros at the start of a sequence).
      valid: optional bool ``[T, *batch]``: steps that count (see the module docstring).
      resets: optional bool ``[T, *batch]``: True empties the window before that step.

    Returns:
      ``(ys [T, *batch, F], window)``, the window after the last valid step (outputs at invalid
      steps are meaningless: the layers zero them).

    Example:
      >>> p = jlstm.xlstm.ConvParams(w=jnp.array([[1.0], [10.0], [100.0]]), b=None)   # K = 3, F = 1
      >>> xs = jnp.arange(1.0, 6.0).reshape(5, 1, 1)                                   # T = 5, batch 1
      >>> ys, win = jlstm.xlstm.causal_conv(p, xs, jnp.zeros((1, 2, 1)))
      >>> ys[:, 0, 0].tolist(), win[0, :, 0].tolist()
      ([100.0, 210.0, 321.0, 432.0, 543.0], [4.0, 5.0])
    """
    T, batch = xs.shape[0], xs.shape[1:-1]
    xe = jnp.concatenate([jnp.moveaxis(window, -2, 0).astype(xs.dtype), xs])
    if valid is None and resets is None:
        return _weighted_sum(params, xe, T, None), jnp.moveaxis(xe[T:], 0, -2)
    if T == 0:
        return xs, window
    if valid is None:
        valid = jnp.ones(xs.shape[:-1], bool)
    K = params.w.shape[0]
    # the valid steps first, in time order: the window then slides over valid steps alone
    order = jnp.argsort(~valid, axis=0, stable=True)
    xe = jnp.concatenate([xe[:K - 1], jnp.take_along_axis(xs, order[..., None], axis=0)])
    alive = count = seen = None
    if resets is not None:
        count = jnp.cumsum(resets.astype(jnp.int32), axis=0)  # resets at or before each step
        seen = jnp.concatenate([jnp.zeros((K - 1,) + batch, jnp.int32), jnp.take_along_axis(count, order, 0)])
        alive = [seen[K - 1:] == seen[j:j + T] for j in range(K)]  # no reset between the input and the output
    ys = _weighted_sum(params, xe, T, alive)
    n_valid = jnp.cumsum(valid.astype(jnp.int32), axis=0)
    ys = jnp.take_along_axis(ys, jnp.maximum(n_valid - 1, 0)[..., None], axis=0)
    last = n_valid[-1][None] + jnp.arange(K - 1).reshape((K - 1,) + (1,) * len(batch))
    new = jnp.take_along_axis(xe, last[..., None], axis=0)
    if count is not None and seen is not None:
        kept = jnp.take_along_axis(seen, last, axis=0) == count[-1][None]
        new = jnp.where(kept[..., None], new, jnp.zeros((), new.dtype))
    return ys, jnp.moveaxis(new, 0, -2)
