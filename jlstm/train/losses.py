"""Masked losses and metrics for sequence models.

Padding counts in neither the loss nor the metrics: every function here takes a mask
(or per-example weights) and returns the weighted mean over the valid entries,

    L = Σ_n w_n ℓ_n / max(Σ_n w_n, ε),

so that an all-padding batch gives 0 rather than NaN. Masked entries are replaced by
harmless values *before* the loss is computed, so NaN or garbage in the padding changes
neither the loss nor its gradient (a plain ``mask * loss`` would leak NaN gradients).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

__all__ = [
    "accuracy",
    "classification_accuracy",
    "language_model",
    "masked_mean",
    "perplexity",
    "per_step_regression",
    "sequence_classification",
    "token_accuracy",
]

_EPS = 1e-12


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", ()))


def _check_logits_labels(fn: str, logits: Any, labels: Any, label_name: str) -> None:
    if not hasattr(logits, "shape") or len(logits.shape) < 1:
        raise ValueError(f"{fn}: logits must be an array [..., num_classes], got {type(logits).__name__} "
                         f"of shape {_shape(logits)}.")
    if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        raise TypeError(
            f"{fn}: {label_name} must hold integer class indices, got dtype {jnp.asarray(labels).dtype}; "
            f"for one-hot targets pass {label_name}=targets.argmax(-1).")
    if _shape(labels) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"{fn}: {label_name} has shape {_shape(labels)} but logits has shape {tuple(logits.shape)}; "
            f"{label_name} must have the logits' shape without the class axis, "
            f"{tuple(logits.shape[:-1])}.")


def _check_mask(fn: str, name: str, mask: Any, shape: tuple[int, ...]) -> jax.Array:
    """A float weight array of ``shape`` (all ones when ``mask`` is None)."""
    if mask is None:
        return jnp.ones(shape, jnp.float32)
    mask = jnp.asarray(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{fn}: {name} has shape {tuple(mask.shape)}, expected {tuple(shape)} (one entry per "
            f"{'example' if name == 'weights' else 'step and example'}); True/1 marks valid entries.")
    return mask.astype(jnp.float32)


def masked_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``Σ mask·values / max(Σ mask, ε)``; masked entries may hold NaN without effect.

    Args:
      values: any array.
      mask: bool or float weights broadcastable to ``values``; ``None`` means all valid.

    Returns:
      A float32 scalar (0 when the mask is all zero).
    """
    values = jnp.asarray(values)
    if mask is None:
        return jnp.mean(values.astype(jnp.float32))
    w = jnp.broadcast_to(jnp.asarray(mask).astype(jnp.float32), values.shape)
    safe = jnp.where(w > 0, values.astype(jnp.float32), 0.0)
    return jnp.sum(safe * w) / jnp.maximum(jnp.sum(w), _EPS)


