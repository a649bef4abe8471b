"""Parallel-in-time Newton methods against the sequential scan: iterations and wall time vs T and H.

For each cell (``gru``, ``lstm``, and ParaRNN's ``para_gru``, ``para_lstm``), each state
(``untrained``: the initialisers' params; ``trained``: 400 clipped Adam steps on the adding problem
at T=64, B=32; the case records the last 20 steps' mean loss, 1/6 for a model that learned nothing),
each hidden size H and each length T, one forward pass
``jlstm.scan(cell, params, xs, method=m)`` at batch B is timed for ``m`` in ``sequential``,
``quasi_deer``, ``deer``, ``quasi_elk``, ``elk`` and ``quasi_deer_diag`` (quasi-DEER keeping only
the diagonal where the cell declares k×k Jacobian blocks, as the LSTM's 2×2 ``(h, c)``: the
comparison for the block method); a method is skipped
where its per-iteration data (T·B·D² dense, T·B·D diagonal) exceed its limit in
``--max-elements`` (:data:`LIMITS`). Every method runs in the same process and the same case,
so the ratios ``speedup = t_sequential / t_method`` are measured side by side. Newton runs use
``on_failure="ignore"`` so the time is the method's own (a fallback would add a sequential
scan); the JSON records ``iterations``, ``residual``, ``converged`` and the maximum difference
of the outputs against the sequential scan.

The compiled memory of a quasi-DEER forward at T = 1,000,000, H = 64, B = 1 (LSTM, state
[h, c] of size 128) is read from XLA's ``memory_analysis()`` (``--memory``).

Usage::

    python -m benchmarks.deer                                   # CPU sweep -> results/deer_cpu.json
    python -m benchmarks.deer --Ts 1024,16384,262144,1048576 --Hs 4,16,64 --device gpu \\
        --out benchmarks/results/deer_gpu.json                  # the GPU sweep (gpu_run.sh)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def make_params(cell_name: str, H: int, I: int, trained: bool, steps: int = 400):
    """The cell, its params and the training loss (``None`` untrained): as initialised, or after
    ``steps`` Adam steps (clipped to global norm 1) on the adding problem at T=64, B=32, with a linear
    read-out of the last output (:func:`jlstm.tasks.train_on_adding`; the loss is the mean of the last
    20 steps'). The loss of predicting the mean is 1/6 ≈ 0.167; 150 plain Adam steps without the clip
    left it there, so those params had not learned the task."""
    import jax
    import jax.numpy as jnp
    from jlstm.tasks import train_on_adding

    import jlstm

    factories = {"gru": jlstm.gru, "lstm": jlstm.lstm, "para_gru": jlstm.para_gru, "para_lstm": jlstm.para_lstm}
    cell = factories[cell_name](H)
    if not trained:
        return cell, cell.init(jax.random.key(0), I), None
    if I != 2:
        raise ValueError(f"trained params read the adding problem's 2 inputs (value, marker), got I={I}")
    params, losses = train_on_adding(cell, steps)
    return cell, params, float(jnp.mean(losses[-20:]))


def _max_diff(a, b) -> float:
    """max |a - b| on the host: NumPy propagates a NaN (XLA:CPU's max of 4096+ values skips NaNs)."""
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))


def _time(fn, *args, repeats: int) -> tuple[float, object]:
    import jax

    out = jax.block_until_ready(fn(*args))                      # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best, out


# Default size limits per method, in numbers of its per-iteration Jacobian data: T·B·D² for the dense
# methods, T·B·D for the diagonal ones. ELK's Kalman smoother solves a D×D system per step and scan
# level, and on the CPU it is far slower than DEER: measured at ~0.65 s an iteration for quasi-ELK on an
# LSTM(64) at T = 65,536 (quasi-DEER: 0.13 s), and minutes for dense ELK on a GRU(4) at T = 16,384.
LIMITS = {"deer": 3e7, "elk": 1e5, "quasi_elk": 2e6, "quasi_deer": float("inf"), "quasi_deer_diag": float("inf"),
          "quasi_deer_blocks": float("inf"), "quasi_deer_mean": float("inf")}
