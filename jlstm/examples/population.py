"""Model selection with a population: ``python -m jlstm.examples.population``.

``n`` LSTMs with log-spaced learning rates train together in one jit on the adding problem
(:mod:`jlstm.population`), and the best member by held-out loss is reported.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jlstm
from jlstm.distributed.population import (
    _l2_norm,
    best_member,
    init_population,
    init_population_opt_state,
    make_population_step,
)
from jlstm.examples.tasks import adding_problem


def _problem(hidden: int):
    """The adding problem's model: ``(init(key), loss_fn(params, data, key), train_step)``."""
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
        return optax.apply_updates(params, updates), opt_state, {**metrics, "grad_norm": _l2_norm(grads)}

    return init, loss_fn, opt, train_step


def run_example(n: int = 16, *, length: int = 50, hidden: int = 32, batch: int = 64, steps: int = 400,
                lr_range: tuple[float, float] = (1e-4, 1e-1), seed: int = 0, verbose: bool = True) -> dict:
    """Model selection: ``n`` LSTMs with log-spaced learning rates trained in one jit on the adding problem.

    Returns:
      ``{"learning_rates", "final_loss", "eval_loss", "best", "best_learning_rate", "seconds"}``;
      the losses are MSEs (predicting the mean scores about 0.167).
    """
    init, loss_fn, opt, train_step = _problem(hidden)
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
    eval_loss = np.asarray(jax.block_until_ready(jax.vmap(lambda p: loss_fn(p, eval_data, None)[0])(params)))
    final = np.asarray(losses[-20:]).mean(axis=0)
    best = best_member(eval_loss)
    result = {"learning_rates": np.asarray(lrs).tolist(), "final_loss": final.tolist(),
              "eval_loss": eval_loss.tolist(), "best": best, "best_learning_rate": float(lrs[best]),
              "seconds": time.perf_counter() - t0}
    if verbose:
        _report(result, hidden, length, steps)
    return result


def _report(result: dict, hidden: int, length: int, steps: int) -> None:
    lrs, final, eval_loss, best = (result[k] for k in ("learning_rates", "final_loss", "eval_loss", "best"))
    print(f"{len(lrs)} LSTMs (H={hidden}) on the adding problem (T={length}), {steps} steps in one jit, "
          f"{result['seconds']:.1f} s")
    print(" member  learning rate  train MSE  eval MSE")
    for i in range(len(lrs)):
        mark = "  <- best" if i == best else ""
        print(f" {i:6d}  {lrs[i]:13.2e}  {final[i]:9.4f}  {eval_loss[i]:8.4f}{mark}")
    print(f"best: member {best}, learning rate {lrs[best]:.2e}, eval MSE {eval_loss[best]:.4f} "
          f"(predicting the mean: 0.167)")


if __name__ == "__main__":  # pragma: no cover
    run_example()
