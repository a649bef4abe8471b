"""Time jlstm's GRU against PyTorch's and Flax's, in one run: ``python -m benchmarks.gru``.

Each implementation runs the forward (``fwd``: the outputs) or a training step (``fwd+bwd``: the
gradient of ``sum(ys * ct)`` with respect to the parameters and the inputs) on the same data:

* ``jlstm``: ``jlstm.scan(jlstm.gru(H), params, xs)`` under ``jax.jit`` (the fused kernel,
  :mod:`jlstm.kernels.fused_gru`);
* ``jlstm_ref``: the same with ``fast=False`` (a ``lax.scan`` of the cell's step, inputs projected
  in one GEMM before the loop, derivatives by JAX's autodiff);
* ``flax``: ``nn.RNN(nn.GRUCell(H), time_major=True)``, jitted ``apply`` / ``jax.grad``;
* ``torch``: ``torch.nn.GRU`` (oneDNN on CPU, cuDNN on GPU), time-major, ``torch.no_grad()`` for
  the forward and ``torch.autograd.grad`` for training.

The calls of the implementations are interleaved, round after round, so that a change in the host's
load falls on all of them alike, and each timed call follows an untimed call of the same program, as in
``benchmarks.scan``: right after another library's call, its worker threads (PyTorch's OpenMP workers,
XLA's pool) still spin on the cores. Timed straight after PyTorch's call, the native GRU's forward at
(32, 128, 128, 256) took 22.6 ms against 15.3 ms after the other JAX implementations alone (same
machine, same hour). The medians and the ratios (peer time / jlstm time, above 1 means jlstm is
faster) go to the JSON written with ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable, Sequence

import numpy as np

from benchmarks.deer import write
from benchmarks.peers import Unavailable, torch_device
from benchmarks.scan import _configure_threads, first_call, result_header, timed_call

SHAPES = ((32, 128, 128, 256), (1, 256, 128, 256), (64, 64, 512, 512))   # B, T, I, H: the LSTM perf suite's
IMPLS = ("jlstm", "jlstm_ref", "flax", "torch")


def _jax_runner(apply: Callable, params, xs, ct, mode: str) -> Callable[[], object]:
    import jax
    import jax.numpy as jnp

    if mode == "fwd":
        f = jax.jit(apply)
        return lambda: jax.block_until_ready(f(params, xs))
    g = jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x) * ct), argnums=(0, 1)))
    return lambda: jax.block_until_ready(g(params, xs))


def build(impl: str, B: int, T: int, I: int, H: int, mode: str, data: dict) -> Callable[[], object]:
    import jax
    import jax.numpy as jnp

    xs, ct = jnp.asarray(data["xs"]), jnp.asarray(data["ct"])
    if impl in ("jlstm", "jlstm_ref"):
        import jlstm

        cell = jlstm.gru(H)
        params = cell.init(jax.random.key(0), I)
        fast = impl == "jlstm"
        return _jax_runner(lambda p, x: jlstm.scan(cell, p, x, fast=fast)[1], params, xs, ct, mode)
    if impl == "flax":
        try:
            import flax.linen as nn
        except ImportError as e:
            raise Unavailable(f"flax is not installed ({e})") from e
        rnn = nn.RNN(nn.GRUCell(H), time_major=True)
        params = rnn.init(jax.random.key(0), xs)
        return _jax_runner(rnn.apply, params, xs, ct, mode)
    if impl == "torch":
        try:
            import torch
        except ImportError as e:
            raise Unavailable(f"torch is not installed ({e})") from e
        dev, sync = torch_device()
        torch.manual_seed(0)
        gru = torch.nn.GRU(I, H).to(dev)
        txs, tct = torch.from_numpy(data["xs"]).to(dev), torch.from_numpy(data["ct"]).to(dev)
        if mode == "fwd":
            def run():
                with torch.no_grad():
                    ys, _ = gru(txs)
                sync()
                return ys
            return run
        txs.requires_grad_(True)
        weights = list(gru.parameters())

        def train():
            ys, _ = gru(txs)
            grads = torch.autograd.grad((ys * tct).sum(), weights + [txs])
            sync()
            return grads
        return train
    raise ValueError(f"unknown implementation {impl!r}; use one of {', '.join(IMPLS)}")


def run(shapes, modes, impls, rounds: int, log=print) -> tuple[list[dict], list[dict]]:
    results, skipped = [], []
    for B, T, I, H in shapes:
        rng = np.random.default_rng(0)
        data = {"xs": rng.standard_normal((T, B, I), np.float32), "ct": rng.standard_normal((T, B, H), np.float32)}
        for mode in modes:
            runners, compile_s = {}, {}
            for impl in impls:
                try:
                    runners[impl] = build(impl, B, T, I, H, mode, data)
                    compile_s[impl] = first_call(runners[impl])
                except Unavailable as e:
                    skipped.append({"impl": impl, "B": B, "T": T, "I": I, "H": H, "mode": mode, "reason": str(e)})
            times: dict[str, list[float]] = {k: [] for k in runners}
            for _ in range(rounds):                          # interleaved: one call of each per round
                for impl, f in runners.items():
                    f()                                      # untimed: the previous library's threads settle
                    times[impl].append(timed_call(f))
            base = statistics.median(times["jlstm"]) if "jlstm" in times else None
            for impl, ts in times.items():
                med = statistics.median(ts)
                row = {"impl": impl, "B": B, "T": T, "I": I, "H": H, "mode": mode, "dtype": "float32",
                       "median_ms": round(med, 4), "min_ms": round(min(ts), 4), "repeats": rounds,
                       "compile_s": round(compile_s[impl], 3),
                       "ratio": None if base is None else round(med / base, 3)}
                results.append(row)
                log(f"{impl:>10} B={B} T={T} I={I} H={H} {mode:>7}: {med:9.3f} ms"
                    + ("" if row["ratio"] is None else f"  ratio {row['ratio']:.2f}"))
    return results, skipped


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gru", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES),
                   help="comma list of BxTxIxH (default: %(default)s)")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="comma list of fwd, fwd+bwd")
    p.add_argument("--impls", default=",".join(IMPLS), help="comma list from " + ", ".join(IMPLS))
    p.add_argument("--rounds", type=int, default=15, help="timed calls of each implementation (interleaved)")
    p.add_argument("--out", help="write JSON here (e.g. benchmarks/results/gru_cpu.json)")
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        if any(len(s) != 4 or min(s) < 1 for s in shapes):
            raise ValueError
    except ValueError:
        p.error(f"--shapes takes BxTxIxH, four positive integers each (e.g. 32x128x128x256); got {args.shapes!r}")
    modes = args.modes.split(",")
    impls = args.impls.split(",")
    if bad := [m for m in modes if m not in ("fwd", "fwd+bwd")] + [i for i in impls if i not in IMPLS]:
        p.error(f"unknown mode or implementation {bad}; modes: fwd, fwd+bwd; implementations: {', '.join(IMPLS)}")
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    _configure_threads()
    results, skipped = run(shapes, modes, impls, args.rounds)
    if args.out:
        doc = {**result_header("gru"), "rounds": args.rounds,
               "command": "python -m benchmarks.gru " + " ".join(sys.argv[1:] if argv is None else argv),
               "results": results, "skipped": skipped}
        write(args.out, doc)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
