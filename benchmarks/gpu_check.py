"""Correctness on a GPU: the paths that only a GPU takes, against jlstm's reference scan.

The CPU test suite runs the Pallas kernels (the LSTM's, the wide LSTM's and the sLSTM's) in interpret mode and the
Newton methods with the CPU's blocked affine recurrence. On a GPU the kernels are compiled by
Triton, and the Newton methods use
``lax.associative_scan``; this script compares both with the reference (``fast=False``, or the
sequential scan) in float32, values and gradients, and writes JSON. The LSTM paths are compared at
full matmul precision; the Newton methods at the default one (TF32 on a GPU), as a user runs them.

    python -m benchmarks.gpu_check --out benchmarks/results/check_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import traceback


def _max_diff(a, b) -> float:
    """The largest difference over two pytrees' leaves (benchmarks.deer's, leaf by leaf)."""
    import jax

    from benchmarks.deer import _max_diff as leaf_diff

    return max(leaf_diff(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _loss_grads(run, params, xs, state, ct):
    import jax
    import jax.numpy as jnp

    def loss(p, x, s):
        final, ys = run(p, x, s)
        return jnp.sum(ys * ct) + jnp.sum(jnp.stack([jnp.sum(leaf) for leaf in jax.tree.leaves(final)])), ys

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, state)


def _compare(runs: dict, params, xs, state, ct, ref) -> dict:
    """Each run's largest difference from ``ref`` in values and gradients, or its error."""
    out = {}
    for name, run in runs.items():
        try:
            got = _loss_grads(run, params, xs, state, ct)
            out[name] = {"max_abs_diff_values": _max_diff(got[0], ref[0]),
                         "max_abs_diff_grads": _max_diff(got[1], ref[1])}
        except Exception as e:                       # recorded, so the other checks still run
            out[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    return out


def lstm_paths(T: int, B: int, I: int, H: int) -> dict:
    """``jlstm.lstm`` on its default GPU path (Pallas where it fits), the Pallas kernel called directly,
    and the fused scan, against ``fast=False``, with a mask."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jlstm
    from jlstm.kernels import pallas_lstm as _pallas_lstm

    cell = jlstm.lstm(H)
    k = jax.random.split(jax.random.key(H), 5)
    params = cell.init(k[0], I)
    xs = jax.random.normal(k[1], (T, B, I))
    state = jlstm.LSTMState(h=0.5 * jax.random.normal(k[2], (B, H)), c=0.5 * jax.random.normal(k[3], (B, H)))
    ct = jax.random.normal(k[4], (T, B, H))
    mask = jnp.asarray(np.random.default_rng(0).random((T, B)) < 0.8)
    ref = _loss_grads(lambda p, x, s: jlstm.scan(cell, p, x, s, mask=mask, fast=False), params, xs, state, ct)
    out = {"shape": [T, B, I, H], "pallas_fits": _pallas_lstm.fits(B, H, jnp.float32, None)}

    def kernel(p, x, s):
        hT, cT, ys = _pallas_lstm.lstm_pallas(p.w_x, p.w_h, p.b, x, s.h, s.c, mask, False)
        return jlstm.LSTMState(hT, cT), ys

    runs = {"default": lambda p, x, s: jlstm.scan(cell, p, x, s, mask=mask), "pallas": kernel}
    out.update(_compare(runs, params, xs, state, ct, ref))
    os.environ["JLSTM_PALLAS"] = "0"
    try:
        got = _loss_grads(runs["default"], params, xs, state, ct)
        out["fused"] = {"max_abs_diff_values": _max_diff(got[0], ref[0]),
                        "max_abs_diff_grads": _max_diff(got[1], ref[1])}
    except Exception as e:
        out["fused"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    finally:
        del os.environ["JLSTM_PALLAS"]
    return out


def slstm_paths(T: int, B: int, H: int, heads: int, dtype: str) -> dict:
    """The sLSTM on its default GPU route (the Pallas kernels where the plan allows them), the kernels
    forced where it does not (any head size that fits by the estimate), and the backward kernel forced
    where the estimate says it does not fit (its error names the shared memory asked for), against
    the step loop (``fast=False``), with a mask and resets."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jlstm
    from jlstm.core.plan import current_plan
    from jlstm.kernels import pallas_slstm as ps

    dt, d = (jnp.bfloat16 if dtype == "bfloat16" else jnp.float32), H // heads
    cell = jlstm.slstm(H, num_heads=heads, dtype=dt if dtype == "bfloat16" else None)
    k = jax.random.split(jax.random.key(d), 4)
    params, xs, ct = cell.init(k[0], H), jax.random.normal(k[1], (T, B, H)), jax.random.normal(k[2], (T, B, H))
    state = cell.initial_state(params, B)
    rng = np.random.default_rng(0)
    mask, resets = jnp.asarray(rng.random((T, B)) < 0.9), jnp.asarray(rng.random((T, B)) < 0.05)
    ref = _loss_grads(lambda p, x, s: jlstm.scan(cell, p, x, s, mask=mask, resets=resets, fast=False),
                      params, xs, state, ct)
    plan = current_plan()._replace(pallas_slstm=True, pallas_slstm_max_head=max(d, 64))
    routed, forced = ps.route(current_plan(), d, dt) is not None, ps.route(plan, d, dt)
    out = {"shape": [T, B, H], "heads": heads, "d": d, "dtype": dtype, "routed": routed,
           "forced": None if forced is None else forced._asdict()}

    def kernels(backward_kernel):
        st = ps.Static(False, plan.pallas_slstm_tile, plan.backend != "gpu", backward_kernel)

        def run(p, x, s):
            final, ys = ps.slstm_pallas(cell.fast.project(p, x), p.w_h.astype(dt), tuple(s), mask, resets, st)
            return jlstm.SLSTMState(*final), ys.astype(dt)
        return run

    runs = {"default": lambda p, x, s: jlstm.scan(cell, p, x, s, mask=mask, resets=resets)}
    if forced is not None and not routed:
        runs["kernels"] = kernels(forced.backward_kernel)
    if forced is not None and not forced.backward_kernel:
        runs["backward_kernel"] = kernels(True)
    out.update(_compare(runs, params, xs, state, ct, ref))
    return out


def wide_paths(T: int, B: int, I: int, H: int, dtype: str) -> dict:
    """The wide persistent LSTM kernel (grid barrier, W_h split by hidden units) called directly and through
    ``jlstm.scan`` with a plan that routes to it, with a mask and resets, against the step loop
    (``fast=False``; in bf16, the cell with bf16 matmuls). A barrier that timed out shows as NaN."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jlstm
    from jlstm.core.plan import current_plan
    from jlstm.kernels import pallas_lstm_wide as _wide

    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    cell = jlstm.lstm(H, dtype=dt if dtype == "bfloat16" else None)
    k = jax.random.split(jax.random.key(H + B), 5)
    params = cell.init(k[0], I)
    xs = jax.random.normal(k[1], (T, B, I))
    state = jlstm.LSTMState(h=0.5 * jax.random.normal(k[2], (B, H)), c=0.5 * jax.random.normal(k[3], (B, H)))
    ct = jax.random.normal(k[4], (T, B, H))
    rng = np.random.default_rng(1)
    mask = jnp.asarray(rng.random((T, B)) < 0.9)
    resets = jnp.asarray(rng.random((T, B)) < 0.05) & mask
    ref = _loss_grads(lambda p, x, s: jlstm.scan(cell, p, x, s, mask=mask, resets=resets, fast=False),
                      params, xs, state, ct)
    st = _wide.options(B, H, dt)
    plan = current_plan()._replace(pallas_wide=True)
    out = {"shape": [T, B, I, H], "dtype": dtype, "options": None if st is None else st._asdict(),
           "shared_bytes": None if st is None else _wide.shared_bytes(H, st),
           "num_warps": None if st is None else _wide.num_warps(H, st), "sms": _wide.sm_count()}
    if st is None:
        return out
    out["options"]["matmul_dtype"] = dtype

    def kernel(p, x, s):
        hT, cT, ys = _wide.lstm_wide(p.w_x, p.w_h, p.b, x, s.h, s.c, mask, resets, st=st)
        return jlstm.LSTMState(hT, cT), ys.astype(dt)

    auto = jlstm.Auto(plan=plan)
    runs = {"kernel": kernel,
            "routed": lambda p, x, s: jlstm.scan(cell, p, x, s, mask=mask, resets=resets, method=auto)}
    out.update(_compare(runs, params, xs, state, ct, ref))
    return out


def newton(cell_name: str, method: str, T: int, B: int, H: int) -> dict:
    """A Newton method on the GPU (associative scans) against the sequential scan: values, grads."""
    import jax
    import jax.numpy as jnp

    import jlstm

    cell = jlstm.gru(H) if cell_name == "gru" else jlstm.lstm(H)
    k = jax.random.split(jax.random.key(0), 3)
    params = cell.init(k[0], 2)
    xs = jax.random.uniform(k[1], (T, B, 2))
    ct = jax.random.normal(k[2], (T, B, cell.output_size))
    lengths = jnp.arange(B) * 7 + T - 7 * B
    state = cell.initial_state(params, B)

    def run(m):
        def f(p, x, s):
            return jlstm.scan(cell, p, x, s, lengths=lengths, method=jlstm.Newton(m, on_failure="ignore"))
        return f

    ref = _loss_grads(lambda p, x, s: jlstm.scan(cell, p, x, s, lengths=lengths), params, xs, state, ct)
    got = _loss_grads(run(method), params, xs, state, ct)
    newton_method = jlstm.Newton(method, on_failure="ignore")
    info = jax.jit(lambda p, x: jlstm.scan(cell, p, x, lengths=lengths, method=newton_method,
                                           return_info=True)[2])(params, xs)
    return {"cell": cell_name, "method": method, "T": T, "B": B, "H": H,
            "iterations": int(info.iterations), "converged": bool(info.converged),
            "max_abs_diff_values": _max_diff(got[0], ref[0]), "max_abs_diff_grads": _max_diff(got[1], ref[1])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "check_gpu.json"))
    args = ap.parse_args(argv)
    import jax

    from benchmarks.deer import write

    results = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
               "jax": jax.__version__, "lstm": [], "lstm_wide": [], "slstm": [], "newton": []}
    def exact(fn):  # the LSTM paths compared at full matmul precision: the maths, not TF32 rounding
        def run():
            with jax.default_matmul_precision("highest"):
                return fn()
        return run

    # The Newton methods run at the default precision (TF32 on a GPU): they evaluate their steps at
    # full precision themselves, and their results differ from the TF32 sequential scan by its rounding.
    shapes = ((64, 8, 16, 64), (50, 3, 8, 128), (40, 96, 8, 32))
    checks = [("lstm", exact(lambda s=s: lstm_paths(*s))) for s in shapes]
    # the wide kernel: float32 to H = 512, bf16 to H = 1024, one and several batch tiles
    wide_cases = ((64, 8, 16, 256, "float32"), (50, 40, 8, 512, "float32"), (40, 3, 8, 1024, "bfloat16"),
                  (40, 20, 8, 256, "bfloat16"))
    checks += [("lstm_wide", exact(lambda c=c: wide_paths(*c))) for c in wide_cases]
    # the sLSTM kernels: d = 64 and 32 (routed), d = 128 (bf16: forced; float32: does not fit)
    slstm_cases = ((64, 8, 128, 2, "float32"), (64, 8, 128, 4, "bfloat16"), (32, 20, 256, 2, "bfloat16"),
                   (32, 20, 256, 2, "float32"))
    checks += [("slstm", exact(lambda c=c: slstm_paths(*c))) for c in slstm_cases]
    checks += [("newton", lambda c=c, m=m: newton(c, m, 2048, 4, 8))
               for m in ("deer", "quasi_deer", "quasi_elk") for c in ("gru", "lstm")]
    checks += [("newton", lambda c=c: newton(c, "elk", 256, 4, 8)) for c in ("gru", "lstm")]   # dense ELK last
    for key, check in checks:
        try:
            r = check()
        except Exception:
            r = {"error": traceback.format_exc()[-2000:]}
        results[key].append(r)
        print(key, json.dumps(r), flush=True)
        write(args.out, results)


if __name__ == "__main__":
    main()
