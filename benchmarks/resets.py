"""The cost of resets on the fused LSTM: ``jlstm.scan(..., resets=)`` against the same call without
resets, and against a hand-written wrapper cell on the step loop, measured in one run.

Three implementations of the same LSTM over the same batch:

* ``plain``: ``jlstm.scan(cell, params, xs)``, the fused path without resets;
* ``resets``: ``jlstm.scan(cell, params, xs, resets=r)``, the fused path with resets;
* ``wrapper``: what a user writes without ``resets=``: a cell whose step reads the reset flag from an
  extra input channel and calls ``cell.step(params, where(r, 0, state), x)``, run with ``fast=False``.

The resets are episode ends drawn at random, each step ending an episode with probability
``--p-reset`` (1/32 by default, a rollout of several short episodes). Modes: ``fwd`` (the outputs)
and ``fwd+bwd`` (gradients of a weighted sum of the outputs with respect to the params and the
inputs). The implementations are timed round-robin, repeat after repeat, so that the load of a
shared machine falls on all of them alike; the JSON records the median and best wall-clock and
process CPU times, the ratios ``resets / plain`` and ``wrapper / resets`` (by median wall and by
median CPU time), and the largest difference between the ``resets`` and ``wrapper`` outputs.

Usage::

    python -m benchmarks.resets                              # CPU -> results/resets_cpu.json
    python -m benchmarks.resets --cases 32x128x128x256 --repeats 30
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys

from benchmarks.deer import RESULTS, _max_diff, write
from benchmarks.scan import device_name, first_call, timed_call_cpu

DEFAULT_CASES = "32x128x128x256,8x256x32x64"   # BxTxIxH: the CPU perf bar, and a small policy network
IMPLS = ("plain", "resets", "wrapper")


def wrapper_cell(cell):
    """A user's reset wrapper: the input's last channel is the reset flag, applied before ``cell.step``."""
    import jax
    import jax.numpy as jnp

    import jlstm

    def step(params, state, x):
        fresh = x[..., -1:] > 0.5
        state = jax.tree.map(lambda s: jnp.where(fresh, jnp.zeros_like(s), s), state)
        return cell.step(params, state, x[..., :-1])

    return jlstm.Cell(init=cell.init, initial_state=cell.initial_state, step=step,
                      output_size=cell.output_size, name=f"reset_wrapper({cell.name})")


def runners(B: int, T: int, I: int, H: int, p_reset: float, mode: str, seed: int = 0) -> tuple[dict, dict]:
    """``({impl: run()}, {impl: outputs})``: compiled calls of the three implementations on one batch."""
    import jax
    import jax.numpy as jnp

    import jlstm

    cell = jlstm.lstm(H)
    k = jax.random.split(jax.random.key(seed), 4)
    params = cell.init(k[0], I)
    xs = jax.random.normal(k[1], (T, B, I))
    resets = jax.random.bernoulli(k[2], p_reset, (T, B))
    ct = jax.random.normal(k[3], (T, B, H))
    wrapped = wrapper_cell(cell)
    flag = resets[..., None].astype(xs.dtype)
    forwards = {
        "plain": lambda p, x: jlstm.scan(cell, p, x)[1],
        "resets": lambda p, x: jlstm.scan(cell, p, x, resets=resets)[1],
        "wrapper": lambda p, x: jlstm.scan(wrapped, p, jnp.concatenate([x, flag], -1), fast=False)[1],
    }
    runs, outs = {}, {}
    for name, fwd in forwards.items():
        if mode == "fwd":
            fn = jax.jit(fwd)
        else:
            fn = jax.jit(jax.grad(lambda p, x, f=fwd: jnp.sum(f(p, x) * ct), argnums=(0, 1)))
        outs[name] = fn(params, xs)
        runs[name] = lambda fn=fn: jax.block_until_ready(fn(params, xs))
    return runs, outs


def run_case(B: int, T: int, I: int, H: int, mode: str, repeats: int, p_reset: float) -> dict:
    runs, outs = runners(B, T, I, H, p_reset, mode)
    compile_s = {name: first_call(run) for name, run in runs.items()}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):                      # round-robin: shared-machine noise hits all alike
        for name, run in runs.items():
            w, c = timed_call_cpu(run)
            wall[name].append(w)
            cpu[name].append(c)
    med = {n: statistics.median(v) for n, v in wall.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    import jax

    return {"B": B, "T": T, "I": I, "H": H, "mode": mode,
            "impls": {n: {"median_ms": round(med[n], 3), "min_ms": round(min(wall[n]), 3),
                          "median_cpu_ms": round(med_cpu[n], 3), "compile_s": round(compile_s[n], 3)}
                      for n in runs},
            "resets_over_plain": round(med["resets"] / med["plain"], 3),
            "resets_over_plain_cpu": round(med_cpu["resets"] / med_cpu["plain"], 3),
            "wrapper_over_resets": round(med["wrapper"] / med["resets"], 3),
            "wrapper_over_resets_cpu": round(med_cpu["wrapper"] / med_cpu["resets"], 3),
            "max_abs_diff_resets_vs_wrapper": max(_max_diff(a, b) for a, b in zip(
                jax.tree.leaves(outs["resets"]), jax.tree.leaves(outs["wrapper"])))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=DEFAULT_CASES, help="BxTxIxH,...")
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--p-reset", type=float, default=1 / 32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import jax

    out = args.out or os.path.join(RESULTS, f"resets_{jax.default_backend()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    results = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "backend": jax.default_backend(), "device": device_name(), "jax": jax.__version__,
               "dtype": "float32", "p_reset": args.p_reset, "repeats": args.repeats,
               "timing": "round-robin over the implementations; median and best of the repeats after a warm-up",
               "command": "python -m benchmarks.resets " + " ".join(sys.argv[1:] if argv is None else argv),
               "cases": []}
    for case in args.cases.split(","):
        B, T, I, H = (int(v) for v in case.split("x"))
        for mode in args.modes.split(","):
            r = run_case(B, T, I, H, mode, args.repeats, args.p_reset)
            results["cases"].append(r)
            print(f"B={B} T={T} I={I} H={H} {mode:8s} " + "  ".join(
                f"{n} {d['median_ms']:.2f} ms" for n, d in r["impls"].items())
                + f"  resets/plain {r['resets_over_plain']:.3f} (cpu {r['resets_over_plain_cpu']:.3f})"
                + f"  wrapper/resets {r['wrapper_over_resets']:.3f}", flush=True)
            write(out, results)
    print("wrote", out)


if __name__ == "__main__":
    main()
