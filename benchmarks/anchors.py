"""The anchor shapes of the recurrent-kernel literature, timed against their peers in one process.

Run from the repository root::

    python -m benchmarks.anchors --out benchmarks/results/gpu_anchors.json    # on the GPU (~3 min, estimated)
    python -m benchmarks.anchors --smoke                                      # tiny sizes, any backend

Three sections, each timed like ``benchmarks.scan`` (first call reported apart, then the median of
``--repeats`` calls in three interleaved rounds; ``ratio`` = peer time / jlstm time):

* ``lstm``: (B, T, I, H) = (16, 1024, 768, 768), float32 and bf16, forward and forward+backward,
  the shape FlashRNN (ICLR 2025) reports on an H100 in bf16: cuDNN 2.01 ms / 5.19 ms, its best
  kernel 1.44 ms / 3.47 ms (stored under ``reference``, not measured here). Peers: ``jlstm_ref``
  (``fast=False``), PyTorch ``nn.LSTM`` (cuDNN), cuDNN from JAX, and ``jlstm_pallas_wide``, the
  wide persistent kernel forced (768 units padded to 1024; bf16 only, float32 does not fit an SM).
* ``latency``: B = 1, T = 1024, I = H ∈ {256, 512, 1024}, forward; ``us_per_step`` = median / T
  (the same peers; the wide kernel at H = 256 and 512).
* ``slstm``: B = 16, T = 1024, I = H = 768 with 12 heads of 64 (float32 and bf16), 24 of 32 and 6
  of 128 (bf16): FlashRNN's head sizes at its hidden size; forward and forward+backward, median
  of ``--slstm-repeats``. ``jlstm``: ``jlstm.scan`` as routed (on a GPU the Pallas kernels for
  d ≤ ``plan.pallas_slstm_max_head``); ``jlstm_pallas``: the kernels forced by a plan that allows
  every head size that fits, timed only where the automatic route differs; ``jlstm_ref``: the
  step loop (``fast=False``); ``torch_loop``: an eager PyTorch loop over the step, written here
  from the equations (one kernel per op, as the ``xlstm`` package's vanilla backend runs);
  ``xlstm``: that package's ``sLSTMLayer`` (vanilla backend, head-wise input weights, group
  norm), where it is installed (the GPU machines have no such package).

``--smoke`` runs every section and builder at tiny sizes (on CPU the kernels run in Pallas interpret
mode), for tests. No number here is a test's threshold.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import os
import sys
from typing import Sequence

from benchmarks.peers import BUILDERS, Case, Data, Unavailable, _jax_runner

FLASHRNN_H100 = {"shape": [16, 1024, 768, 768], "dtype": "bfloat16", "source": "FlashRNN (ICLR 2025), H100",
                 "cudnn_ms": {"fwd": 2.01, "fwd+bwd": 5.19}, "flashrnn_best_ms": {"fwd": 1.44, "fwd+bwd": 3.47}}
LSTM_IMPLS = ("jlstm", "jlstm_ref", "torch", "jax_cudnn", "jlstm_pallas_wide")
SLSTM_IMPLS = ("jlstm", "jlstm_pallas", "jlstm_ref", "torch_loop", "xlstm")
MODES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class SCase(Case):
    """An sLSTM timing: a :class:`benchmarks.peers.Case` with a head count (``d = H / heads``)."""

    heads: int = 1

    @property
    def flops(self) -> float:
        """Forward ``8·T·B·H·(I + d)`` (block-diagonal recurrence); training three times that."""
        f = 8.0 * self.T * self.B * self.H * (self.I + self.H // self.heads)
        return f if self.mode == "fwd" else 3.0 * f


def sections(smoke: bool) -> dict[str, list[Case]]:
    """The cases of each section. ``smoke``: tiny ones, each builder once forward and once in training."""
    if smoke:
        pairs = (("fwd+bwd", "float32"), ("fwd", "bfloat16"))
        return {"lstm": [Case(2, 8, 8, 8, m, dt) for m, dt in pairs],
                "latency": [Case(1, 8, 8, 8, "fwd", "float32")],
                "slstm": [SCase(2, 4, 16, 16, m, dt, heads=2) for m, dt in pairs]}
    lstm = [Case(16, 1024, 768, 768, m, dt) for dt in ("float32", "bfloat16") for m in MODES]
    latency = [Case(1, 1024, h, h, "fwd", "float32") for h in (256, 512, 1024)]
    heads = ((12, ("float32", "bfloat16")), (24, ("bfloat16",)), (6, ("bfloat16",)))   # d = 64, 32, 128
    slstm = [SCase(16, 1024, 768, 768, m, dt, heads=k) for k, dts in heads for dt in dts for m in MODES]
    return {"lstm": lstm, "latency": latency, "slstm": slstm}


# --------------------------------------------------------------------------- sLSTM builders


def _slstm_setup(case: SCase):
    import jax
    import jax.numpy as jnp

    import jlstm

    bf16 = case.dtype == "bfloat16"
    cell = jlstm.slstm(case.H, num_heads=case.heads, dtype=jnp.bfloat16 if bf16 else None)
    return cell, cell.init(jax.random.key(0), case.I), (jnp.bfloat16 if bf16 else jnp.float32)


def _slstm_runner(case: SCase, data: Data, forward_of):
    import jax.numpy as jnp

    cell, params, dt = _slstm_setup(case)
    return _jax_runner(forward_of(cell), params, jnp.asarray(data.xs, dt), jnp.asarray(data.ct), case)


def build_slstm_jlstm(case: SCase, data: Data):
    """``jlstm.scan`` as the backend's plan routes it."""
    import jlstm

    return _slstm_runner(case, data, lambda cell: (lambda p, x: jlstm.scan(cell, p, x)[1]))


