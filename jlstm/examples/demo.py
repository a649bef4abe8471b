"""The founding article's thesis in one command: an LSTM bridges a long lag that a plain RNN cannot.

Both models read adding-problem sequences (Hochreiter & Schmidhuber 1997) and must
output the sum of two marked values, the first of which lies up to ``length`` steps
back. Predicting the mean scores an MSE of 1/6 ≈ 0.167; "solved" means an MSE below 0.01
on fresh sequences.
"""

from __future__ import annotations

import sys
import time
from typing import Any, NamedTuple, TextIO

import jax
import jax.numpy as jnp
import optax
from tqdm.auto import tqdm

import jlstm
from jlstm.examples.tasks import adding_problem

BASELINE_MSE = 1.0 / 6.0
SOLVED_MSE = 0.01


class DemoResult(NamedTuple):
    name: str
    test_mse: float
    seconds: float
    solved: bool


def _readout_init(key: jax.Array, hidden: int):
    return (jax.random.normal(key, (hidden,)) / jnp.sqrt(hidden), jnp.zeros(()))


class _Progress:
    """A tqdm bar on a terminal; a plain line every tenth of the run when stderr is a file or pipe.

    A redirected tqdm bar writes a carriage-return update per refresh (hundreds of KB per run), so
    off a terminal the demo prints ``name: step i/n, mse x`` ten times instead.
    """

    def __init__(self, name: str, steps: int, enabled: bool, stream: TextIO | None = None):
        self.name, self.steps, self.enabled = name, steps, enabled
        self.stream = sys.stderr if stream is None else stream
        tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=steps, desc=f"{name:>16}", leave=True, file=self.stream) if tty else None
        self.every = max(1, steps // 10)

    def update(self, i: int, loss: jax.Array) -> None:
        last = i == self.steps - 1
        if self.bar is not None:
            self.bar.update(1)
            if i % 50 == 0 or last:
                self.bar.set_postfix(mse=f"{float(loss):.4f}")
        elif self.enabled and ((i + 1) % self.every == 0 or last):
            print(f"{self.name:>16}: step {i + 1}/{self.steps}, mse {float(loss):.4f}", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_adding(cell: jlstm.Cell, *, length: int, steps: int, batch_size: int = 64,
                 learning_rate: float = 3e-3, seed: int = 0, progress: bool = True) -> DemoResult:
    """Train ``cell`` with a linear readout of its final ``h`` on the adding problem."""
    key = jax.random.key(seed)
    k_cell, k_out, k_data = jax.random.split(key, 3)
    params: Any = (cell.init(k_cell, 2), _readout_init(k_out, cell.output_size))
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))
    opt_state = opt.init(params)

    def loss_fn(params, xs, ys):
        cell_params, (w, b) = params
        final, _ = jlstm.scan(cell, cell_params, xs)
        return jnp.mean(jnp.square(final.h @ w + b - ys))

    @jax.jit
    def train_step(params, opt_state, k):
        batch = adding_problem(k, batch_size, length)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch.xs, batch.ys)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    report = _Progress(cell.name, steps, progress)
    for i in range(steps):
        params, opt_state, loss = train_step(params, opt_state, jax.random.fold_in(k_data, i))
        report.update(i, loss)
    report.close()
    test = adding_problem(jax.random.key(seed + 10_000), 1024, length)
    mse = float(jax.jit(loss_fn)(params, test.xs, test.ys))
    return DemoResult(cell.name, mse, time.perf_counter() - start, mse < SOLVED_MSE)


def run_demo(length: int = 100, steps: int = 2000, hidden: int = 32, seed: int = 0,
             progress: bool = True) -> list[DemoResult]:
    """Train an LSTM and a plain RNN on the adding problem and print what each learned."""
    print(f"Adding problem, T={length}: output the sum of two marked values; the first mark "
          f"lies up to {length} steps back.\nPredicting the mean scores MSE {BASELINE_MSE:.3f}; "
          f"'solved' means test MSE < {SOLVED_MSE}.\n")
    results = [train_adding(cell, length=length, steps=steps, seed=seed, progress=progress)
               for cell in (jlstm.lstm(hidden), jlstm.simple_rnn(hidden))]
    print(f"\n{'model':>16} | {'test MSE':>9} | {'vs mean-predictor':>17} | {'time':>6} | verdict")
    for r in results:
        if r.solved:
            verdict = "solved"
        elif r.test_mse > 0.5 * BASELINE_MSE:
            verdict = "failed: close to predicting the mean"
        else:
            verdict = "partly learned"
        print(f"{r.name:>16} | {r.test_mse:9.4f} | {r.test_mse / BASELINE_MSE:16.1%} | "
              f"{r.seconds:5.1f}s | {verdict}")
    return results
