"""Time each recurrent cell's forms against the sequence length T: sequential against parallel.

Run from the repository root::

    python -m benchmarks.cells --cells lstm,slstm,mlstm,min_lstm,min_gru \\
        --lengths 128,1024,4096,16384,65536 --out benchmarks/results/cells_cpu.json
    python -m benchmarks.scan --cells mlstm,min_gru --lengths 128,4096   # the same, delegated

For every cell and every form it has (``sequential``: the loop over the step, or the fused
kernel where the cell has one; ``parallel``; ``chunkwise``), at every T, it times the
forward (``ys``) and forward+backward (the gradient of ``sum(ys * ct)`` with respect to the
params and the inputs) through ``jlstm.scan(cell, params, xs, method=form)``, jitted. Each
timing reports the first call (compile + run) and the median of ``--repeats`` calls. The
printed ``speedup`` is ``sequential time / form time`` at the same T (above 1: the form is
faster). A form whose call at some T takes longer than ``--max-call-s`` is not run at larger
T (noted in the JSON), and the parallel mLSTM (O(T²) memory) stops at ``--mlstm-parallel-max``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from typing import Sequence

from benchmarks.deer import write

CELLS = ("lstm", "slstm", "mlstm", "min_lstm", "min_gru")
DEFAULT_LENGTHS = (128, 1024, 4096, 16384, 65536)
MODES = ("fwd", "fwd+bwd")


def build_cell(name: str, hidden: int, heads: int):
    """The cell and the forms it offers to ``jlstm.scan(method=...)``."""
    import jlstm

    if name == "lstm":
        cell = jlstm.lstm(hidden)
    elif name == "slstm":
        cell = jlstm.slstm(hidden, num_heads=heads)
    elif name == "mlstm":
        cell = jlstm.mlstm(hidden, num_heads=heads)
    elif name == "min_lstm":
        cell = jlstm.min_lstm(hidden)
    elif name == "min_gru":
        cell = jlstm.min_gru(hidden)
    else:
        raise SystemExit(f"unknown cell {name!r}; choose from {', '.join(CELLS)}")
    forms = ("sequential",) + tuple(n for n, _ in (cell.fast.methods if cell.fast is not None else ()))
    return cell, forms


def make_runner(cell, form: str, mode: str, params, xs, ct):
    """A no-argument callable that runs one jitted call and blocks on its result."""
    import jax
    import jax.numpy as jnp

    import jlstm

    def forward(p, x):
        return jlstm.scan(cell, p, x, method=form)[1]

    if mode == "fwd":
        f = jax.jit(forward)
    else:
        f = jax.jit(jax.grad(lambda p, x: jnp.sum(forward(p, x) * ct), argnums=(0, 1)))
    return lambda: jax.block_until_ready(f(params, xs))


def run(cells: Sequence[str], lengths: Sequence[int], *, batch: int, input_size: int, hidden: int, heads: int,
        repeats: int, modes: Sequence[str], max_call_s: float, mlstm_parallel_max: int, log=print,
        on_cell=None):
    """Time every (cell, form, mode, T); returns (results, skipped). ``on_cell(results, skipped)``
    runs after each cell (to save partial results)."""
    import jax
    import numpy as np

    from benchmarks.scan import first_call, timed_call

    results, skipped = [], []
    for name in cells:
        cell, forms = build_cell(name, hidden, heads)
        params = cell.init(jax.random.key(0), input_size)
        for mode in modes:
            stopped: dict[str, int] = {}
            for T in lengths:
                rng = np.random.default_rng(T)
                xs = jax.numpy.asarray(rng.normal(size=(T, batch, input_size)).astype(np.float32))
                ct = jax.numpy.asarray(rng.normal(size=(T, batch, hidden)).astype(np.float32))
                for form in forms:
                    if form in stopped:
                        skipped.append({"cell": name, "form": form, "mode": mode, "T": T,
                                        "reason": f"a call at T={stopped[form]} took over {max_call_s} s"})
                        continue
                    if name == "mlstm" and form == "parallel" and T > mlstm_parallel_max:
                        skipped.append({"cell": name, "form": form, "mode": mode, "T": T,
                                        "reason": f"O(T^2) memory; run up to T={mlstm_parallel_max}"})
                        continue
                    runner = make_runner(cell, form, mode, params, xs, ct)
                    compile_s = first_call(runner)
                    times = [timed_call(runner) for _ in range(repeats)]
                    med = statistics.median(times)
                    results.append({"cell": name, "form": form, "mode": mode, "T": T, "B": batch, "I": input_size,
                                    "H": hidden, "median_ms": round(med, 4), "min_ms": round(min(times), 4),
                                    "compile_s": round(compile_s, 3)})
                    log(f"{name:9s} {form:11s} {mode:8s} T={T:6d}  {med:10.2f} ms  (first call {compile_s:.2f} s)")
                    if med / 1e3 > max_call_s:
                        stopped[form] = T
        if on_cell is not None:
            on_cell(results, skipped)
    return results, skipped


def speedups(results: list[dict]) -> list[dict]:
    """``sequential time / form time`` for every non-sequential result with a sequential twin."""
    seq = {(r["cell"], r["mode"], r["T"]): r["median_ms"] for r in results if r["form"] == "sequential"}
    out = []
    for r in results:
        key = (r["cell"], r["mode"], r["T"])
        if r["form"] != "sequential" and key in seq:
            out.append({"cell": r["cell"], "form": r["form"], "mode": r["mode"], "T": r["T"],
                        "speedup": round(seq[key] / r["median_ms"], 3)})
    return out


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t]
    except ValueError:
        raise SystemExit(f"expected a comma list of ints, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.cells", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma list from {', '.join(CELLS)}")
    p.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)), help="comma list of T")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--heads", type=int, default=4, help="heads of the sLSTM and the mLSTM")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="fwd,fwd+bwd", help="comma list of fwd, fwd+bwd")
    p.add_argument("--max-call-s", type=float, default=3.0,
                   help="stop timing a form at larger T once one call takes longer than this")
    p.add_argument("--mlstm-parallel-max", type=int, default=8192)
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'shared machine')")
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    a = p.parse_args(argv)
    cells = [c for c in a.cells.split(",") if c]
    for c in cells:
        if c not in CELLS:
            raise SystemExit(f"unknown cell {c!r}; choose from {', '.join(CELLS)}")
    modes = [{"fwdbwd": "fwd+bwd"}.get(m, m) for m in a.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; choose from fwd, fwd+bwd")

    import jax

    from benchmarks.peers import versions
    from benchmarks.scan import device_name

    device = device_name()
    print(f"device: {device}   backend: {jax.default_backend()}")
    command = "python -m benchmarks.cells " + " ".join(sys.argv[1:] if argv is None else argv)

    def save(results, skipped, done=False):
        if not a.out:
            return
        doc = {"suite": "cells", "device": device, "backend": jax.default_backend(), "versions": versions(),
               "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "command": command, "cpu_count": os.cpu_count(), "note": a.note, "complete": done,
               "results": results, "speedups": speedups(results), "skipped": skipped}
        write(a.out, doc)   # atomically

    results, skipped = run(cells, _ints(a.lengths), batch=a.batch, input_size=a.input_size, hidden=a.hidden,
                           heads=a.heads, repeats=a.repeats, modes=modes, max_call_s=a.max_call_s,
                           mlstm_parallel_max=a.mlstm_parallel_max, on_cell=save)
    save(results, skipped, done=True)
    print("\nspeedup = sequential time / form time (above 1: faster than the loop)")
    for r in speedups(results):
        print(f"  {r['cell']:9s} {r['form']:10s} {r['mode']:8s} T={r['T']:6d}  {r['speedup']:7.2f}x")
    if a.out:
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
