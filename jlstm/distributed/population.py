"""Populations: train many independent models, each with its own hyperparameters, in one program.

``jax.vmap`` over a leading *member* axis turns a train step for one model into a train
step for ``n`` models. Each member has its own parameters, optimizer state, dropout key
and hyperparameters; the members never interact, so the result equals training them one
by one, in one compiled program and one dispatch per step. This is model selection as
the LSTM literature does it (a sweep over learning rates, sizes, seeds) at the cost of
one wider batch.

Hyperparameters that vary per member must be *data*, not Python constants closed over
by the optimizer: build the optimizer with ``optax.inject_hyperparams`` so that, e.g.,
the learning rate lives in the optimizer state, then write one value per member into it::

    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    train_step = make_train_step(loss_fn, opt)            # the usual one-model step
    params = init_population(lambda k: model.init(k, 2), key, 16)
    opt_state = init_population_opt_state(opt, params, learning_rate=jnp.logspace(-4, -1, 16))
    step = jax.jit(make_population_step(train_step))
    params, opt_state, metrics = step(params, opt_state, batch, key)   # metrics["loss"]: [16]

Run ``python -m jlstm.examples.population`` for the example: 16 LSTMs with learning rates from
1e-4 to 1e-1 trained together on the adding problem, reporting the best member.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "best_member",
    "get_member",
    "init_population",
    "init_population_opt_state",
    "make_population_step",
    "population_size",
    "set_hyperparams",
]


def init_population(init_fn: Callable[[jax.Array], Any], key: jax.Array, n: int) -> Any:
    """Initialise ``n`` independent parameter sets, stacked along a new leading axis.

    Args:
      init_fn: ``init_fn(key) -> params`` for one member, e.g.
        ``lambda k: model.init(k, input_size)``.
      key: a PRNG key; member ``i`` is initialised with ``jax.random.split(key, n)[i]``.
      n: the population size.

    Returns:
      The params of ``n`` members: every leaf gets a leading axis of size ``n``.

    Example:
      >>> params = init_population(lambda k: jlstm.lstm(8).init(k, 2), jax.random.key(0), 4)
      >>> params.w_h.shape
      (4, 8, 32)
    """
    if not callable(init_fn):
        raise TypeError(f"init_population: init_fn must be callable as init_fn(key) -> params, got "
                        f"{type(init_fn).__name__}; for a model write lambda k: model.init(k, input_size).")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"init_population: n must be a positive int (the population size), got {n!r}.")
    return jax.vmap(init_fn)(jax.random.split(key, int(n)))


def _l2_norm(tree: Any) -> jax.Array:
    """``sqrt(sum of squares over all leaves)``, without optax's version-dependent helpers."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def population_size(tree: Any) -> int:
    """The size of the leading member axis of a population pytree (checked to agree on all leaves)."""
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(tree)}
    size = next(iter(sizes)) if len(sizes) == 1 else None
    if size is None:
        raise ValueError(f"population_size: every leaf must have the same leading member axis, got leading "
                         f"sizes {sorted(map(str, sizes))}; build the population with init_population.")
    return int(size)


def _is_hp_state(node: Any) -> bool:
    """An ``optax.inject_hyperparams`` state (``InjectHyperparamsState`` and its stateful variant)."""
    fields = getattr(node, "_fields", ())
    return "hyperparams" in fields and "inner_state" in fields and isinstance(node.hyperparams, dict)


def _hyperparam_states(opt_state: Any) -> list:
    """Every ``optax.inject_hyperparams`` state inside ``opt_state``."""
    found = []
    jax.tree.map(lambda node: found.append(node) if _is_hp_state(node) else None, opt_state,
                 is_leaf=_is_hp_state)
    return found


