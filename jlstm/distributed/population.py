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

Run ``python -m jlstm.population`` for the example: 16 LSTMs with learning rates from
1e-4 to 1e-1 trained together on the adding problem, reporting the best member.
"""

from __future__ import annotations

import time
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
    "run_example",
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


def run_example(
    n: int = 16,
    *,
    length: int = 50,
    hidden: int = 32,
    batch: int = 64,
    steps: int = 400,
    lr_range: tuple[float, float] = (1e-4, 1e-1),
    seed: int = 0,
    verbose: bool = True,
) -> dict:
    """Model selection: ``n`` LSTMs with log-spaced learning rates trained in one jit on the adding problem.

    Returns:
      ``{"learning_rates", "final_loss", "eval_loss", "best", "best_learning_rate", "seconds"}``;
      the losses are MSEs (predicting the mean scores about 0.167).
    """
    import optax

    import jlstm
    from jlstm.examples.tasks import adding_problem

    cell = jlstm.lstm(hidden)

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"cell": cell.init(k1, 2), "w": jax.random.normal(k2, (hidden,)) / np.sqrt(hidden),
                "b": jnp.zeros(())}

    def loss_fn(params, data, key):
        del key
        state, _ = jlstm.scan(cell, params["cell"], data.xs)
        loss = jnp.mean((state.h @ params["w"] + params["b"] - data.ys) ** 2)
        return loss, {"loss": loss}

    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)

    def train_step(params, opt_state, data, key):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, data, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {**metrics,
                                                                 "grad_norm": _l2_norm(grads)}

    lrs = jnp.logspace(np.log10(lr_range[0]), np.log10(lr_range[1]), n)
    k_init, k_data, k_eval = jax.random.split(jax.random.key(seed), 3)
    params = init_population(init, k_init, n)
    opt_state = init_population_opt_state(opt, params, learning_rate=lrs)
    pstep = make_population_step(train_step)

    @jax.jit
    def train(params, opt_state, key):
        def body(carry, k):
            p, s = carry
            p, s, m = pstep(p, s, adding_problem(k, batch, length), k)
            return (p, s), m["loss"]

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jax.random.split(key, steps))
        return params, opt_state, losses

    t0 = time.perf_counter()
    params, opt_state, losses = train(params, opt_state, k_data)
    eval_data = adding_problem(k_eval, 1000, length)
    eval_loss = jax.vmap(lambda p: loss_fn(p, eval_data, None)[0])(params)
    eval_loss = np.asarray(jax.block_until_ready(eval_loss))
    seconds = time.perf_counter() - t0
    final = np.asarray(losses[-20:]).mean(axis=0)
    best = best_member(eval_loss)
    result = {"learning_rates": np.asarray(lrs).tolist(), "final_loss": final.tolist(),
              "eval_loss": eval_loss.tolist(), "best": best, "best_learning_rate": float(lrs[best]),
              "seconds": seconds}
    if verbose:
        print(f"{n} LSTMs (H={hidden}) on the adding problem (T={length}), {steps} steps in one jit, "
              f"{seconds:.1f} s")
        print(" member  learning rate  train MSE  eval MSE")
        for i in range(n):
            mark = "  <- best" if i == best else ""
            print(f" {i:6d}  {float(lrs[i]):13.2e}  {final[i]:9.4f}  {eval_loss[i]:8.4f}{mark}")
        print(f"best: member {best}, learning rate {float(lrs[best]):.2e}, eval MSE {eval_loss[best]:.4f} "
              f"(predicting the mean: 0.167)")
    return result


if __name__ == "__main__":  # pragma: no cover
    run_example()
