"""Time the xLSTM blocks against the sequence length T: the mLSTM block's three forms, and the sLSTM block
against the ``xlstm`` package's vanilla (pure PyTorch) backend, in one run.

Run from the repository root::

    python -m benchmarks.xlstm_blocks --lengths 64,256,1024 --embedding 64 --batch 4 \\
        --out benchmarks/results/xlstm_blocks_cpu.json

mLSTM: ``jlstm.xlstm.mlstm_block(E, method=form)`` for ``form`` in parallel, chunkwise and
sequential, jitted; forward (the outputs) and forward+backward (the gradient of ``sum(ys * ct)``
with respect to the params and the inputs). sLSTM: one ``sLSTMBlock`` of the package (vanilla
backend, conv 4, gated GELU feed-forward) and the same block converted with
``jlstm.interop.from_xlstm_block``, so both compute the same function with the same weights; the
package's forward runs under ``torch.inference_mode``, its backward is autograd's. Each timing
reports the first call (compile + run; for PyTorch, the first run) and the median of ``--repeats``
calls. PyTorch runs on ``--torch-threads`` threads (1 by default, its fastest on a small shared
host). A form or implementation whose call takes longer than ``--max-call-s`` is not run at larger T
(noted in the JSON), and the parallel mLSTM (O(T²) memory) stops at ``--mlstm-parallel-max``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from typing import Callable, Sequence

from benchmarks.deer import write

FORMS = ("parallel", "chunkwise", "sequential")
MODES = ("fwd", "fwd+bwd")


def mlstm_runner(E: int, heads: int, form: str, mode: str, xs, ct) -> Callable[[], object]:
    """A no-argument callable: one jitted call of the mLSTM block in ``form``, blocked on."""
    import jax

    import jlstm

    block = jlstm.xlstm.mlstm_block(E, num_heads=heads, method=form)
    params = block.init(jax.random.key(0), E)

    return _jax_runner(block, params, mode, xs, ct)


def _jax_runner(model, params, mode: str, xs, ct) -> Callable[[], object]:
    """``model``'s outputs (``fwd``) or the gradient of ``sum(ys * ct)`` for params and inputs, jitted."""
    import jax
    import jax.numpy as jnp

    def forward(p, x):
        return model.apply(p, x)[1]

    f = jax.jit(forward if mode == "fwd" else jax.grad(lambda p, x: jnp.sum(forward(p, x) * ct), argnums=(0, 1)))
    return lambda: jax.block_until_ready(f(params, xs))


def slstm_blocks(E: int, heads: int):
    """The package's sLSTM block (vanilla backend) and its jlstm conversion ``(module, model, params)``."""
    import torch
    import xlstm

    from jlstm import interop

    torch.manual_seed(0)
    cfg = xlstm.xLSTMBlockStackConfig(
        slstm_block=xlstm.sLSTMBlockConfig(
            slstm=xlstm.sLSTMLayerConfig(backend="vanilla", num_heads=heads, conv1d_kernel_size=4),
            feedforward=xlstm.FeedForwardConfig(proj_factor=1.3, act_fn="gelu")),
        num_blocks=1, embedding_dim=E, add_post_blocks_norm=False)
    module = xlstm.xLSTMBlockStack(cfg).blocks[0]
    model, params = interop.from_xlstm_block(module)
    return module, model, params


def slstm_runner(impl: str, mode: str, blocks, xs, ct) -> Callable[[], object]:
    """One call of the sLSTM block: ``impl`` is ``"jlstm"`` (jitted) or ``"xlstm"`` (PyTorch)."""
    module, model, params = blocks
    if impl == "jlstm":
        return _jax_runner(model, params, mode, xs, ct)
    import numpy as np
    import torch

    x_bt = torch.as_tensor(np.swapaxes(np.asarray(xs), 0, 1).copy())
    ct_bt = torch.as_tensor(np.swapaxes(np.asarray(ct), 0, 1).copy())
    if mode == "fwd":
        def run_fwd():
            with torch.inference_mode():
                return module(x_bt)

        return run_fwd

    def run_bwd():
        module.zero_grad(set_to_none=True)
        x = x_bt.clone().requires_grad_(True)
        (module(x) * ct_bt).sum().backward()
        return x.grad

    return run_bwd


def _cases(lengths: Sequence[int], modes: Sequence[str]):
    """``(block, impl, form, mode, T)`` in the order they are timed."""
    for mode in modes:
        for T in lengths:
            for form in FORMS:
                yield "mlstm", "jlstm", form, mode, T
            yield "slstm", "jlstm", "sequential", mode, T
            yield "slstm", "xlstm", "vanilla", mode, T


