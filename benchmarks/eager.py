"""Time eager ``jlstm.scan`` calls, as a notebook makes them: ``python -m benchmarks.eager``.

For each cell, the same call ``jlstm.scan(cell, params, xs)`` made outside any ``jit``:

* ``first_s``: the first call (it compiles);
* ``repeat_ms``: later calls with new input values, through :mod:`jlstm.core.eager`'s kept program;
* ``direct_ms``: the same calls on the direct path (``jlstm._scan.run_scan`` op by op, as every eager
  call ran before that cache: ``lax.scan`` traced and compiled again each time);
* ``jit_ms``: the call inside the user's own ``jax.jit``, warm: the floor.

Two more rows run the LSTM with Newton's method, which eager calls ran op by op until
``jlstm.scan`` compiled them too: ``lstm_deer_raise`` (``Newton("deer", on_failure="raise")``) and
``lstm_deer_warm`` (``Newton("deer", init=...)``, a new warm start each call: the quasi-DEER
trajectory of that call's inputs, as a training loop passes the last one). ``xlstm_stack`` calls an
xLSTM block stack's ``apply`` (an mLSTM and an sLSTM block of width H, two heads, on ``[T, B, H]``),
whose eager calls ran op by op until :func:`jlstm.core.eager.compiled_apply`; its ``direct_ms`` is
the same model built without that wrapper (its scans still kept compiled by ``jlstm.scan``).

Medians over ``--rounds``; ``direct / repeat`` is what the cache saves a repeated call.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from typing import Sequence
from unittest import mock

from benchmarks.scan import cell_benchmark_args

NEWTON = {"lstm_deer_raise": "raise", "lstm_deer_warm": "warm"}
CELLS = ("lstm", "gru", "slstm", "min_gru", "layer_norm_lstm", *NEWTON, "xlstm_stack")


def main(argv: Sequence[str] | None = None) -> int:
    args, (B, T, I, H), cells = cell_benchmark_args("eager", __doc__, argv, CELLS, "8x50x16x64", 7)

    import jax

    import jlstm
    from benchmarks.deer import write
    from benchmarks.scan import result_header
    from jlstm._scan import ScanOptions, run_scan

    def timed(f) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        return time.perf_counter() - t0

    def method(case, start):
        """The call's method: the default, or a fresh Newton as a loop makes one per call."""
        if case is None:
            return "auto"
        return jlstm.Newton("deer", on_failure="raise") if case == "raise" else jlstm.Newton("deer", init=start)

    rows = []
    for name in cells:
        if name == "xlstm_stack":
            rows.append(_xlstm_row(B, T, H, args.rounds, timed))
            print(json.dumps(rows[-1]), flush=True)
            continue
        case = NEWTON.get(name)
        cell = getattr(jlstm, "lstm" if case else name)(H)
        params = cell.init(jax.random.key(0), I)
        inputs = [jax.random.normal(jax.random.key(r), (T, B, I)) for r in range(args.rounds + 1)]
        starts = [jlstm.scan(cell, params, x, method="quasi_deer", return_info=True)[2].trajectory
                  if case == "warm" else None for x in inputs]
        user_jit = jax.jit(lambda p, x, s, cell=cell, case=case: jlstm.scan(cell, p, x, method=method(case, s)))
        first = timed(lambda: jlstm.scan(cell, params, inputs[0], method=method(case, starts[0])))
        timed(lambda: user_jit(params, inputs[0], starts[0]))
        repeat, direct, jitted = [], [], []
        for x, s in zip(inputs[1:], starts[1:]):
            repeat.append(timed(lambda x=x, s=s: jlstm.scan(cell, params, x, method=method(case, s))))
            direct.append(timed(lambda x=x, s=s: run_scan(cell, params, x, None, None, None,
                                                          ScanOptions(method=method(case, s)))))
            jitted.append(timed(lambda x=x, s=s: user_jit(params, x, s)))
        row = _row(name, first, repeat, direct, jitted)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        write(args.out, {**result_header("eager"), "shape_BTIH": [B, T, I, H], "rounds": args.rounds,
                         "rows": rows})
    return 0


def _xlstm_row(B: int, T: int, H: int, rounds: int, timed) -> dict:
    """The ``xlstm_stack`` row: first, repeated, op-by-op and jitted calls of a block stack's ``apply``."""
    import jax

    from jlstm import xlstm

    def build():
        return xlstm.block_stack([xlstm.mlstm_block(H, num_heads=2), xlstm.slstm_block(H, num_heads=2)])

    model = build()
    with contextlib.ExitStack() as unwrapped:      # the same model, its applies as they ran before (op by op)
        for module in ("blocks", "feedforward", "mlstm", "slstm", "stack"):
            unwrapped.enter_context(mock.patch(f"jlstm.xlstm.{module}.compiled_apply", lambda apply, *_: apply))
        op_by_op = build().apply
    params = model.init(jax.random.key(0), H)
    inputs = [jax.random.normal(jax.random.key(r), (T, B, H)) for r in range(rounds + 1)]
    user_jit = jax.jit(model.apply)
    first = timed(lambda: model.apply(params, inputs[0]))
    timed(lambda: user_jit(params, inputs[0]))
    timed(lambda: op_by_op(params, inputs[0]))
    repeat, direct, jitted = [], [], []
    for x in inputs[1:]:
        repeat.append(timed(lambda x=x: model.apply(params, x)))
        direct.append(timed(lambda x=x: op_by_op(params, x)))
        jitted.append(timed(lambda x=x: user_jit(params, x)))
    return _row("xlstm_stack", first, repeat, direct, jitted)


def _row(name: str, first: float, repeat: list[float], direct: list[float], jitted: list[float]) -> dict:
    """One row of results: the first call in s, the medians of the others in ms, and direct / repeat."""
    row = {"cell": name, "first_s": round(first, 4),
           **{k: round(statistics.median(v) * 1e3, 3) for k, v in
              (("repeat_ms", repeat), ("direct_ms", direct), ("jit_ms", jitted))}}
    row["direct_over_repeat"] = round(row["direct_ms"] / row["repeat_ms"], 1)
    return row


if __name__ == "__main__":
    raise SystemExit(main())
