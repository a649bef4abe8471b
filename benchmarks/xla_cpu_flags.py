"""Which XLA:CPU library runs jlstm's GEMMs, and what the other choices this jaxlib offers cost.

Issue 30 asks whether XLA:CPU's oneDNN or XNNPACK options close the gap to PyTorch (oneDNN) at
B=32, T=128, I=128, H=256. Each variant below is a set of ``XLA_FLAGS``, run in its own process
(XLA reads the flags once), timing ``jlstm`` and ``gemm_floor`` (the same GEMMs alone) forward and
fwd+bwd with :func:`benchmarks.scan.run_suite`. For each variant the JSON also records which fusion
kinds the compiled forward holds (``__ynn_fusion``: YNNPACK, XNNPACK's successor; none: Eigen), so a
flag that this jaxlib accepts but ignores shows up as such.

Usage::

    python -m benchmarks.xla_cpu_flags                 # -> results/xla_cpu_flags.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys

from benchmarks.deer import RESULTS, write

VARIANTS = {
    "default": "",
    "eigen_dot": "--xla_cpu_experimental_ynn_fusion_type=reduce",
    "ynn_dot_eltwise_reduce": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "xnn_dot": "--xla_cpu_experimental_ynn_fusion_type=reduce --xla_cpu_experimental_xnn_fusion_type=dot",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "xnn_graph_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
}
SHAPE = (32, 128, 128, 256)


def probe(repeats: int) -> dict:
    """In this process (flags already set): fusion kinds of the compiled forward, and the timings."""
    import collections

    import jax
    import jax.numpy as jnp

    import jlstm
    from benchmarks.peers import Case
    from benchmarks.scan import run_suite

    B, T, I, H = SHAPE
    cell = jlstm.lstm(H)
    params = cell.init(jax.random.key(0), I)
    hlo = jax.jit(lambda p, x: jlstm.scan(cell, p, x)[1]).lower(params, jnp.ones((T, B, I))).compile().as_text()
    out = {"fusion_kinds": dict(collections.Counter(re.findall(r'"kind":"(\w+)"', hlo))), "timings": {}}
    for mode in ("fwd", "fwd+bwd"):
        rows, _ = run_suite([Case(B, T, I, H, mode, "float32")], ["jlstm", "gemm_floor"], repeats, "cpu", "cpu",
                            log=lambda m: None)
        for r in rows:
            out["timings"][f"{r['impl']} {mode}"] = {"median_ms": r["median_ms"], "cpu_ms": r["cpu_ms"]}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default=os.path.join(RESULTS, "xla_cpu_flags.json"))
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.repeats)))
        return
    import jax

    results = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "jax": jax.__version__, "shape_BTIH": list(SHAPE), "repeats": args.repeats,
               "note": "cpu_ms (process CPU time, all threads) is the steadier figure on a shared host",
               "variants": {}}
    for name in args.variants.split(","):
        env = {**os.environ, "XLA_FLAGS": VARIANTS[name]}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.xla_cpu_flags", "--probe", "--repeats",
                               str(args.repeats)], env=env, capture_output=True, text=True, check=False)
        lines = proc.stdout.strip().splitlines()
        row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"error": proc.stderr[-500:]}
        results["variants"][name] = {"xla_flags": VARIANTS[name], **row}
        print(name, json.dumps(row), flush=True)
        write(args.out, results)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