def run(lengths: Sequence[int], *, batch: int, embedding: int, heads: int, repeats: int, modes: Sequence[str],
        max_call_s: float, mlstm_parallel_max: int, log=print) -> tuple[list[dict], list[dict]]:
    """Time every case; returns ``(results, skipped)``."""
    import jax
    import numpy as np

    from benchmarks.scan import first_call, timed_call

    blocks = slstm_blocks(embedding, heads)
    results, skipped, stopped = [], [], {}
    for block, impl, form, mode, T in _cases(lengths, modes):
        key = (block, impl, form, mode)
        reason = None
        if key in stopped:
            reason = f"a call at T={stopped[key]} took over {max_call_s} s"
        elif block == "mlstm" and form == "parallel" and T > mlstm_parallel_max:
            reason = f"O(T^2) memory; run up to T={mlstm_parallel_max}"
        if reason is not None:
            skipped.append({"block": block, "impl": impl, "form": form, "mode": mode, "T": T, "reason": reason})
            continue
        rng = np.random.default_rng(T)
        xs, ct = (jax.numpy.asarray(rng.normal(size=(T, batch, embedding)).astype(np.float32)) for _ in range(2))
        if block == "mlstm":
            runner = mlstm_runner(embedding, heads, form, mode, xs, ct)
        else:
            runner = slstm_runner(impl, mode, blocks, xs, ct)
        compile_s = first_call(runner)
        times = [timed_call(runner) for _ in range(repeats)]
        med = statistics.median(times)
        results.append({"block": block, "impl": impl, "form": form, "mode": mode, "T": T, "B": batch,
                        "E": embedding, "heads": heads, "median_ms": round(med, 4), "min_ms": round(min(times), 4),
                        "compile_s": round(compile_s, 3)})
        log(f"{block} {impl:5s} {form:10s} {mode:8s} T={T:6d}  {med:10.2f} ms  (first call {compile_s:.2f} s)")
        if med / 1e3 > max_call_s:
            stopped[key] = T
    return results, skipped


def ratios(results: list[dict]) -> list[dict]:
    """mLSTM: ``sequential time / form time``; sLSTM: ``xlstm (vanilla) time / jlstm time`` (above 1: faster)."""
    base = {(r["block"], r["mode"], r["T"]): r["median_ms"] for r in results
            if (r["block"], r["form"]) in (("mlstm", "sequential"), ("slstm", "vanilla"))}
    out = []
    for r in results:
        key = (r["block"], r["mode"], r["T"])
        is_base = (r["block"], r["form"]) in (("mlstm", "sequential"), ("slstm", "vanilla"))
        if not is_base and key in base:
            over = "sequential" if r["block"] == "mlstm" else "xlstm vanilla"
            out.append({"block": r["block"], "form": r["form"], "mode": r["mode"], "T": r["T"], "over": over,
                        "speedup": round(base[key] / r["median_ms"], 3)})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.xlstm_blocks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="64,256,1024", help="comma list of T")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--embedding", type=int, default=64, help="E, the blocks' width")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="fwd,fwd+bwd", help="comma list of fwd, fwd+bwd")
    p.add_argument("--max-call-s", type=float, default=5.0)
    p.add_argument("--mlstm-parallel-max", type=int, default=4096)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="PyTorch's intra-op threads (its OpenMP workers spin under contention: on a shared "
                        "2-core host 2 threads ran the package's sLSTM 20x slower than 1)")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'shared machine')")
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    a = p.parse_args(argv)
    modes = [{"fwdbwd": "fwd+bwd"}.get(m, m) for m in a.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        raise SystemExit(f"--modes takes fwd and fwd+bwd, got {a.modes!r}")
    try:
        lengths = [int(t) for t in a.lengths.split(",") if t]
    except ValueError:
        raise SystemExit(f"--lengths takes a comma list of ints, got {a.lengths!r}") from None
    import jax
    import torch

    from benchmarks.peers import versions
    from benchmarks.scan import device_name

    torch.set_num_threads(a.torch_threads)

    device = device_name()
    print(f"device: {device}   backend: {jax.default_backend()}")
    results, skipped = run(lengths, batch=a.batch, embedding=a.embedding, heads=a.heads, repeats=a.repeats,
                           modes=modes, max_call_s=a.max_call_s, mlstm_parallel_max=a.mlstm_parallel_max)
    print("\nspeedup: mLSTM forms over the sequential form; jlstm's sLSTM block over the package's vanilla one")
    for r in ratios(results):
        print(f"  {r['block']} {r['form']:10s} {r['mode']:8s} T={r['T']:6d}  {r['speedup']:7.2f}x "
              f"over {r['over']}")
    if a.out:
        import importlib.metadata as md

        command = "python -m benchmarks.xlstm_blocks " + " ".join(sys.argv[1:] if argv is None else argv)
        write(a.out, {"suite": "xlstm_blocks", "device": device, "backend": jax.default_backend(),
                      "versions": {**versions(), "xlstm": md.version("xlstm")},
                      "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                      "command": command, "note": a.note, "results": results, "ratios": ratios(results),
                      "skipped": skipped})
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
