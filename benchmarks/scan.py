"""Time jlstm's LSTM scan against Flax, Equinox, Keras, PyTorch and cuDNN-from-JAX.

Run from the repository root::

    python -m benchmarks.scan                          # the "perf" suite, every peer found
    python -m benchmarks.scan --suite quick --repeats 2 --out /tmp/q.json
    python -m benchmarks.scan --suite deepbench --modes fwdbwd --peers torch,jax_cudnn
    jlstm bench --suite perf --dtypes float32,bfloat16

Every implementation runs in this one process, on the same data. Each timing reports the
first call (compile + run) separately, then the median of ``--repeats`` calls, taken in
three interleaved rounds across the implementations of a case, each call ending with
``block_until_ready`` (``torch.cuda.synchronize`` for PyTorch on GPU).
``gemm_floor`` times only the GEMMs of jlstm's fused path (same shapes and FLOPs, no
element-wise work: :func:`benchmarks.peers.build_gemm_floor`); every row's ``x_floor`` is
its time as a multiple of that measured floor. ``fwd`` computes the outputs ``ys``;
``fwd+bwd`` computes the gradient of
``sum(ys * ct)`` (a fixed random cotangent) with respect to the parameters and the inputs.
A peer that is missing or cannot run here (Keras without its package, cuDNN without a
GPU) is skipped with a printed note. ``ratio`` is ``peer time / jlstm time``: above 1
means jlstm is faster. On GPU, TFLOP/s use 8·T·B·H·(I+H) flops per forward (3× for
training) and ``pct_peak`` compares them with the H100/H200 dense peak (TF32 495,
BF16 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Sequence

CPU_PERF = [(32, 128, 128, 256), (1, 256, 128, 256), (64, 64, 512, 512)]
GPU_PERF = [(1, 512, 512, 512), (64, 256, 512, 512), (256, 100, 1024, 1024), (16, 2048, 256, 256)]
GPU_PERF_BF16 = [(64, 256, 512, 512)]
DEFAULT_PEERS = ("flax", "equinox", "keras", "torch", "jax_cudnn")
ALL_IMPLS = ("jlstm", "jlstm_ref", "gemm_floor", "jlstm_fused", "jlstm_pallas") + DEFAULT_PEERS
MODES = {"fwd": "fwd", "fwdbwd": "fwd+bwd", "fwd+bwd": "fwd+bwd", "train": "fwd+bwd", "bwd": "fwd+bwd"}
DTYPES = {"float32": "float32", "f32": "float32", "fp32": "float32",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}
PEAK_TFLOPS = {"float32": 495.0, "bfloat16": 989.0}  # H100/H200 SXM dense: TF32, BF16
PEAK_DEVICES = ("H100", "H200")


def _deepbench() -> list[tuple[tuple[int, int, int, int], tuple[str, ...]]]:
    """DeepBench LSTM (I = H): training and inference sets; (B, T, I, H) with its modes."""
    out = []
    for H in (512, 1024, 2048):
        for B in (16, 32, 64, 128):
            out.append(((B, 25, H, H), ("fwd", "fwd+bwd")))
    for B in (16, 32, 64):
        out.append(((B, 150, 256, 256), ("fwd", "fwd+bwd")))
    for H in (512, 1024):
        for B in (1, 4):
            out.append(((B, 25, H, H), ("fwd",)))
    out.append(((1, 150, 256, 256), ("fwd",)))
    return out


def suite_cases(suite: str, backend: str, modes: Sequence[str] | None, dtypes: Sequence[str] | None,
                peephole: str | None = None):
    """The :class:`benchmarks.peers.Case` list of a suite on a backend, filtered by modes/dtypes.

    ``dtypes=None`` keeps the suite's own dtypes (float32; plus bf16 for (64,256,512,512)
    in the GPU perf suite); a list runs every config in each listed dtype.
    """
    from benchmarks.peers import Case

    gpu = backend in ("gpu", "cuda", "rocm")
    if suite == "quick":
        configs = [((2, 6, 3, 8), ("fwd", "fwd+bwd"), ("float32",))]
    elif suite == "perf":
        if gpu:
            configs = [(c, ("fwd", "fwd+bwd"), ("float32",)) for c in GPU_PERF]
            configs += [(c, ("fwd", "fwd+bwd"), ("bfloat16",)) for c in GPU_PERF_BF16]
        else:
            configs = [(c, ("fwd", "fwd+bwd"), ("float32",)) for c in CPU_PERF]
    elif suite == "deepbench":
        configs = [(c, m, ("float32",)) for c, m in _deepbench()]
    else:
        raise ValueError(f"unknown suite {suite!r}; choose perf, deepbench or quick")
    cases, seen = [], set()
    for (B, T, I, H), suite_modes, suite_dtypes in configs:
        for dt in (dtypes or suite_dtypes):
            for m in suite_modes:
                if modes is not None and m not in modes:
                    continue
                case = Case(B, T, I, H, m, dt, peephole)
                if case not in seen:
                    seen.add(case)
                    cases.append(case)
    return cases


def _parse_list(text: str, allowed: dict[str, str] | Sequence[str], what: str) -> list[str]:
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if isinstance(allowed, dict):
            if item not in allowed:
                raise SystemExit(f"unknown {what} {item!r}; choose from {', '.join(allowed)}")
            out.append(allowed[item])
        else:
            if item not in allowed:
                raise SystemExit(f"unknown {what} {item!r}; choose from {', '.join(allowed)}")
            out.append(item)
    return list(dict.fromkeys(out))


def device_name() -> str:
    """The accelerator's kind (``NVIDIA H100 80GB HBM3``) or the CPU model and core count."""
    import jax

    from benchmarks.peers import cpu_count

    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return str(getattr(dev, "device_kind", dev.platform))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({cpu_count()} cores)"