QUASI_VARIANTS = {"quasi_deer_diag": "diagonal", "quasi_deer_blocks": "blocks", "quasi_deer_mean": "mean"}


def newton(method: str):
    """The :class:`jlstm.Newton` of a benchmark method name: ``quasi_deer`` is ``quasi="auto"``, and
    ``quasi_deer_diag``, ``quasi_deer_blocks``, ``quasi_deer_mean`` name the kept Jacobian."""
    import jlstm

    if method in QUASI_VARIANTS:
        return jlstm.Newton("quasi_deer", quasi=QUASI_VARIANTS[method], on_failure="ignore", max_iters=200)
    return jlstm.Newton(method, on_failure="ignore", max_iters=200)


def run_case(cell, params, T: int, B: int, I: int, methods, repeats: int, limits: dict) -> dict:
    import jax

    import jlstm

    xs = jax.random.uniform(jax.random.key(1), (T, B, I))
    D = sum(a.shape[-1] for a in jax.tree.leaves(cell.initial_state(params, (B,))))
    out = {}
    t_seq, (_, y_seq) = _time(jax.jit(lambda p, x: jlstm.scan(cell, p, x)), params, xs, repeats=repeats)
    out["sequential"] = {"seconds": t_seq}
    for m in methods:
        size = T * B * D * (1 if m.startswith("quasi") else D)
        if size > limits.get(m, float("inf")):
            out[m] = {"skipped": f"{'T·B·D' if m.startswith('quasi') else 'T·B·D²'} = {size:.3g} > the limit "
                                 f"{limits[m]:.3g} (--max-elements)"}
            continue
        options = newton(m)
        run = jax.jit(lambda p, x, n=options: jlstm.scan(cell, p, x, method=n, return_info=True))
        t, (_, ys, info) = _time(run, params, xs, repeats=repeats)
        out[m] = {"seconds": t, "speedup_vs_sequential": t_seq / t, "iterations": int(info.iterations),
                  "residual": float(info.residual), "converged": bool(info.converged),
                  "error_estimate": float(info.error), "max_abs_diff_vs_sequential": _max_diff(ys, y_seq)}
    return out