def build_slstm_ref(case: SCase, data: Data):
    """The step loop (``fast=False``)."""
    import jlstm

    return _slstm_runner(case, data, lambda cell: (lambda p, x: jlstm.scan(cell, p, x, fast=False)[1]))


def build_slstm_pallas(case: SCase, data: Data):
    """The Pallas kernels forced by a plan that allows every head size that fits shared memory."""
    import jax.numpy as jnp

    from jlstm.core.plan import current_plan
    from jlstm.kernels import pallas_slstm as ps

    d, auto = case.H // case.heads, current_plan()
    dt = jnp.bfloat16 if case.dtype == "bfloat16" else jnp.float32
    plan = auto._replace(pallas_slstm=True, pallas_slstm_max_head=max(d, auto.pallas_slstm_max_head))
    if ps.route(plan, d, dt) is None:
        raise Unavailable(f"the kernels do not serve d = {d} in {case.dtype} (shared memory or Triton's sizes)")
    if auto.backend == "gpu" and ps.route(auto, d, dt) is not None:
        raise Unavailable(f"the plan already routes d = {d} to the kernels: the same program as jlstm")

    def forward_of(cell):
        def forward(p, x):
            state = cell.initial_state(p, x.shape[1])
            return cell.fast.sequence(p, x, state, None, 1, plan=plan)[1]
        return forward

    return _slstm_runner(case, data, forward_of)


def _torch_device():
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch is not installed ({e})") from e
    import jax

    on_gpu = jax.default_backend() in ("gpu", "cuda") and torch.cuda.is_available()
    return torch, torch.device("cuda" if on_gpu else "cpu"), (torch.cuda.synchronize if on_gpu else (lambda: None))