def result_header(suite: str) -> dict:
    """The fields a smaller benchmark's results JSON opens with: suite, device, backend, versions, date (UTC)."""
    import jax

    from benchmarks.peers import versions

    return {"suite": suite, "device": device_name(), "backend": jax.default_backend(), "versions": versions(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def cell_benchmark_args(prog: str, doc: str, argv: Sequence[str] | None, cells: Sequence[str], shape: str,
                        rounds: int) -> tuple[argparse.Namespace, tuple[int, int, int, int], list[str]]:
    """The command line of a benchmark over some cells at one shape (``step_layout``, ``eager``).

    ``--shape BxTxIxH``, ``--cells`` (a comma list from ``cells``), ``--rounds``, ``--out``; returns
    the arguments, the shape and the cells asked for, or exits with a usage error naming the bad value.
    """
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{prog}", description=doc.split("\n\n")[0])
    p.add_argument("--shape", default=shape, help="BxTxIxH (default: %(default)s)")
    p.add_argument("--cells", default=",".join(cells), help="comma list from " + ", ".join(cells))
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--out", help=f"write JSON here (e.g. benchmarks/results/{prog}_cpu.json)")
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        B, T, I, H = (int(v) for v in args.shape.split("x"))
    except ValueError:
        p.error(f"--shape takes BxTxIxH, four integers, e.g. {shape}; got {args.shape!r}")
    asked = args.cells.split(",")
    if bad := [c for c in asked if c not in cells]:
        p.error(f"unknown cells {bad}; use some of {', '.join(cells)}")
    return args, (B, T, I, H), asked


def time_runner(run, repeats: int) -> tuple[float, list[float]]:
    """First call (compile + run) in seconds, then ``repeats`` steady-state times in ms."""
    compile_s = first_call(run)
    return compile_s, [timed_call(run) for _ in range(repeats)]


def first_call(run) -> float:
    """Compile and run once, then one warm-up call (allocator, caches, thread pools); seconds."""
    t0 = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t0
    run()
    return compile_s


def timed_call(run) -> float:
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) * 1e3


def timed_call_cpu(run) -> tuple[float, float]:
    """Wall-clock and process CPU time of one call, in ms.

    On a shared host the CPU time (all of this process's threads) is the steadier of the
    two for XLA, whose wall time stretches with the other processes' load; PyTorch's
    spinning OpenMP workers inflate its CPU time under contention, so compare it by wall.
    """
    c0, t0 = time.process_time(), time.perf_counter()
    run()
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def _peak(device: str, dtype: str) -> float | None:
    return PEAK_TFLOPS.get(dtype) if any(k in device for k in PEAK_DEVICES) else None


def run_suite(cases, impls, repeats: int, device: str, backend: str, log=print, noted=None, builders=None):
    """Time every implementation on every case; returns (results, skipped).

    ``builders`` maps implementation names to builders (default: :data:`benchmarks.peers.BUILDERS`).

    Within a case the timed calls run in three rounds of blocks (jlstm, peer 1, ...,
    jlstm, peer 1, ...), so a slow spell of the machine hits every implementation alike
    and the ratios stay meaningful on a shared or throttled host. Each block starts with
    one untimed call: right after PyTorch, its OpenMP workers still compete for the
    cores (measured: +14% on the next JAX call when calls alternate one by one).
    """
    from benchmarks.peers import BUILDERS, Data, Unavailable

    builders = BUILDERS if builders is None else builders
    results, skipped = [], []
    noted = set() if noted is None else noted
    gpu = backend in ("gpu", "cuda", "rocm")

    def skip(impl, case, reason):
        skipped.append({"impl": impl, "B": case.B, "T": case.T, "I": case.I, "H": case.H,
                        "mode": case.mode, "dtype": case.dtype, "reason": reason})

    for case in cases:
        data = Data.make(case)
        runners, compile_s = {}, {}
        for impl in impls:
            try:
                run = builders[impl](case, data)
                compile_s[impl] = first_call(run)
                runners[impl] = run
            except Unavailable as e:
                if impl not in noted:
                    log(f"note: skipping {impl}: {e}")
                    noted.add(impl)
                skip(impl, case, str(e))
            except Exception as e:  # a peer failing on one case must not stop the suite
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                log(f"note: {impl} failed on B={case.B} T={case.T} I={case.I} H={case.H} "
                    f"{case.mode} {case.dtype}: {msg}")
                skip(impl, case, msg)
        times = {impl: [] for impl in runners}
        cpu = {impl: [] for impl in runners}
        rounds = min(3, repeats)
        for r in range(rounds):
            n = repeats // rounds + (r < repeats % rounds)
            for impl, run in runners.items():
                run()  # untimed: lets the previous library's worker threads go idle
                for _ in range(n):
                    wall_ms, cpu_ms = timed_call_cpu(run)
                    times[impl].append(wall_ms)
                    cpu[impl].append(cpu_ms)
        runners.clear()
        base = None
        floor = statistics.median(times["gemm_floor"]) if times.get("gemm_floor") else None
        floor_cpu = statistics.median(cpu["gemm_floor"]) if cpu.get("gemm_floor") else None
        for impl, ts in times.items():
            med = statistics.median(ts)
            med_cpu = statistics.median(cpu[impl])
            tflops = case.flops / (med * 1e-3) / 1e12
            row = {"impl": impl, "B": case.B, "T": case.T, "I": case.I, "H": case.H,
                   "mode": case.mode, "dtype": case.dtype, "median_ms": round(med, 4),
                   "compile_s": round(compile_s[impl], 3), "min_ms": round(min(ts), 4),
                   "repeats": repeats, "tflops": round(tflops, 4), "cpu_ms": round(med_cpu, 4)}
            peak = _peak(device, case.dtype) if gpu else None
            if peak:
                row["pct_peak"] = round(100.0 * tflops / peak, 2)
            if impl == "jlstm":
                base = med
            if base:
                row["ratio"] = round(med / base, 3)
            if floor and impl != "gemm_floor":
                row["x_floor"] = round(med / floor, 3)  # multiples of the GEMM floor
                row["x_floor_cpu"] = round(med_cpu / floor_cpu, 3) if floor_cpu else None
            results.append(row)
    return results, skipped


def format_table(results: list[dict], gpu: bool) -> str:
    """Medians in ms per case and implementation, with peer/jlstm ratios (and TFLOP/s on GPU)."""
    impls = list(dict.fromkeys(r["impl"] for r in results))
    keys = list(dict.fromkeys((r["B"], r["T"], r["I"], r["H"], r["mode"], r["dtype"]) for r in results))
    by = {(r["B"], r["T"], r["I"], r["H"], r["mode"], r["dtype"], r["impl"]): r for r in results}
    head = f"{'B,T,I,H':>18} {'mode':>7} {'dtype':>8} | " + " | ".join(f"{i:>18}" for i in impls)
    lines = [head, "-" * len(head)]
    for k in keys:
        cells = []
        for i in impls:
            r = by.get(k + (i,))
            if r is None:
                cells.append(f"{'-':>18}")
                continue
            extra = f"({r['ratio']:.2f}x)" if i != "jlstm" and "ratio" in r else ""
            if gpu and i == "jlstm":
                extra = f"[{r['tflops']:.1f}TF]"
            cells.append(f"{r['median_ms']:>9.3f}{extra:>9}")
        j = by.get(k + ("jlstm",), {})
        xc = f" ({j['x_floor_cpu']:.2f} cpu)" if j.get("x_floor_cpu") else ""
        cells.append(f"{j['x_floor']:.2f}{xc}".rjust(18) if "x_floor" in j else f"{'-':>18}")
        cfg = ",".join(str(x) for x in k[:4])
        lines.append(f"{cfg:>18} {k[4]:>7} {k[5]:>8} | " + " | ".join(cells))
    lines[0] += f" | {'jlstm/floor':>18}"
    lines[1] = "-" * len(lines[0])
    lines.append("medians in ms; (Nx) = peer time / jlstm time, above 1 means jlstm is faster"
                 + ("; [TF] = jlstm TFLOP/s" if gpu else "")
                 + "; jlstm/floor = jlstm time / gemm_floor time (the same GEMMs alone, measured), "
                 "by wall clock (and by process CPU time)")
    return "\n".join(lines)


def _configure_threads() -> None:
    """Let XLA's CPU client and PyTorch use exactly the cores this process may run on."""
    from benchmarks.peers import cpu_count

    os.environ.setdefault("OMP_NUM_THREADS", str(cpu_count()))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (also ``jlstm bench``); returns the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--cells" or a.startswith("--cells=") for a in args):  # each cell's forms against T
        from benchmarks import cells

        return cells.main(args)
    p = argparse.ArgumentParser(prog="python -m benchmarks.scan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="perf", choices=("perf", "deepbench", "quick"))
    p.add_argument("--modes", default="fwd,fwdbwd", help="comma list of fwd, fwdbwd (default both)")
    p.add_argument("--dtypes", default=None,
                   help="comma list of float32, bfloat16 (default: the suite's own; perf on GPU adds "
                        "bf16 for 64,256,512,512)")
    p.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                   help=f"comma list from {', '.join(ALL_IMPLS[1:])}; jlstm always runs ('' = none)")
    p.add_argument("--peephole", default="none", choices=("none", "diagonal", "full"),
                   help="time jlstm.lstm(H, peephole=...) (jlstm and jlstm_ref only; the peers have none)")
    p.add_argument("--no-floor", action="store_true",
                   help="skip gemm_floor (the same GEMMs as jlstm alone, timed in this run)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per case after warm-up (median)")
    p.add_argument("--out", default=None, help="write JSON here (e.g. benchmarks/results/cpu_perf.json)")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    _configure_threads()
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax

    modes = _parse_list(args.modes, MODES, "mode")
    dtypes = _parse_list(args.dtypes, DTYPES, "dtype") if args.dtypes else None
    peers = _parse_list(args.peers, ALL_IMPLS, "peer")
    impls = ["jlstm"] + ([] if args.no_floor else ["gemm_floor"])
    impls += [i for i in peers if i not in impls]
    backend = jax.default_backend()
    gpu = backend in ("gpu", "cuda", "rocm")
    device = device_name()
    peephole = None if args.peephole == "none" else args.peephole
    cases = suite_cases(args.suite, backend, modes, dtypes, peephole)

    from benchmarks.peers import versions

    vers = versions()
    print(f"suite {args.suite} on {device} (backend {backend}); "
          + ", ".join(f"{k} {v}" for k, v in vers.items()), flush=True)
    print(f"{len(cases)} cases x {len(impls)} implementations, median of {args.repeats}", flush=True)

    def log(msg):
        print(msg, flush=True)

    results, skipped, noted = [], [], set()
    for case in cases:
        r, s = run_suite([case], impls, args.repeats, device, backend, log, noted)
        results += r
        skipped += s
        for row in r:
            log(f"  {row['impl']:>10} B={case.B} T={case.T} I={case.I} H={case.H} {case.mode:>7} "
                f"{case.dtype:>8}: {row['median_ms']:10.3f} ms (first call {row['compile_s']:.2f} s)"
                + (f"  ratio {row['ratio']:.2f}" if row["impl"] != "jlstm" and "ratio" in row else ""))
    print()
    print(format_table(results, gpu))
    doc = {"suite": args.suite, "device": device, "backend": "gpu" if gpu else "cpu",
           "versions": vers, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "repeats": args.repeats, "peephole": peephole, "host_cores": os.cpu_count(),
           "results": results, "skipped": skipped,
           "notes": "median_ms: median of repeats after one warm-up; compile_s: first call (compile + run); "
                    "ratio: impl median / jlstm median; tflops: 8*T*B*H*(I+H) per forward, x3 for fwd+bwd; "
                    "gemm_floor: only the matmuls of jlstm's fused path (same shapes and FLOPs: input GEMM, "
                    "a scan of the T recurrent GEMMs, and in training the backward scan and the three "
                    "whole-sequence gradient GEMMs), measured in this run; x_floor: impl median / "
                    "gemm_floor median (x_floor_cpu: the same by process CPU time, steadier on a shared host); "
                    "cpu_ms: median process CPU time of a call (all threads)"}
    if args.out:
        from benchmarks.deer import write

        write(args.out, doc)
        print(f"wrote {args.out}")
    jlstm_ok = any(r["impl"] == "jlstm" for r in results)
    return 0 if jlstm_ok or not cases else 1


if __name__ == "__main__":
    sys.exit(main())
