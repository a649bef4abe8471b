"""A training script as a user writes it for several hosts, used by tests/distributed/test_distributed.py.

It runs unchanged alone (``python user_train_script.py out.npz``) or as every process of a
``python -m jlstm.launch --local 2 -- user_train_script.py out.npz`` run: each process loads its
share of the batch, the step is data parallel, and process 0 writes the trained params.
``--fail-on-process 1`` makes that process raise at the third step, as a bug would.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jlstm
from jlstm import parallel
from jlstm.train import make_train_step

BATCH, LENGTH, STEPS = 8, 10, 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--fail-on-process", type=int, default=None)
    args = parser.parse_args()

    model = jlstm.recurrent(jlstm.lstm(8))
    k_model, k_head = jax.random.split(jax.random.key(0))        # the same params in every process
    params = {"rnn": model.init(k_model, 2), "w": jax.random.normal(k_head, (8,)) / 8 ** 0.5}

    def loss_fn(params, batch, key):
        final, _ = model.apply(params["rnn"], batch.xs)
        return jnp.mean((final.h @ params["w"] - batch.ys) ** 2)

    opt = optax.adam(1e-2)
    mesh = parallel.data_mesh()                                  # every device of every process
    step = parallel.data_parallel_step(make_train_step(loss_fn, opt), mesh)
    params, opt_state = parallel.replicate((params, opt.init(params)), mesh)
    share = parallel.local_batch_slice(BATCH, mesh)              # this process's sequences
    for i in range(STEPS):
        if i == 2 and jax.process_index() == args.fail_on_process:
            raise RuntimeError(f"a bug in the user's script, on process {jax.process_index()}")
        batch = jax.tree.map(np.asarray, jlstm.tasks.adding_problem(jax.random.key(100 + i), BATCH, LENGTH))
        local = type(batch)(batch.xs[:, share], batch.ys[share])
        params, opt_state, metrics = step(params, opt_state, parallel.shard_batch(local, mesh), None)
        print(f"process {jax.process_index()} step {i}: loss {float(metrics['loss']):.6f}", flush=True)
    if jax.process_index() == 0:
        np.savez(args.out, *[np.asarray(x) for x in jax.tree.leaves(params)])


if __name__ == "__main__":
    main()
