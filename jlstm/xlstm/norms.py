"""The normalisations of xLSTM: a layer norm over the features and a per-head ("multi-head") norm.

Both divide by ``sqrt(var + eps)`` with the biased variance, as ``torch.nn.functional.layer_norm``
and ``group_norm`` do, and then scale (and shift, where a bias is kept). The ``xlstm`` package stores
each scale as a residual weight ``w`` with scale ``1 + w``; jlstm stores the scale itself.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["LayerNormParams", "layer_norm", "multihead_norm"]


class LayerNormParams(NamedTuple):
    """A layer norm's ``scale`` ``[E]`` and optional ``bias`` ``[E]`` (``None``: none, xLSTM's default)."""

    scale: jax.Array
    bias: jax.Array | None = None


def init_layer_norm(size: int, dtype, bias: bool = False) -> LayerNormParams:
    """Scale 1 and, with ``bias``, shift 0."""
    return LayerNormParams(jnp.ones((size,), dtype), jnp.zeros((size,), dtype) if bias else None)


def _normalise(x: jax.Array, eps: float) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + jnp.asarray(eps, x.dtype))


def layer_norm(params: LayerNormParams, x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Normalise ``x [..., E]`` over its last axis, then scale and shift.

    Example:
      >>> p = jlstm.xlstm.LayerNormParams(scale=jnp.full((4,), 2.0))
      >>> y = jlstm.xlstm.layer_norm(p, jnp.array([1.0, 2.0, 3.0, 4.0]))
      >>> [round(float(v), 2) for v in y]
      [-2.68, -0.89, 0.89, 2.68]
    """
    y = _normalise(x, eps) * params.scale
    return y if params.bias is None else y + params.bias


def multihead_norm(x: jax.Array, scale: jax.Array, heads: int, eps: float = 1e-5,
                   bias: jax.Array | None = None) -> jax.Array:
    """Normalise each head's units of ``x [..., heads·d]`` on their own, then scale ``[heads·d]``.

    This is ``torch.nn.functional.group_norm`` with one group per head, the output norm of the
    xLSTM's mLSTM and sLSTM layers.
    """
    shape = x.shape
    y = _normalise(x.reshape(shape[:-1] + (heads, shape[-1] // heads)), eps).reshape(shape) * scale
    return y if bias is None else y + bias
