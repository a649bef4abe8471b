"""Stateful training steps: truncated back-propagation through time with a carried state.

A long sequence (a text, a signal) is cut into consecutive chunks. The recurrent state at
the end of one chunk is the initial state of the next, but the gradient stops at the chunk
boundary (truncated BPTT):

    s_in = reset ? s_0(params) : stop_gradient(s_prev)
    (loss, s_out), ∇ = value_and_grad(loss_fn)(params, s_in, chunk, key)

``reset`` is a bool per sequence of the batch: where it is True the carried state is
replaced by the model's initial state (a new document starts in that row).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jlstm.train.step import _global_norm

__all__ = ["StatefulLossFn", "make_stateful_eval_step", "make_stateful_train_step", "reset_state"]

StatefulLossFn = Callable[[Any, Any, Any, Any], Any]
"""``loss_fn(params, state, batch, key) -> (loss, new_state)`` or ``(loss, new_state, metrics)``."""


def reset_state(state: Any, initial: Any, reset: jax.Array | None) -> Any:
    """``initial`` where ``reset`` is True, ``state`` elsewhere, leaf by leaf.

    Args:
      state: the carried state pytree, every leaf ``[*batch, ...]``.
      initial: a state of the same structure (the model's ``initial_state(params, batch)``).
      reset: bool ``[*batch]``, or ``None`` (keep ``state`` everywhere).

    Returns:
      The mixed state.

    Example:
      >>> cell = jlstm.lstm(2)
      >>> s = jlstm.LSTMState(h=jnp.ones((3, 2)), c=jnp.ones((3, 2)))
      >>> z = cell.initial_state(cell.init(jax.random.key(0), 1), 3)
      >>> reset_state(s, z, jnp.array([True, False, True])).h[:, 0]
      Array([0., 1., 0.], dtype=float32)
    """
    if reset is None:
        return state
    reset = jnp.asarray(reset)
    if reset.dtype != jnp.bool_:
        raise TypeError(f"reset_state: reset must be a bool array [*batch], got dtype {reset.dtype}; "
                        f"pass e.g. jnp.array([True, False]) (True starts a new sequence in that row).")

    def mix(s, s0):
        if tuple(s.shape[:reset.ndim]) != tuple(reset.shape):
            raise ValueError(f"reset_state: reset has shape {tuple(reset.shape)} but a state leaf has "
                             f"shape {tuple(s.shape)}; reset needs one flag per sequence, the state's "
                             f"leading batch axes {tuple(s.shape[:reset.ndim])}.")
        r = reset.reshape(reset.shape + (1,) * (s.ndim - reset.ndim))
        return jnp.where(r, jnp.broadcast_to(s0, s.shape).astype(s.dtype), s)

    return jax.tree.map(mix, state, initial)


def _split(out: Any, where: str) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise TypeError(f"{where}: a stateful loss_fn must return (loss, new_state) or "
                        f"(loss, new_state, metrics_dict), got {type(out).__name__}"
                        + (f" of {len(out)} items" if isinstance(out, tuple) else "") + ".")
    loss, state = out[0], out[1]
    metrics = dict(out[2]) if len(out) == 3 else {}
    if getattr(loss, "shape", ()) != ():
        raise ValueError(f"{where}: loss_fn must return a scalar loss, got shape {loss.shape}; "
                         f"reduce it with a mean (see jlstm.train.losses).")
    return loss, state, metrics


def _incoming(params: Any, state: Any, reset: Any, initial_state: Callable | None, where: str) -> Any:
    state = jax.lax.stop_gradient(state)
    if reset is None:
        return state
    if initial_state is None:
        raise ValueError(f"{where}: got a reset flag but no initial_state; build the step with "
                         f"initial_state=model.initial_state so that reset rows can start afresh.")
    batch = tuple(jnp.shape(reset))
    return reset_state(state, initial_state(params, batch), reset)


def make_stateful_train_step(loss_fn: StatefulLossFn, optimizer: optax.GradientTransformation,
                             initial_state: Callable | None = None) -> Callable:
    """Build ``train_step(params, opt_state, state, batch, key=None, reset=None)``.

    The step returns ``(params, opt_state, new_state, metrics)``. The incoming ``state`` goes
    through ``lax.stop_gradient`` (truncated BPTT: no gradient crosses the chunk boundary);
    rows where ``reset`` is True start from ``initial_state(params, reset.shape)`` instead.
    ``metrics`` holds the loss function's metrics plus ``"loss"`` and ``"grad_norm"``. The
    step is pure: wrap it in ``jax.jit`` yourself.

    Args:
      loss_fn: ``loss_fn(params, state, batch, key) -> (loss, new_state[, metrics])``.
      optimizer: an optax ``GradientTransformation``.
      initial_state: ``initial_state(params, batch_shape) -> state`` (a model's), needed for
        ``reset``.

    Example:
      >>> enc = jlstm.recurrent(jlstm.lstm(4))
      >>> def loss_fn(params, state, xs, key):
      ...     state, ys = enc.apply(params, xs, state)
      ...     return jnp.mean(ys ** 2), state
      >>> step = jax.jit(make_stateful_train_step(loss_fn, optax.sgd(0.1), enc.initial_state))
      >>> params = enc.init(jax.random.key(0), 3)
      >>> state = enc.initial_state(params, 2)
      >>> for chunk in jnp.ones((3, 5, 2, 3)):   # 3 consecutive chunks of 5 steps, batch 2
      ...     params, opt_state, state, m = step(params, optax.sgd(0.1).init(params), state, chunk)
      >>> state.h.shape
      (2, 4)
    """
    if not callable(loss_fn):
        raise TypeError(f"make_stateful_train_step: loss_fn must be callable, got {type(loss_fn).__name__}.")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(f"make_stateful_train_step: optimizer must be an optax GradientTransformation such as "
                        f"optax.adam(1e-3), got {type(optimizer).__name__}.")
    where = "make_stateful_train_step"

    def wrapped(params, state, batch, key, reset):
        state = _incoming(params, state, reset, initial_state, where)
        loss, new_state, metrics = _split(loss_fn(params, state, batch, key), where)
        return loss, (new_state, metrics)

    def train_step(params, opt_state, state, batch, key=None, reset=None):
        grad_fn = jax.value_and_grad(wrapped, has_aux=True)
        (loss, (new_state, metrics)), grads = grad_fn(params, state, batch, key, reset)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics.update(loss=loss, grad_norm=_global_norm(grads))
        return params, opt_state, jax.lax.stop_gradient(new_state), metrics

    return train_step


def make_stateful_eval_step(loss_fn: StatefulLossFn, initial_state: Callable | None = None) -> Callable:
    """Build ``eval_step(params, state, batch, key=None, reset=None) -> (new_state, metrics)``.

    No gradients and no update; ``metrics`` has ``"loss"`` plus the loss function's metrics.
    """
    if not callable(loss_fn):
        raise TypeError(f"make_stateful_eval_step: loss_fn must be callable, got {type(loss_fn).__name__}.")

    def eval_step(params, state, batch, key=None, reset=None):
        state = _incoming(params, state, reset, initial_state, "make_stateful_eval_step")
        loss, new_state, metrics = _split(loss_fn(params, state, batch, key), "make_stateful_eval_step")
        metrics["loss"] = loss
        return new_state, metrics

    return eval_step
