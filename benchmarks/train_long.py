"""Train one Adam step of an LSTM on a very long sequence through ``jlstm.scan(remat="segment")``.

    python -m benchmarks.train_long --length 1000000 --out benchmarks/results/train_long_cpu.json

Reports the compiled scratch memory, the wall time of the step, and whether the loss and
the gradients are finite.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import optax

import jlstm
from benchmarks.deer import write


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--remat", default="segment")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    T, B, H = args.length, args.batch, args.hidden
    cell = jlstm.lstm(H)
    params = (cell.init(jax.random.key(0), 2), jax.random.normal(jax.random.key(2), (H,)) / H ** 0.5)
    xs = jax.random.uniform(jax.random.key(1), (T, B, 2))
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)

    def loss(p):
        final, _ = jlstm.scan(cell, p[0], xs, remat=args.remat)
        return jnp.mean(jnp.square(final.h @ p[1] - 1.0))

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss)(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value, optax.tree.norm(grads)

    t0 = time.perf_counter()
    compiled = step.lower(params, opt_state).compile()
    compile_s = time.perf_counter() - t0
    temp = compiled.memory_analysis().temp_size_in_bytes / 2 ** 20
    t0 = time.perf_counter()
    new_params, _, value, gnorm = jax.block_until_ready(compiled(params, opt_state))
    result = {
        "T": T, "B": B, "H": H, "remat": args.remat, "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(), "jax": jax.__version__,
        "compile_s": round(compile_s, 2), "temp_mib": round(temp, 1),
        "step_s": round(time.perf_counter() - t0, 1), "loss": float(value), "grad_norm": float(gnorm),
        "finite": bool(jnp.isfinite(value) & jnp.isfinite(gnorm)
                       & all(jnp.isfinite(a).all() for a in jax.tree.leaves(new_params))),
    }
    print(json.dumps(result))
    if args.out:
        write(args.out, result)   # atomically
    return result


if __name__ == "__main__":
    main()