def quasi_deer_memory(T: int = 1_000_000, H: int = 64, B: int = 1, I: int = 2, run: bool = True) -> dict:
    """quasi-DEER on an LSTM at length ``T``: XLA's compiled memory, then (``run``) one real forward.

    The compiled figures are XLA's ``memory_analysis()`` of the forward and of the gradient
    (temporaries plus arguments and outputs); the run records the wall time, the Newton
    iterations, the largest difference from the sequential scan and the process's peak
    resident memory (``ru_maxrss``), which includes JAX itself.
    """
    import resource

    import jax
    import jax.numpy as jnp

    import jlstm

    cell = jlstm.lstm(H)
    params = cell.init(jax.random.key(0), I)
    newton = jlstm.Newton("quasi_deer", on_failure="ignore", max_iters=200)
    fwd = jax.jit(lambda p, x: jlstm.scan(cell, p, x, method=newton, return_info=True))
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jlstm.scan(cell, p, x, method=newton)[1][-1])))
    spec = jax.ShapeDtypeStruct((T, B, I), jnp.float32)

    def compiled(fn) -> dict:
        m = fn.lower(params, spec).compile().memory_analysis()
        total = int(m.temp_size_in_bytes) + int(m.argument_size_in_bytes) + int(m.output_size_in_bytes)
        return {"temp_bytes": int(m.temp_size_in_bytes), "total_bytes": total, "total_GiB": total / 2**30}

    out = {"T": T, "H": H, "B": B, "cell": "lstm", "method": "quasi_deer", "dtype": "float32",
           "forward_compiled": compiled(fwd), "gradient_compiled": compiled(grad)}
    out.update(out["forward_compiled"])               # the keys of earlier result files
    if run:
        xs = jax.random.uniform(jax.random.key(1), (T, B, I))
        t0 = time.perf_counter()
        _, ys, info = jax.block_until_ready(fwd(params, xs))
        seconds = time.perf_counter() - t0
        _, y_seq = jax.jit(lambda p, x: jlstm.scan(cell, p, x))(params, xs)
        out["run"] = {"seconds_with_compile": seconds, "iterations": int(info.iterations),
                      "residual": float(info.residual), "converged": bool(info.converged),
                      "max_abs_diff_vs_sequential": _max_diff(ys, y_seq),
                      "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    return out


def summary(cases: list[dict]) -> list[str]:
    """One line per case: each method's speed-up over the sequential scan and its iterations."""
    lines = []
    for c in cases:
        parts = []
        for m, r in c["results"].items():
            if m == "sequential":
                parts.append(f"sequential {1e3 * r['seconds']:.1f} ms")
            elif "skipped" in r:
                parts.append(f"{m} skipped")
            else:
                flag = "" if r["converged"] else " NOT converged"
                parts.append(f"{m} {r['speedup_vs_sequential']:.3f}x ({r['iterations']} it{flag})")
        lines.append(f"{c['cell']:4s} {c['state']:9s} H={c['H']:<3d} T={c['T']:<8d} " + ", ".join(parts))
    return lines


def write(path: str, results: dict) -> None:
    """``results`` as JSON at ``path``, atomically: a temporary file in the same folder, flushed to disk,
    then renamed over ``path`` (its folder made if missing). A run killed midway leaves the previous file
    whole, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(results, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)                       # mkstemp's 0600: results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--Ts", default="1024,16384,65536")
    ap.add_argument("--Hs", default="4,16,64")
    ap.add_argument("--cells", default="gru,lstm")
    ap.add_argument("--states", default="untrained,trained")
    ap.add_argument("--methods", default="quasi_deer,deer,elk,quasi_elk")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-elements", default=",".join(f"{m}={v:g}" for m, v in LIMITS.items()),
                    help="per-method size limits, method=number,... (T·B·D² dense, T·B·D diagonal)")
    ap.add_argument("--memory", action="store_true",
                    help="also compile and run quasi-DEER at --memory-T (1M), H=64, B=1")
    ap.add_argument("--memory-T", type=int, default=1_000_000)
    ap.add_argument("--memory-only", action="store_true", help="the --memory case alone, no sweep")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    limits = {**LIMITS, **{m: float(v) for m, v in (kv.split("=") for kv in args.max_elements.split(",") if kv)}}
    import jax

    I = 2  # the adding problem's (value, marker) inputs
    results = {"header": {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                          "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                          "jax": jax.__version__, "platform": platform.platform(), "batch": args.batch,
                          "input_size": I, "dtype": "float32", "timing": f"best of {args.repeats} after a warm-up",
                          "note": "CPU numbers were measured on a 2-core machine shared with other jobs: noisy."},
               "cases": []}
    out = args.out or os.path.join(RESULTS, f"deer_{args.device}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if args.memory or args.memory_only:
        results["memory"] = quasi_deer_memory(T=args.memory_T)
        print("memory", results["memory"], flush=True)
        write(out, results)
    for cell_name in [] if args.memory_only else args.cells.split(","):
        for state in args.states.split(","):
            for H in map(int, args.Hs.split(",")):
                cell, params, loss = make_params(cell_name, H, I, state == "trained")
                for T in map(int, args.Ts.split(",")):
                    r = run_case(cell, params, T, args.batch, I, args.methods.split(","), args.repeats, limits)
                    results["cases"].append({"cell": cell_name, "state": state, "H": H, "T": T, "train_loss": loss,
                                             "results": r})
                    print(cell_name, state, H, T, {m: {k: (round(v, 4) if isinstance(v, float) else v)
                                                       for k, v in d.items()} for m, d in r.items()}, flush=True)
                    write(out, results)          # after every case: a sweep cut short by a timeout keeps its rows
    write(out, results)
    print("\n".join(summary(results["cases"])))
    print("wrote", out)


if __name__ == "__main__":
    main()
