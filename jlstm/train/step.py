"""Pure training and evaluation steps built from a loss function and an optax optimizer."""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

__all__ = ["LossFn", "make_eval_step", "make_train_step"]

LossFn = Callable[[Any, Any, Any], Any]
"""``loss_fn(params, batch, key) -> (loss, metrics)`` (or just ``loss``); ``key`` may be None."""


def _split_loss(out: Any, where: str) -> tuple[jax.Array, dict[str, jax.Array]]:
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        loss, metrics = out
    elif isinstance(out, tuple):
        raise TypeError(f"{where}: loss_fn must return loss or (loss, metrics_dict), got a tuple of "
                        f"{len(out)} items ({', '.join(type(o).__name__ for o in out)}).")
    else:
        loss, metrics = out, {}
    if getattr(loss, "shape", ()) != ():
        raise ValueError(f"{where}: loss_fn must return a scalar loss, got shape {loss.shape}; "
                         f"reduce it with a mean (see jlstm.train.losses).")
    return loss, dict(metrics)


def _global_norm(tree: Any) -> jax.Array:
    """``sqrt(Σ_leaves Σ g²)``: ``optax.tree.norm`` (``optax.global_norm`` in older optax)."""
    tree_mod = getattr(optax, "tree", None)
    if tree_mod is not None and hasattr(tree_mod, "norm"):
        return tree_mod.norm(tree)
    return optax.global_norm(tree)  # pragma: no cover - optax < 0.2.4


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> Callable:
    """Build ``train_step(params, opt_state, batch, key) -> (params, opt_state, metrics)``.

    One step computes ``(loss, metrics), grads = value_and_grad(loss_fn)(params, batch, key)``,
    ``grad_norm = ‖grads‖₂`` over all leaves (before any clipping the optimizer does), and
    applies ``optimizer.update``. The step is pure: wrap it in ``jax.jit`` yourself.

    Gradient clipping belongs to the optimizer:
    ``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))``.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)`` with a scalar ``loss`` and a
        dict of scalar metrics (or just the loss). ``key`` is the step's PRNG key (dropout)
        or ``None``.
      optimizer: an optax ``GradientTransformation``.

    Returns:
      ``train_step``; its ``metrics`` dict holds the loss function's metrics plus ``"loss"``
      and ``"grad_norm"``.

    Example:
      >>> def loss_fn(params, batch, key):
      ...     return jnp.mean((batch @ params["w"]) ** 2), {"w0": params["w"][0]}
      >>> optimizer = optax.sgd(0.1)
      >>> step = jax.jit(make_train_step(loss_fn, optimizer))
      >>> params = {"w": jnp.array([1.0, -1.0])}
      >>> params, opt_state, metrics = step(params, optimizer.init(params), jnp.eye(2), None)
      >>> params["w"], sorted(metrics)
      (Array([ 0.9, -0.9], dtype=float32), ['grad_norm', 'loss', 'w0'])
    """
    if not callable(loss_fn):
        raise TypeError(f"make_train_step: loss_fn must be callable, got {type(loss_fn).__name__}.")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(f"make_train_step: optimizer must be an optax GradientTransformation such as "
                        f"optax.adam(1e-3), got {type(optimizer).__name__}.")

    def wrapped(params, batch, key):
        return _split_loss(loss_fn(params, batch, key), "make_train_step")

    def train_step(params, opt_state, batch, key=None):
        (loss, metrics), grads = jax.value_and_grad(wrapped, has_aux=True)(params, batch, key)
        grad_norm = _global_norm(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics.update(loss=loss, grad_norm=grad_norm)
        return params, opt_state, metrics

    return train_step


def make_eval_step(loss_fn: LossFn) -> Callable:
    """Build ``eval_step(params, batch, key=None) -> metrics`` (``"loss"`` plus the loss's metrics).

    No gradients, no update; ``key=None`` keeps dropout off. Wrap it in ``jax.jit`` yourself.
    """
    if not callable(loss_fn):
        raise TypeError(f"make_eval_step: loss_fn must be callable, got {type(loss_fn).__name__}.")

    def eval_step(params, batch, key=None):
        loss, metrics = _split_loss(loss_fn(params, batch, key), "make_eval_step")
        metrics["loss"] = loss
        return metrics

    return eval_step