def set_hyperparams(opt_state: Any, **values: Any) -> Any:
    """Write hyperparameters into the ``optax.inject_hyperparams`` state of a population.

    Args:
      opt_state: a population's optimizer state (leading member axis ``n``) from an
        optimizer built with ``optax.inject_hyperparams``; chained ones work too.
      **values: ``name=value`` with ``value`` a scalar (same for all members) or an array
        of shape ``[n]`` (one per member).

    Returns:
      The optimizer state with ``hyperparams[name]`` of shape ``[n]`` for every name given.
      Only constant hyperparameters can be set this way: one given as a schedule is
      recomputed from its step count at every update.
    """
    if not _hyperparam_states(opt_state):
        raise ValueError("set_hyperparams: opt_state holds no optax.InjectHyperparamsState; build the "
                         "optimizer with optax.inject_hyperparams, e.g. "
                         "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3).")
    n = population_size(opt_state)
    seen = set()

    def rewrite(node):
        if not _is_hp_state(node):
            return node
        hp = dict(node.hyperparams)
        for name, value in values.items():
            if name not in hp:
                continue
            seen.add(name)
            old = hp[name]
            value = jnp.asarray(value, dtype=jnp.result_type(old))
            if value.ndim == 0:
                value = jnp.broadcast_to(value, (n,))
            if value.shape != (n,):
                raise ValueError(f"set_hyperparams: {name} must be a scalar or have shape ({n},) (one value "
                                 f"per member), got shape {tuple(value.shape)}.")
            hp[name] = value
        return node._replace(hyperparams=hp)

    out = jax.tree.map(rewrite, opt_state, is_leaf=_is_hp_state)
    missing = set(values) - seen
    if missing:
        known = sorted({k for s in _hyperparam_states(opt_state) for k in s.hyperparams})
        raise ValueError(f"set_hyperparams: no injected hyperparameter named {sorted(missing)}; the "
                         f"optimizer state has {known}.")
    return out


def init_population_opt_state(optimizer: Any, params: Any, **hyperparams: Any) -> Any:
    """``optimizer.init`` for every member, then per-member hyperparameters.

    Args:
      optimizer: an ``optax.GradientTransformation``; to vary a hyperparameter per member,
        build it with ``optax.inject_hyperparams``.
      params: population params from :func:`init_population`.
      **hyperparams: passed to :func:`set_hyperparams`, e.g.
        ``learning_rate=jnp.logspace(-4, -1, n)``.

    Returns:
      The stacked optimizer state (leading member axis).
    """
    opt_state = jax.vmap(optimizer.init)(params)
    return set_hyperparams(opt_state, **hyperparams) if hyperparams else opt_state


def make_population_step(
    train_step: Callable[[Any, Any, Any, jax.Array], tuple[Any, Any, Any]],
    *,
    shared_batch: bool = True,
) -> Callable[[Any, Any, Any, jax.Array], tuple[Any, Any, Any]]:
    """Vectorise a one-model train step over a population.

    Args:
      train_step: ``train_step(params, opt_state, batch, key) -> (params, opt_state, metrics)``
        for one model (the ``jlstm.train.make_train_step`` contract).
      shared_batch: every member trains on the same batch (True), or ``batch`` has a leading
        member axis with one batch per member (False).

    Returns:
      ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)`` where params,
      optimizer state and every metric have a leading member axis. ``key`` is split into one
      key per member (``jax.random.split(key, n)[i]`` for member ``i``). Not jitted: wrap
      it in ``jax.jit``.
    """
    if not callable(train_step):
        raise TypeError(f"make_population_step: train_step must be callable, got {type(train_step).__name__}.")
    vstep = jax.vmap(train_step, in_axes=(0, 0, None if shared_batch else 0, 0))

    def step(params, opt_state, batch, key):
        n = population_size(params)
        return vstep(params, opt_state, batch, jax.random.split(key, n))

    return step


def get_member(tree: Any, i: int) -> Any:
    """Member ``i`` of a population pytree (its params, optimizer state or metrics)."""
    return jax.tree.map(lambda x: x[i], tree)


def best_member(scores: Any, *, mode: str = "min") -> int:
    """The index of the best member: the smallest score (``mode="min"``, a loss) or the largest."""
    if mode not in ("min", "max"):
        raise ValueError(f"best_member: mode must be 'min' or 'max', got {mode!r}.")
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isfinite(s), s, np.inf if mode == "min" else -np.inf)
    return int(np.argmin(s) if mode == "min" else np.argmax(s))