def _torch_runner(torch, forward, params, xs, ct, mode: str, sync):
    """One call: ``forward(xs)`` without grad (fwd), or the gradients of ``sum(ys * ct)`` (fwd+bwd)."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                ys = forward(xs)
            sync()
            return ys
        return run
    xs.requires_grad_(True)

    def run_bwd():
        grads = torch.autograd.grad((forward(xs).float() * ct).sum(), list(params) + [xs])
        sync()
        return grads
    return run_bwd


def _torch_slstm(torch, case: SCase, dev, dt):
    """An eager PyTorch sLSTM over ``xs [T, B, I]`` (jlstm's layout and equations): ``(forward, params)``."""
    B, H, k = case.B, case.H, case.heads
    d = H // k
    g = torch.Generator().manual_seed(0)
    w_x = (torch.randn(case.I, 4 * H, generator=g) / case.I ** 0.5).to(dev, dt).requires_grad_()
    w_h = (torch.randn(k, d, 4 * d, generator=g) / d ** 0.5).to(dev, dt).requires_grad_()
    b = torch.zeros(4 * H, device=dev, requires_grad=True)
    nnf = torch.nn.functional

    def forward(xs):
        xp = (xs @ w_x).float() + b
        h = c = n = m = torch.zeros(B, H, device=dev)
        ys = []
        for t in range(xs.shape[0]):
            hp = torch.einsum("bkd,kde->bke", h.view(B, k, d).to(dt), w_h).float()
            pi, pf, pz, po = (xp[t] + hp.view(B, k, 4, d).transpose(1, 2).reshape(B, 4 * H)).chunk(4, dim=-1)
            log_f = nnf.logsigmoid(pf)
            m_new = torch.where(n == 0, pi, torch.maximum(log_f + m, pi))
            i, f = torch.exp(torch.clamp(pi - m_new, max=0.0)), torch.exp(torch.clamp(log_f + m - m_new, max=0.0))
            c, n, m = f * c + i * torch.tanh(pz), f * n + i, m_new
            h = torch.sigmoid(po) * c / n
            ys.append(h)
        return torch.stack(ys)

    return forward, (w_x, w_h, b)


def build_slstm_torch_loop(case: SCase, data: Data):
    torch, dev, sync = _torch_device()
    dt = torch.bfloat16 if case.dtype == "bfloat16" else torch.float32
    forward, params = _torch_slstm(torch, case, dev, dt)
    xs, ct = torch.from_numpy(data.xs).to(dev, dt), torch.from_numpy(data.ct).to(dev)
    return _torch_runner(torch, forward, params, xs, ct, case.mode, sync)


def build_slstm_xlstm(case: SCase, data: Data):
    """The xlstm package's sLSTMLayer, vanilla backend, batch-first (its layout)."""
    import numpy as np

    torch, dev, sync = _torch_device()
    try:
        from xlstm.blocks.slstm.layer import sLSTMLayer, sLSTMLayerConfig
    except Exception as e:  # ImportError, or a broken install
        raise Unavailable(f"the xlstm package is not importable ({type(e).__name__}: {e})") from e
    dt = torch.bfloat16 if case.dtype == "bfloat16" else torch.float32
    torch.manual_seed(0)
    config = sLSTMLayerConfig(embedding_dim=case.H, num_heads=case.heads, backend="vanilla", conv1d_kernel_size=0)
    layer = sLSTMLayer(config).to(dev, dt)
    xs = torch.from_numpy(np.ascontiguousarray(np.swapaxes(data.xs, 0, 1))).to(dev, dt)
    ct = torch.from_numpy(np.ascontiguousarray(np.swapaxes(data.ct, 0, 1))).to(dev)
    return _torch_runner(torch, layer, list(layer.parameters()), xs, ct, case.mode, sync)


SLSTM_BUILDERS = {"jlstm": build_slstm_jlstm, "jlstm_pallas": build_slstm_pallas, "jlstm_ref": build_slstm_ref,
                  "torch_loop": build_slstm_torch_loop, "xlstm": build_slstm_xlstm}


# --------------------------------------------------------------------------- running


def run(smoke: bool, repeats: int, slstm_repeats: int, names: Sequence[str], save=None, log=print) -> dict:
    """Time the chosen sections; returns the JSON document (rows tagged with their section).

    ``save(doc)`` is called after every case, so a run cut short keeps what it measured.
    """
    import jax

    from benchmarks.peers import versions
    from benchmarks.scan import device_name, format_table, run_suite

    backend = jax.default_backend()
    gpu, device = backend in ("gpu", "cuda", "rocm"), device_name()
    log(f"anchors on {device} (backend {backend}), median of {repeats}" + (" [smoke]" if smoke else ""))
    doc = _document(smoke, device, gpu, versions(), {"lstm": repeats, "latency": repeats, "slstm": slstm_repeats})
    noted: set = set()
    for name, cases in sections(smoke).items():
        if name not in names:
            continue
        impls, builders = (SLSTM_IMPLS, SLSTM_BUILDERS) if name == "slstm" else (LSTM_IMPLS, BUILDERS)
        rows = []
        for case in cases:
            r, s = run_suite([case], list(impls), doc["repeats"][name], device, backend, log, noted, builders)
            extra = {"section": name, **({"heads": case.heads} if isinstance(case, SCase) else {})}
            for row in r:
                row.update(extra)
                if name == "latency":
                    row["us_per_step"] = round(1e3 * row["median_ms"] / case.T, 3)
            rows += r
            doc["results"] += r
            doc["skipped"] += [{**x, **extra} for x in s]
            if save is not None:
                save(doc)
        for heads in sorted({r.get("heads") for r in rows}, key=lambda h: h or 0):
            log(f"\n== {name}" + (f", {heads} heads" if heads else ""))
            log(format_table([r for r in rows if r.get("heads") == heads], gpu))
    return doc


def _document(smoke: bool, device: str, gpu: bool, vers: dict, repeats: dict) -> dict:
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {"suite": "anchors", "smoke": smoke, "device": device, "backend": "gpu" if gpu else "cpu",
            "versions": vers, "date": date, "repeats": repeats, "results": [], "skipped": [],
            "reference": FLASHRNN_H100,
            "notes": "median_ms: median of repeats after one warm-up; ratio: impl median / jlstm median of the "
                     "same case; us_per_step: median_ms * 1000 / T; sLSTM tflops count 8*T*B*H*(I+d) per forward "
                     "(x3 for fwd+bwd); reference: FlashRNN's published H100 numbers, not measured here"}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.anchors", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that everything runs")
    p.add_argument("--sections", default="lstm,latency,slstm", help="comma list from lstm, latency, slstm")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 10; smoke 1)")
    p.add_argument("--slstm-repeats", type=int, default=None,
                   help="timed calls per sLSTM case (default 5: its eager PyTorch peer takes ~0.1-1 s a call)")
    p.add_argument("--out", default=None, help="write JSON here (e.g. benchmarks/results/gpu_anchors.json)")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    if not names or set(names) - {"lstm", "latency", "slstm"}:
        p.error(f"--sections takes lstm, latency and slstm, got {args.sections!r}")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # torch and JAX share the card
    save = None
    if args.out:
        from benchmarks.deer import write

        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        save = functools.partial(write, args.out)
    repeats = args.repeats or (1 if args.smoke else 10)
    doc = run(args.smoke, repeats, args.slstm_repeats or (1 if args.smoke else 5), names, save)
    if save is not None:
        save(doc)
        print(f"wrote {args.out}")
    return 0 if any(r["impl"] == "jlstm" for r in doc["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
