"""Small dense read-outs for putting heads on a sequence encoder.

A head is a plain pytree (:class:`DenseParams`, or a tuple of them) with pure
``*_init``/``*_apply`` functions, so a classifier is an encoder's params and a head's
params side by side::

    encoder = jlstm.recurrent(jlstm.lstm(32))
    params = (encoder.init(k1, 8), dense_init(k2, 32, n_classes))

    def logits(params, xs, lengths):
        final, _ = encoder.apply(params[0], xs, lengths=lengths)
        return dense_apply(params[1], final.h)
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jlstm.core import checks as _checks

__all__ = ["DenseParams", "dense_apply", "dense_init", "last_output", "mlp_apply", "mlp_init"]

_glorot = jax.nn.initializers.glorot_uniform()


class DenseParams(NamedTuple):
    """An affine map ``y = x @ w + b``: ``w`` is (in, out), ``b`` is (out,)."""

    w: jax.Array
    b: jax.Array


def dense_init(key: jax.Array, in_size: int, out_size: int, *,
               kernel_init: Callable = _glorot, dtype=jnp.float32) -> DenseParams:
    """Glorot-uniform weights and zero bias (Keras' ``Dense`` defaults).

    Args:
      key: a PRNG key.
      in_size, out_size: the feature sizes.
      kernel_init: ``init(key, shape, dtype)``.
      dtype: the parameter dtype.

    Returns:
      :class:`DenseParams` with ``w`` (in_size, out_size) and ``b`` (out_size,).
    """
    _checks.check_size("in_size", in_size)
    _checks.check_size("out_size", out_size)
    return DenseParams(kernel_init(key, (in_size, out_size), dtype), jnp.zeros((out_size,), dtype))


def dense_apply(params: DenseParams, x: jax.Array, activation: Callable | None = None) -> jax.Array:
    """``activation(x @ w + b)`` for ``x`` of shape [..., in]; returns [..., out]."""
    if not isinstance(params, DenseParams):
        raise TypeError(f"dense_apply: params must be DenseParams (from dense_init), got "
                        f"{type(params).__name__}.")
    _checks.check_features(x, params.w.shape[0], "dense_apply")
    y = x @ params.w + params.b
    return y if activation is None else activation(y)


def mlp_init(key: jax.Array, sizes: Sequence[int], *, dtype=jnp.float32) -> tuple[DenseParams, ...]:
    """A stack of dense layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``."""
    if len(sizes) < 2:
        raise ValueError(f"mlp_init: sizes needs at least an input and an output size, got {list(sizes)}.")
    keys = jax.random.split(key, len(sizes) - 1)
    return tuple(dense_init(k, a, b, dtype=dtype) for k, a, b in zip(keys, sizes[:-1], sizes[1:]))


def mlp_apply(params: Sequence[DenseParams], x: jax.Array, activation: Callable = jnp.tanh,
              final_activation: Callable | None = None) -> jax.Array:
    """Apply :func:`mlp_init` layers: ``activation`` between layers, ``final_activation`` last."""
    for k, p in enumerate(params):
        last = k == len(params) - 1
        x = dense_apply(p, x, final_activation if last else activation)
    return x


def last_output(ys: jax.Array, lengths: jax.Array | None = None, *, time_major: bool = True) -> jax.Array:
    """The output at each sequence's last valid step.

    Args:
      ys: [T, B, F] outputs (``[B, T, F]`` with ``time_major=False``).
      lengths: [B] int valid lengths; ``None`` takes step T-1. A length of 0 gives zeros.

    Returns:
      [B, F].
    """
    if not time_major:
        ys = jnp.swapaxes(ys, 0, 1)
    if lengths is None:
        return ys[-1]
    lengths = jnp.asarray(lengths)
    idx = jnp.clip(lengths - 1, 0, ys.shape[0] - 1)
    picked = jnp.take_along_axis(ys, idx[None, :, None], axis=0)[0]
    return jnp.where((lengths > 0)[:, None], picked, jnp.zeros((), ys.dtype))
