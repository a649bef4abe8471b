"""Time ``cell.init`` in fresh processes: jlstm's initialisers against ``jax.nn.initializers``.

``python -m benchmarks.init_time`` starts one Python process per (initialisers, case) and
times, inside it, the first ``init`` (with every one-time compile), then ``init`` at a new
shape (what each further cell size costs), then the same shape again. The "jax.nn" rows
build the same cells with ``kernel_init=jax.nn.initializers.glorot_uniform()`` and
``recurrent_init=jax.nn.initializers.orthogonal()``, the initialisers jlstm used before.
Writes ``benchmarks/results/init_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

from benchmarks.deer import write

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import jax
import jlstm
which, cell_name = sys.argv[1], sys.argv[2]
kw = {}
if which == "jax.nn":
    kw = dict(kernel_init=jax.nn.initializers.glorot_uniform(), recurrent_init=jax.nn.initializers.orthogonal())
factory = getattr(jlstm, cell_name)
t_import = time.perf_counter() - t0
out = {"import_s": t_import}
for label, (H, I) in (("first_s", (16, 8)), ("new_shape_s", (24, 12)), ("same_shape_s", (24, 12))):
    key = jax.random.key(len(out))
    t = time.perf_counter()
    jax.block_until_ready(factory(H, **kw).init(key, I))
    out[label] = time.perf_counter() - t
print(json.dumps(out))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per case (the median is kept)")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "init_cpu.json"))
    args = ap.parse_args(argv)
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    rows = []
    for cell in ("lstm", "gru", "simple_rnn"):
        for which in ("jax.nn", "jlstm"):
            runs = []
            for _ in range(args.repeats):
                res = subprocess.run([sys.executable, "-c", _CHILD, which, cell], capture_output=True, text=True,
                                     env=env, check=True)
                runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
            row = {"cell": cell, "initialisers": which}
            for k in runs[0]:
                row[k] = sorted(r[k] for r in runs)[len(runs) // 2]
            rows.append(row)
            print(f"{cell:>10} {which:>7}: first init {row['first_s']:.3f} s, "
                  f"new shape {row['new_shape_s']:.3f} s, same shape {row['same_shape_s'] * 1e3:.1f} ms",
                  flush=True)
    for cell in ("lstm", "gru", "simple_rnn"):
        old = next(r for r in rows if r["cell"] == cell and r["initialisers"] == "jax.nn")
        new = next(r for r in rows if r["cell"] == cell and r["initialisers"] == "jlstm")
        new["speedup_first"] = old["first_s"] / new["first_s"]
        new["speedup_new_shape"] = old["new_shape_s"] / new["new_shape_s"]
    import jax

    result = {"benchmark": "cell.init wall time in fresh processes (median of repeats)",
              "cases": "first: H=16, I=8; new shape: H=24, I=12; same shape: again",
              "jax": jax.__version__, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "repeats": args.repeats,
              "note": "shared machine (other jobs running): absolute times are noisy; the ratios within a "
                      "run are steadier", "rows": rows}
    write(args.out, result)   # atomically
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