def sequence_classification(logits: jax.Array, labels: jax.Array,
                            weights: jax.Array | None = None) -> jax.Array:
    """Softmax cross-entropy of one label per sequence, weighted mean over examples.

    ``ℓ_b = -log softmax(logits_b)[labels_b]``, ``L = Σ_b w_b ℓ_b / Σ_b w_b``.

    Args:
      logits: [B, C] (or [*batch, C]) unnormalised scores.
      labels: [B] int class indices in ``[0, C)``.
      weights: optional [B] per-example weights (0 drops an example, e.g. a padding row).

    Returns:
      The scalar loss (float32).

    Example:
      >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
      >>> round(float(sequence_classification(logits, jnp.array([0, 0, 1]), jnp.array([1.0, 1.0, 0.0]))), 4)
      1.1269
    """
    _check_logits_labels("sequence_classification", logits, labels, "labels")
    w = _check_mask("sequence_classification", "weights", weights, tuple(logits.shape[:-1]))
    safe_logits = jnp.where(w[..., None] > 0, logits.astype(jnp.float32), 0.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(safe_logits, labels)
    return masked_mean(ce, w)


def classification_accuracy(logits: jax.Array, labels: jax.Array,
                            weights: jax.Array | None = None) -> jax.Array:
    """Weighted fraction of examples whose arg-max class equals the label.

    Args:
      logits: [..., C]; labels: [...] int; weights: optional [...] (0 = ignore).

    Returns:
      A float32 scalar in [0, 1].
    """
    _check_logits_labels("classification_accuracy", logits, labels, "labels")
    w = _check_mask("classification_accuracy", "weights", weights, tuple(logits.shape[:-1]))
    hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return masked_mean(hit, w)


accuracy = classification_accuracy


def per_step_regression(preds: jax.Array, targets: jax.Array,
                        mask: jax.Array | None = None) -> jax.Array:
    """Mean squared error per time step, averaged over the valid steps.

    ``ℓ_{t,b} = mean_f (preds_{t,b,f} - targets_{t,b,f})²``,
    ``L = Σ_{t,b} m_{t,b} ℓ_{t,b} / Σ_{t,b} m_{t,b}``.

    Args:
      preds: [T, B, F] (or [T, B]) predictions.
      targets: the same shape; padded or missing entries may hold anything, NaN included.
      mask: [T, B] bool/float, True where the step is valid; ``None`` = all valid.

    Returns:
      The scalar loss (float32).
    """
    fn = "per_step_regression"
    if _shape(preds) != _shape(targets):
        raise ValueError(f"{fn}: preds has shape {_shape(preds)} but targets has shape "
                         f"{_shape(targets)}; they must match.")
    if len(_shape(preds)) < 2:
        raise ValueError(f"{fn}: preds must be [T, B] or [T, B, F], got shape {_shape(preds)}.")
    m = _check_mask(fn, "mask", mask, tuple(preds.shape[:2]))
    m_full = m.reshape(m.shape + (1,) * (preds.ndim - 2))
    diff = jnp.where(m_full > 0, preds.astype(jnp.float32) - targets.astype(jnp.float32), 0.0)
    per_step = jnp.mean(jnp.square(diff).reshape(m.shape + (-1,)), axis=-1)
    return masked_mean(per_step, m)


def language_model(logits: jax.Array, tokens: ArrayLike, mask: jax.Array | None = None) -> jax.Array:
    """Per-token softmax cross-entropy (mean negative log-likelihood over valid tokens).

    ``L = Σ_{t,b} m_{t,b} (-log softmax(logits_{t,b})[tokens_{t,b}]) / Σ_{t,b} m_{t,b}``;
    ``exp(L)`` is the perplexity (see :func:`perplexity`).

    Args:
      logits: [T, B, V] scores for the token at each step (already aligned with ``tokens``:
        for next-token prediction pass ``logits[:-1]`` and ``tokens[1:]``).
      tokens: [T, B] int target tokens.
      mask: [T, B] bool/float, True for real tokens; ``None`` = all real.

    Returns:
      The scalar loss in nats per token (float32).
    """
    _check_logits_labels("language_model", logits, tokens, "tokens")
    m = _check_mask("language_model", "mask", mask, tuple(logits.shape[:-1]))
    safe_logits = jnp.where(m[..., None] > 0, logits.astype(jnp.float32), 0.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(safe_logits, tokens)
    return masked_mean(ce, m)


def token_accuracy(logits: jax.Array, tokens: ArrayLike, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of valid tokens whose arg-max prediction is right (padding ignored)."""
    _check_logits_labels("token_accuracy", logits, tokens, "tokens")
    m = _check_mask("token_accuracy", "mask", mask, tuple(logits.shape[:-1]))
    return masked_mean((jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32), m)


def perplexity(mean_nll: jax.Array) -> jax.Array:
    """``exp(mean negative log-likelihood per token)``, e.g. ``perplexity(language_model(...))``."""
    return jnp.exp(mean_nll)
