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
the same model built without that wrapper (its scans still kept compiled by ``jlstm.scan``). The last
three rows call the front doors over whole arrays, ``jlstm.mlstm_core`` (the parallel form, two heads
of H/2), ``jlstm.linear_recurrence`` (``[T, B, H]``) and ``jlstm.lstm_sequence`` (an LSTM(H)), whose
eager calls ran op by op, or compiled their loop again, until they went through the same cache; their
``direct_ms`` calls the function's body.

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
FRONT_DOORS = ("mlstm_core", "linear_recurrence", "lstm_sequence")
CELLS = ("lstm", "gru", "slstm", "min_gru", "layer_norm_lstm", *NEWTON, "xlstm_stack", *FRONT_DOORS)


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
        if name == "xlstm_stack" or name in FRONT_DOORS:
            build = _xlstm_calls if name == "xlstm_stack" else _front_door_calls
            rows.append(_calls_row(name, *build(name, B, T, I, H, args.rounds), timed))
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


def _xlstm_calls(name: str, B: int, T: int, I: int, H: int, rounds: int):
    """The ``xlstm_stack`` row's calls (a block stack's ``apply``, and the same model unwrapped) and inputs."""
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
    inputs = [(params, jax.random.normal(jax.random.key(r), (T, B, H))) for r in range(rounds + 1)]
    return model.apply, op_by_op, inputs


def _front_door_calls(name: str, B: int, T: int, I: int, H: int, rounds: int):
    """A front door over whole arrays: its public call, its body called op by op (how every eager call ran
    before :func:`jlstm.core.eager.call` kept it compiled) and inputs: ``mlstm_core`` (two heads of H/2,
    the parallel form), ``linear_recurrence`` (``[T, B, H]``) or ``lstm_sequence`` (an LSTM(H) on
    ``[T, B, I]``)."""
    import jax

    import jlstm
    from jlstm.cells.mlstm import run_core
    from jlstm.core.linear import _linear_call
    from jlstm.kernels.fused_lstm import _sequence_call

    def normal(r, *shape):
        return jax.random.normal(jax.random.key(r), shape)

    if name == "mlstm_core":
        inputs = [(*normal(r, 3, T, B, 2, H // 2), *normal(r + 100, 2, T, B, 2)) for r in range(rounds + 1)]
        return jlstm.mlstm_core, lambda *x: run_core("parallel", 64, 1e-6, False, 1, *x, None, None, None), inputs
    if name == "linear_recurrence":
        inputs = [(jax.nn.sigmoid(normal(r, T, B, H)), normal(r + 100, T, B, H)) for r in range(rounds + 1)]
        direct = lambda a, b: _linear_call(False, "auto", (None,) * 3, a, b, None, None)   # noqa: E731
        return jlstm.linear_recurrence, direct, inputs
    p = jlstm.lstm(H).init(jax.random.key(0), I)
    inputs = [(p.w_x, p.w_h, p.b, normal(r, T, B, I), normal(r + 100, B, H), normal(r + 200, B, H))
              for r in range(rounds + 1)]
    return jlstm.lstm_sequence, lambda *x: _sequence_call(None, None, 1, None, *x, None, None, None), inputs


def _calls_row(name: str, call, direct, inputs: list[tuple], timed) -> dict:
    """First, repeated, direct (op by op) and jitted calls of ``call`` on each input tuple."""
    import jax

    user_jit = jax.jit(call)
    first = timed(lambda: call(*inputs[0]))
    timed(lambda: user_jit(*inputs[0]))
    timed(lambda: direct(*inputs[0]))
    repeat, op_by_op, jitted = [], [], []
    for x in inputs[1:]:
        repeat.append(timed(lambda x=x: call(*x)))
        op_by_op.append(timed(lambda x=x: direct(*x)))
        jitted.append(timed(lambda x=x: user_jit(*x)))
    return _row(name, first, repeat, op_by_op, jitted)


def _row(name: str, first: float, repeat: list[float], direct: list[float], jitted: list[float]) -> dict:
    """One row of results: the first call in s, the medians of the others in ms, and direct / repeat."""
    row = {"cell": name, "first_s": round(first, 4),
           **{k: round(statistics.median(v) * 1e3, 3) for k, v in
              (("repeat_ms", repeat), ("direct_ms", direct), ("jit_ms", jitted))}}
    row["direct_over_repeat"] = round(row["direct_ms"] / row["repeat_ms"], 1)
    return row


if __name__ == "__main__":
    raise SystemExit(main())
