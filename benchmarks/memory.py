"""Peak memory of one LSTM training step against sequence length, with and without remat.

The step is ``jax.value_and_grad`` of the adding-problem loss (a linear read-out of the
final ``h``, squared error) through a single-layer LSTM, followed by one Adam update.
Two measurements per configuration:

* **compiled**: ``jax.jit(step).lower(...).compile().memory_analysis()``; XLA's own
  account of the buffers the executable needs (``temp`` = scratch, plus arguments and
  outputs). Compiling costs the same at every ``T``, so this is measured up to 1M steps.
* **run** (``--run-max-T``): the step is executed in a fresh subprocess and its peak
  resident set size (``VmHWM``) is read, with the peak before the first execution
  (JAX runtime + compilation, about 0.4 GB on CPU) reported beside it. On GPU the device's
  ``peak_bytes_in_use`` is read instead.

Implementations (``impl`` in the JSON):

* ``jlstm.scan``: ``jlstm.scan(cell, params, xs, remat=...)``, the library call. With
  ``remat=None`` it takes the fused custom-VJP path (residuals stored per step); with
  ``"segment"`` it runs that path on checkpointed ⌈√T⌉-step segments; ``"step"`` falls
  back to ``cell.step`` with each step checkpointed.
* ``time_loop+cell.step``: ``jlstm.time_loop`` over ``cell.step``, i.e. the input
  projection happens inside the loop, so no ``[T, B, 4H]`` projected copy of the sequence
  is stored. Under ``remat="segment"`` only ⌈√T⌉ carries plus one segment's residuals
  live at once: memory grows like √T (plus ``T·I`` for the inputs themselves).

Usage::

    python -m benchmarks.memory                               # CPU curve, B=1, H=256
    python -m benchmarks.memory --long 1000000                # one optimizer step at T=1M
    python -m benchmarks.memory --device gpu --batch 64 --run-max-T 1000000 \\
        --out benchmarks/results/memory_gpu.json                # an H100/A100 session

Writes ``benchmarks/results/memory_<backend>.json`` (``--long``: ``memory_<backend>_long.json``)
and a PNG plot beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Sequence

from benchmarks.deer import write

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REMATS = ("none", "step", "segment")
IMPLS = ("jlstm.scan", "time_loop+cell.step")
DEFAULT_TS = (1_000, 4_000, 16_000, 64_000, 250_000, 1_000_000)


def _remat(name: str) -> Any:
    return None if name == "none" else name


def build(T: int, B: int, I: int, H: int, remat: str, impl: str, dtype: str = "float32"):
    """Return ``(step, params, opt_state, batch)`` for one Adam step of the adding problem.

    ``step(params, opt_state, xs, ys) -> (params, opt_state, loss, grad_norm)``.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from jlstm.tasks import adding_problem

    import jlstm

    dt = jnp.dtype(dtype)
    cell = jlstm.lstm(H, dtype=None if dt == jnp.float32 else dt)
    k_cell, k_out, k_data = jax.random.split(jax.random.key(0), 3)
    params = {"cell": cell.init(k_cell, I),
              "w_out": jax.random.normal(k_out, (H,)) / math.sqrt(H), "b_out": jnp.ones(())}
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    batch = adding_problem(k_data, B, T)
    rm = _remat(remat)

    def final_h(p, xs):
        if impl == "jlstm.scan":
            state, _ = jlstm.scan(cell, p["cell"], xs, remat=rm)
        else:
            s0 = cell.initial_state(p["cell"], xs.shape[1:-1])
            state, _ = jlstm.time_loop(lambda s, x: cell.step(p["cell"], s, x), s0, xs, None, remat=rm)
        return state.h

    def loss_fn(p, xs, ys):
        pred = final_h(p, xs).astype(jnp.float32) @ p["w_out"] + p["b_out"]
        return jnp.mean((pred - ys) ** 2)

    def step(p, s, xs, ys):
        loss, g = jax.value_and_grad(loss_fn)(p, xs, ys)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss, optax.tree.norm(g)

    return step, params, opt_state, batch


def compiled_memory(T: int, B: int, I: int, H: int, remat: str, impl: str) -> dict:
    """XLA's memory analysis of the jitted step (nothing is executed)."""
    import jax

    step, params, opt_state, batch = build(2, B, I, H, remat, impl)
    xs = jax.ShapeDtypeStruct((T, B, I), batch.xs.dtype)
    ys = jax.ShapeDtypeStruct((B,), batch.ys.dtype)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, xs, ys).compile()
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    temp, arg, out = int(m.temp_size_in_bytes), int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
    alias = int(getattr(m, "alias_size_in_bytes", 0) or 0)
    return {"temp_bytes": temp, "argument_bytes": arg, "output_bytes": out, "alias_bytes": alias,
            "compiled_total_bytes": temp + arg + out - alias, "compile_s": round(compile_s, 3)}


