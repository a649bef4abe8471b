"""Time the step loop's two input layouts against each other: ``python -m benchmarks.step_layout``.

A cell built from a projection and a projected step (``jlstm.make_cell``: every cell under
``fast=False``, the LSTM with ``proj_size`` or ``cell_clip``, the layer-norm LSTM, the sLSTM off its
kernel, the min and ParaRNN cells' sequential form) runs its loop either on one projection of all T
steps made before it (``hoisted``) or projecting each step's input inside it (``in_loop``).
``Plan.step_inloop_from_batch`` picks between them; this benchmark runs the same calls under the plan
with and without it, interleaved round by round, and writes the medians and ``hoisted / in_loop``
(above 1: the in-loop layout is faster) to ``--out``.
"""

from __future__ import annotations

import statistics
from typing import Sequence

from benchmarks.deer import write
from benchmarks.scan import cell_benchmark_args

CELLS = ("gru", "lstm", "lstm_proj", "layer_norm_lstm", "slstm", "min_gru", "para_gru", "simple_rnn")


def _cell(name: str, H: int):
    import jlstm

    return {"gru": (jlstm.gru(H), {"fast": False}), "lstm": (jlstm.lstm(H), {"fast": False}),
            "lstm_proj": (jlstm.lstm(H, proj_size=H), {}), "layer_norm_lstm": (jlstm.layer_norm_lstm(H), {}),
            "slstm": (jlstm.slstm(H, num_heads=4), {}), "min_gru": (jlstm.min_gru(H), {"method": "sequential"}),
            "para_gru": (jlstm.para_gru(H), {"method": "sequential"}),
            "simple_rnn": (jlstm.simple_rnn(H), {"fast": False})}[name]


def main(argv: Sequence[str] | None = None) -> int:
    args, (B, T, I, H), cells = cell_benchmark_args("step_layout", __doc__, argv, CELLS, "32x128x128x256", 11)

    import jax
    import jax.numpy as jnp

    import jlstm
    import jlstm._scan as scan_mod
    from benchmarks.scan import first_call, result_header, timed_call
    from jlstm.core.plan import current_plan

    base = current_plan()
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    runners = {}
    try:
        for name in cells:
            cell, kw = _cell(name, H)
            params = cell.init(jax.random.key(0), I)
            ct = jax.random.normal(jax.random.key(2), (T, B, cell.output_size))
            for layout, start in (("in_loop", 8), ("hoisted", None)):
                plan = base._replace(step_inloop_from_batch=start)
                scan_mod.current_plan = lambda plan=plan: plan          # the plan of the traces made below

                def run(p, x, cell=cell, kw=kw):
                    return jlstm.scan(cell, p, x, **kw)[1]

                fwd = jax.jit(run)
                train = jax.jit(jax.grad(lambda p, x, run=run, ct=ct: jnp.sum(run(p, x) * ct), argnums=(0, 1)))
                for mode, f in (("fwd", fwd), ("fwd+bwd", train)):
                    runners[(name, layout, mode)] = (lambda f=f, p=params: jax.block_until_ready(f(p, xs)))
                    first_call(runners[(name, layout, mode)])                  # traced now, under this plan
    finally:
        scan_mod.current_plan = current_plan                        # the real plan back, whatever happened
    times: dict = {k: [] for k in runners}
    for _ in range(args.rounds):
        for k, f in runners.items():
            times[k].append(timed_call(f))
    results = []
    for name in cells:
        for mode in ("fwd", "fwd+bwd"):
            inl, hoi = (statistics.median(times[(name, lay, mode)]) for lay in ("in_loop", "hoisted"))
            results.append({"cell": name, "mode": mode, "B": B, "T": T, "I": I, "H": H,
                            "in_loop_ms": round(inl, 3), "hoisted_ms": round(hoi, 3),
                            "hoisted_over_in_loop": round(hoi / inl, 3)})
            print(f"{name:>16} {mode:>7}: in loop {inl:8.2f} ms, hoisted {hoi:8.2f} ms  ({hoi / inl:.2f}x)")
    if args.out:
        doc = {**result_header("step_layout"), "rounds": args.rounds, "results": results}
        write(args.out, doc)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
