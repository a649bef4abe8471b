"""Newton iterations of quasi-DEER on an untrained LSTM against the input size, for each kept Jacobian.

The quasi methods drop part of each step's Jacobian. The 2×2 blocks keep each unit's exact ``(c, h)``
block and drop the coupling between units through ``W_h``; the diagonal drops more; the time-averaged
Jacobian (``quasi="mean"``) keeps the coupling but replaces each step's Jacobian by the sequence's mean.
How much each costs depends on how strongly the input drives the gates: a wide input saturates them,
which weakens the coupling and spreads the steps' Jacobians away from their mean. This sweep counts the
iterations to convergence (float32, the default tolerance) for ``lstm(H)`` at default init, inputs
drawn from N(0, 1), against the input size: ``auto`` (the default), ``mean``, ``blocks``, ``diagonal``,
and the dense DEER as the reference point. It also records each run's largest distance from the
sequential scan, so a "converged" that is not close would show. Iterations only, no timings:
``python -m benchmarks.deer`` times the methods.

    python -m benchmarks.quasi_deer_blocks                   # H=16, T=2048, inputs 1..32, seeds 0 and 1
    python -m benchmarks.quasi_deer_blocks --inputs 2,32 --seeds 0 --out /tmp/q.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

from benchmarks.deer import RESULTS, _max_diff, write

VARIANTS = {  # name: Newton keyword arguments
    "quasi_deer_auto": dict(method="quasi_deer"),
    "quasi_deer_mean": dict(method="quasi_deer", quasi="mean"),
    "quasi_deer_blocks": dict(method="quasi_deer", quasi="blocks"),
    "quasi_deer_diagonal": dict(method="quasi_deer", quasi="diagonal"),
    "deer": dict(method="deer"),
}


def run_case(H: int, T: int, I: int, seed: int, max_iters: int, variants) -> dict:
    """Iterations, convergence and the error against the sequential scan of each variant, for one model."""
    import jax

    import jlstm

    cell = jlstm.lstm(H)
    params = cell.init(jax.random.key(seed), I)
    xs = jax.random.normal(jax.random.key(seed + 100), (T, 1, I))
    y_seq = jax.jit(lambda p, x: jlstm.scan(cell, p, x)[1])(params, xs)
    row = {"H": H, "T": T, "input_size": I, "seed": seed}
    for name in variants:
        newton = jlstm.Newton(**VARIANTS[name], max_iters=max_iters, on_failure="ignore")
        run = jax.jit(lambda p, x, n=newton: jlstm.scan(cell, p, x, method=n, return_info=True))
        _, ys, info = run(params, xs)
        row[name] = {"iterations": int(info.iterations), "converged": bool(info.converged),
                     "max_abs_error": _max_diff(ys, y_seq)}
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--inputs", default="1,2,4,8,16,32", help="comma list of input sizes")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--max-iters", type=int, default=300)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=os.path.join(RESULTS, "quasi_deer_blocks_cpu.json"))
    args = ap.parse_args(argv)
    import jax

    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"--variants: unknown {unknown}; expected a comma list of {sorted(VARIANTS)}")
    rows = []
    print(f"lstm({args.H}), T={args.T}, untrained, xs ~ N(0, 1): iterations (* = not converged)")
    print(f"{'input':>5s} {'seed':>4s} " + " ".join(f"{v:>20s}" for v in variants))
    for I in (int(i) for i in args.inputs.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_case(args.H, args.T, I, seed, args.max_iters, variants)
            rows.append(row)
            cells = [f"{row[v]['iterations']}{'' if row[v]['converged'] else '*'} ({row[v]['max_abs_error']:.0e})"
                     for v in variants]
            print(f"{I:5d} {seed:4d} " + " ".join(f"{c:>20s}" for c in cells), flush=True)
    doc = {"header": {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                      "backend": jax.default_backend(), "jax": jax.__version__, "platform": platform.platform(),
                      "dtype": "float32", "tol": "default (1e-5 for float32)", "max_iters": args.max_iters,
                      "note": "iterations to convergence; max_abs_error is against the sequential scan"},
           "rows": rows}
    write(args.out, doc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
