"""Time the native CPU kernels against the fused XLA scans: ``python -m benchmarks.native_lstm [--cell gru]``.

``jlstm.lstm`` on CPU runs its loops on the native kernel (:mod:`jlstm.kernels.native_lstm`) where
``Plan.native_from_batch`` and ``Plan.native_train_to_batch`` allow it; ``jlstm.gru`` on its own
(:mod:`jlstm.kernels.native_gru`) where ``Plan.gru_native_from_batch`` and
``Plan.gru_native_train_to_batch`` do. This benchmark runs the same
``jlstm.scan`` calls traced under a plan that always takes the kernel and under one that never does
(then the fused XLA scan runs), interleaved round by round, forward and training (the gradient of
``sum(ys * ct)`` with respect to the parameters and the inputs), over a grid of shapes. Each timed
call follows an untimed call of the same program: a call right after another program was slower for
both engines, by up to 2x at B=4. It writes the medians and ``xla / native`` (above 1: the kernel is
faster) to ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Sequence

from benchmarks.deer import write

GRID = ((1, 256, 128, 256), (2, 256, 128, 256), (4, 256, 128, 256), (8, 128, 128, 256), (32, 128, 128, 256),
        (64, 128, 128, 256), (128, 64, 128, 256), (256, 32, 128, 256), (4, 128, 64, 64), (32, 128, 64, 64),
        (1, 128, 512, 512), (64, 64, 512, 512), (16, 64, 1024, 1024))
QUICK = ((2, 8, 4, 8), (3, 6, 5, 16))


def _shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(v) for v in text.lower().split("x"))
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected BxTxIxH with positive sizes, e.g. 32x128x128x256; "
                                         f"got {text!r}")
    return parts  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.native_lstm", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=_shape, nargs="*", help="BxTxIxH shapes (default: the grid in GRID)")
    p.add_argument("--quick", action="store_true", help="two tiny shapes, 2 rounds (a smoke run)")
    p.add_argument("--rounds", type=int, default=11, help="interleaved timed rounds (median)")
    p.add_argument("--cell", choices=("lstm", "gru"), default="lstm", help="the cell whose kernel is timed")
    p.add_argument("--peephole", choices=("none", "diagonal", "full"), default="none", help="the LSTM's peepholes")
    p.add_argument("--out", help="write JSON here (e.g. benchmarks/results/native_lstm_cpu.json)")
    args = p.parse_args(argv)
    shapes = QUICK if args.quick else (args.shapes or GRID)
    rounds = 2 if args.quick else args.rounds

    import jax
    import jax.numpy as jnp

    import jlstm
    import jlstm._scan as scan_mod
    from benchmarks.scan import first_call, result_header, timed_call
    from jlstm.core.plan import current_plan
    from jlstm.kernels import native_lstm

    if not native_lstm.available():
        print(f"the native kernel is unavailable here: {native_lstm.why_unavailable()}")
        return 1
    base = current_plan()
    prefix = "" if args.cell == "lstm" else "gru_"
    always = base._replace(**{f"{prefix}native_from_batch": 1, f"{prefix}native_train_to_batch": None})
    never = base._replace(**{f"{prefix}native_from_batch": None})
    if args.cell == "gru" and args.peephole != "none":
        p.error("--peephole is the LSTM's option")
    peephole = None if args.peephole == "none" else args.peephole

    def make_cell(H):
        return jlstm.lstm(H, peephole=peephole) if args.cell == "lstm" else jlstm.gru(H)
    runners = {}
    try:
        for B, T, I, H in shapes:
            cell = make_cell(H)
            params = cell.init(jax.random.key(0), I)
            xs = jax.random.normal(jax.random.key(1), (T, B, I))
            ct = jax.random.normal(jax.random.key(2), (T, B, H))
            for engine in ("native", "xla"):
                plan = always if engine == "native" else never
                scan_mod.current_plan = lambda plan=plan: plan          # the plan of the traces made below

                def run(p, x):
                    return jlstm.scan(cell, p, x)[1]

                fwd = jax.jit(run)
                train = jax.jit(jax.grad(lambda p, x, run=run, ct=ct: jnp.sum(run(p, x) * ct), argnums=(0, 1)))
                for mode, f in (("fwd", fwd), ("fwd+bwd", train)):
                    key = ((B, T, I, H), engine, mode)
                    runners[key] = (lambda f=f, p=params, x=xs: jax.block_until_ready(f(p, x)))
                    first_call(runners[key])                                   # traced now, under this plan
    finally:
        scan_mod.current_plan = current_plan                        # the real plan back, whatever happened
    times: dict = {k: [] for k in runners}
    for _ in range(rounds):
        for k, f in runners.items():
            f()                     # untimed: the previous program's threads and caches settle first
            times[k].append(timed_call(f))
    results = []
    for shape in shapes:
        for mode in ("fwd", "fwd+bwd"):
            nat, xla = (statistics.median(times[(tuple(shape), eng, mode)]) for eng in ("native", "xla"))
            B, T, I, H = shape
            results.append({"B": B, "T": T, "I": I, "H": H, "mode": mode, "native_ms": round(nat, 3),
                            "xla_ms": round(xla, 3), "xla_over_native": round(xla / nat, 3)})
            print(f"B={B:>4} T={T:>4} I={I:>5} H={H:>5} {mode:>7}: native {nat:9.3f} ms, xla {xla:9.3f} ms "
                  f"({xla / nat:.2f}x)")
    if args.out:
        command = " ".join(["python -m benchmarks.native_lstm", *(sys.argv[1:] if argv is None else argv)])
        doc = {**result_header(f"native_{args.cell}"), "command": command, "rounds": rounds,
               "library": str(native_lstm.library()["path"]),
               "results": results}
        write(args.out, doc)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