def _peak_rss() -> int:
    """This process's peak resident set size in bytes (``VmHWM``; ``ru_maxrss`` off Linux).

    ``ru_maxrss`` is not used on Linux: it keeps the parent's peak across ``fork``/``exec``,
    so a child would report at least the RSS of the process that started it.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(T: int, B: int, I: int, H: int, remat: str, impl: str, steps: int) -> dict:
    """Execute ``steps`` optimizer steps here and return peak memory and timings."""
    import jax
    import numpy as np

    step, params, opt_state, batch = build(T, B, I, H, remat, impl)
    jstep = jax.jit(step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    compiled = jstep.lower(params, opt_state, batch.xs, batch.ys).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready((batch, params))
    rss_before = _peak_rss()
    times, losses, gnorms = [], [], []
    cpu_times = []
    for _ in range(steps):
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        params, opt_state, loss, gnorm = compiled(params, opt_state, batch.xs, batch.ys)
        loss, gnorm = float(loss), float(gnorm)
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_times.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        losses.append(loss)
        gnorms.append(gnorm)
    finite = bool(all(math.isfinite(v) for v in losses + gnorms)
                  and all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(params)))
    out = {"peak_rss_bytes": _peak_rss(),
           "rss_before_run_bytes": rss_before, "step_s": times, "step_cpu_s": cpu_times,
           "median_ms": 1e3 * float(np.median(times)),
           "run_compile_s": round(compile_s, 3), "losses": losses, "grad_norms": gnorms, "finite": finite}
    dev = jax.devices()[0]
    if dev.platform == "gpu":
        stats = dev.memory_stats() or {}
        out["device_peak_bytes"] = stats.get("peak_bytes_in_use")
    return out


def run_subprocess(T, B, I, H, remat, impl, steps, device, timeout) -> dict:
    """Run :func:`run_child` in a fresh interpreter so that its peak RSS is this configuration's own."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cuda" if device == "gpu" else "cpu"
    if device == "gpu":
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", "--T", str(T), "--batch", str(B),
           "--input", str(I), "--hidden", str(H), "--remat", remat, "--impl", impl, "--steps", str(steps)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=root)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-600:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _header(device: str) -> dict:
    import jax
    import optax

    import jlstm

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", str(dev))
    if dev.platform == "cpu":
        kind += f" ({os.cpu_count()} cores{', ' + platform.processor() if platform.processor() else ''})"
    return {"suite": "memory", "device": kind,
            "backend": "gpu" if dev.platform == "gpu" else "cpu",
            "versions": {"jax": jax.__version__, "jaxlib": jax.__version__, "optax": optax.__version__,
                         "jlstm": jlstm.__version__, "python": platform.python_version()},
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def plot(path_json: str, path_png: str) -> None:
    """Bytes against T on log-log axes: compiled totals (lines) and run peaks (markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path_json) as f:
        data = json.load(f)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = {"none": "C3", "step": "C1", "segment": "C2"}
    styles = {"jlstm.scan": "-", "time_loop+cell.step": "--"}
    for impl in IMPLS:
        for remat in REMATS:
            rows = sorted((r for r in data["results"] if r["impl"] == impl and r["remat"] == remat),
                          key=lambda r: r["T"])
            if not rows:
                continue
            ax.plot([r["T"] for r in rows], [r["temp_bytes"] / 2**20 for r in rows], styles[impl],
                    color=colors[remat], marker="o", ms=3, label=f"{impl}, remat={remat} (compiled temp)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("MiB")
    b, h = data["results"][0]["B"], data["results"][0]["H"]
    ax.set_title(f"LSTM training step, scratch memory vs T (B={b}, H={h}, {data['backend']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--input", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_TS))
    p.add_argument("--remats", nargs="+", choices=REMATS, default=list(REMATS))
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--run-max-T", type=int, default=16_000,
                   help="execute (and measure RSS) only configurations up to this T")
    p.add_argument("--steps", type=int, default=1, help="optimizer steps per executed configuration")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per executed configuration")
    p.add_argument("--long", type=int, default=None, metavar="T",
                   help="only train one configuration at this T (remat=segment, time_loop+cell.step)")
    p.add_argument("--out", default=None)
    p.add_argument("--plot", default=None)
    # internal: one executed configuration, printed as JSON
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--T", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--remat", default="segment", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="time_loop+cell.step", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if a.device == "gpu" else "cpu")
    if a.device == "gpu":  # this process only compiles: leave the GPU memory to the measured child
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    if a.child:
        print(json.dumps(run_child(a.T, a.batch, a.input, a.hidden, a.remat, a.impl, a.steps)))
        return 0

    header = _header(a.device)
    backend = header["backend"]
    base = dict(B=a.batch, I=a.input, H=a.hidden, mode="fwd+bwd", dtype="float32")
    if a.long:
        row = dict(impl=a.impl, T=a.long, remat=a.remat, **base)
        row.update(compiled_memory(a.long, a.batch, a.input, a.hidden, a.remat, a.impl))
        print(f"T={a.long}: compiled temp {row['temp_bytes'] / 2**20:.1f} MiB; running...", flush=True)
        t0 = time.perf_counter()
        row.update(run_subprocess(a.long, a.batch, a.input, a.hidden, a.remat, a.impl, a.steps,
                                  a.device, a.timeout))
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        out = a.out or os.path.join(RESULTS, f"memory_{backend}_long.json")
        write(out, {**header, "results": [row]})   # atomically
        print(json.dumps(row, indent=1))
        return 0 if row.get("finite") else 1

    rows = []
    for T in a.lengths:
        for impl in a.impls:
            for remat in a.remats:
                row = dict(impl=impl, T=T, remat=remat, median_ms=None, **base)
                row.update(compiled_memory(T, a.batch, a.input, a.hidden, remat, impl))
                if T <= a.run_max_T:
                    row.update(run_subprocess(T, a.batch, a.input, a.hidden, remat, impl, a.steps,
                                              a.device, a.timeout))
                rows.append(row)
                rss = row.get("peak_rss_bytes")
                print(f"T={T:>8} {impl:>20} remat={remat:<8} temp {row['temp_bytes'] / 2**20:10.1f} MiB"
                      + (f"  peak RSS {rss / 2**20:8.1f} MiB"
                         f" (before run {row['rss_before_run_bytes'] / 2**20:.1f})"
                         f"  {row['median_ms']:.0f} ms/step" if rss else ""), flush=True)
    out = a.out or os.path.join(RESULTS, f"memory_{backend}.json")
    write(out, {**header, "results": rows})   # atomically
    png = a.plot or os.path.splitext(out)[0] + ".png"
    plot(out, png)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
