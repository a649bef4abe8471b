"""The measured routing table: which path a sequence takes on each backend, as data.

One :class:`Plan` per backend holds every backend-dependent choice jlstm makes: the loop's unroll,
where the fused LSTM projects its inputs, whether the Pallas kernel may run and for which shapes,
from which T the min cells take their parallel form, and which evaluation of an affine recurrence
runs. :class:`jlstm.Auto` reads it (``Auto(plan=...)`` overrides it); the kernels and forms receive a
plan instead of asking JAX which backend they are on. :func:`current_plan` is the one place that asks.

The numbers come from the benchmarks (``benchmarks/results/``): on 2 CPU cores the hoisted input
GEMM of the fused LSTM loses to T small in-loop ones from batch 8 (10-11 ms against 16-23 ms at
T=128, B=32, I=128, H=256); the min cells' parallel form ran at 0.8-1.25x the loop there, so the
loop stays; the blocked affine scan ran as fast as ``associative_scan`` and compiled 5-6x faster. On an
H200 a while-loop iteration costs several microseconds (unroll 8 amortises it), and the Pallas kernel
fits one SM's shared memory up to H=64 (H=128 asked for 532,480 of 232,448 bytes). The Pallas sLSTM
kernel holds one head's ``d × 4d`` block per program; its head-size limit is derived in
:mod:`jlstm.kernels.pallas_slstm` (not yet timed on a GPU: the GPU plan caps it at d = 64). The wide
persistent LSTM kernel (:mod:`jlstm.kernels.pallas_lstm_wide`) has not run on a GPU yet, so no plan
routes to it (``pallas_wide=False``); ``benchmarks/gpu_run.sh`` times it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax


class Plan(NamedTuple):
    """Every backend-dependent routing choice, for one backend.

    Attributes:
      backend: the platform name (``"cpu"``, ``"gpu"``, ``"tpu"``).
      unroll: steps per loop iteration when the caller passes ``unroll=None``.
      fused_unroll: the same for a cell's fused sequence kernel (``None``: ``unroll``). On 2 CPU cores
        the fused LSTM's in-loop forward ran 20.4-21.1 ms with 2 against 24.8-25.2 with 1 (T=128, B=32,
        I=128, H=256); training was within the noise (94-106 ms against 100-103).
      lstm_backward_unroll: the fused LSTM's and GRU's tangent (backward) loop unroll where the kernel is
        given one int (``None``: that int). On 2 CPU cores, since the backward loop reads its coefficients as
        separate arrays, 1 beat 2 in training: 122.7 against 131.1 ms median over 45 interleaved calls
        (T=128, B=32, I=128, H=256, forward unroll 2 in both).
      lstm_inloop_from_batch: the fused LSTM and GRU multiply the inputs inside the loop from this batch
        size on (``None``: never; they hoist one GEMM over all steps).
      step_inloop_from_batch: the loop over a cell's projected step (``jlstm.make_cell`` cells, every
        cell under ``fast=False``, the sLSTM off its kernel) projects each step's input inside the loop
        from this batch size on, for cells whose projection is at least twice as wide as their output
        (the gated ones; :func:`jlstm.core.loop.projects_in_loop`), instead of one GEMM over all steps
        before it (``None``: always before). On 2 CPU cores at T=128, B=32, I=128, H=256 the forward
        took 0.44-0.68x its hoisted time (``benchmarks/results/step_layout_cpu_epyc.json``: GRU 21.8
        against 37.3 ms, LSTM 30.2 against 50.3, sLSTM 32.3 against 47.4, minGRU 7.7 against 17.6)
        and training 0.80-1.00x; the plain RNN (projection as wide as its output) gained in neither.
      lstm_step_forward_to_batch: up to this batch size, a forward-only LSTM call (nothing
        differentiates it) runs the cell's own step loop instead of the fused one (``None``: never).
        On an H200 the step loop took 0.76-0.87x the fused forward's time at B = 1, 16 and 64
        (``benchmarks/results/gpu_perf.json``: 2.49 against 2.94 ms at (1, 512, 512, 512), 2.24
        against 2.97 at (64, 256, 512, 512), 8.78 against 10.06 at (16, 2048, 256, 256)) and tied at
        B = 256 (2.98 against 2.87); training keeps the fused path, which won there. On 2 CPU cores
        the fused forward won.
      pallas: whether the Pallas LSTM kernel may run at all.
      pallas_max_hidden, pallas_max_batch: the largest shapes it serves.
      parallel_from_T: the min cells take their parallel form from this T on (``None``: never).
      associative: affine recurrences and ELK's Kalman filter use ``lax.associative_scan`` (else √T blocks).
      lapack_solve: the damped solve may call LAPACK/cuSOLVER for matrices wider than 64 (else
        Gauss-Jordan elimination in XLA: on XLA:CPU two concurrent batched LAPACK solves
        deadlocked a 2-thread pool).
      pallas_slstm: whether the sLSTM's Pallas kernel may run (off a GPU: in interpret mode).
      pallas_slstm_max_head: the largest head size ``d`` it serves (also bounded by shared memory).
      pallas_slstm_tile: the batch rows of one program (a power of two ≥ 16 on a GPU).
      pallas_wide: whether the LSTM may take the wide persistent kernel
        (:mod:`jlstm.kernels.pallas_lstm_wide`) where the one-program kernel does not fit. Off on
        every backend until a GPU run times it against the fused scan.
      pallas_wide_block, pallas_wide_tile: its hidden units and batch rows per program.
      native_from_batch: from this batch size on, the LSTM (float32, any peepholes, H a multiple of 8)
        runs its loops on the native CPU kernel (:mod:`jlstm.kernels.native_lstm`; ``None``: never).
        On 2 CPU cores (``benchmarks/results/native_lstm_cpu_epyc.json``, fused XLA time / native time,
        interleaved) the kernel won the forward at B = 1-128 with H = 256 (1.13-2.03x) and B = 16,
        H = 1024 (2.22x), training at B = 1-128 with H = 256 (1.14-1.48x), tied at B = 256 (1.01x,
        0.97x), and tied or lost where a step is tiny (B = 4, H = 64: 0.98x forward, 0.74x
        training) or a matrix-vector product over a 4 MB W_h (B = 1, H = 512: 0.90x, 0.96x).
      native_train_to_batch: the largest batch whose training (the tangent and backward loops) takes
        the kernel (``None``: no limit; forward-only calls are not capped).
      gru_native_from_batch, gru_native_train_to_batch: the same for ``jlstm.gru`` (float32, H a
        multiple of 8) and its native kernel (:mod:`jlstm.kernels.native_gru`). On 2 CPU cores
        (``benchmarks/results/native_gru_cpu_epyc.json``, fused XLA time / native time,
        interleaved) the kernel won the forward at B = 1-64 with H = 256 (1.20-2.58x) and training
        there (1.13-1.31x), won training at B = 128 and H = 512 (1.15x, 1.13x), tied from B = 128 on
        and at H = 1024 (0.96-1.15x), and lost training where a step is tiny (B = 4 and 32 at H = 64:
        0.82x, 0.94x) or a matrix-vector product over a 3 MB W_h (B = 1, H = 512: 0.77x; 0.96x in an
        earlier run).
    """

    backend: str
    unroll: int = 1
    fused_unroll: int | None = None
    lstm_backward_unroll: int | None = None
    lstm_inloop_from_batch: int | None = None
    lstm_step_forward_to_batch: int | None = None
    step_inloop_from_batch: int | None = None
    pallas: bool = False
    pallas_max_hidden: int = 64
    pallas_max_batch: int = 64
    parallel_from_T: int | None = None
    associative: bool = False
    lapack_solve: bool = False
    pallas_slstm: bool = False
    pallas_slstm_max_head: int = 64
    pallas_slstm_tile: int = 16
    pallas_wide: bool = False
    pallas_wide_block: int = 16
    pallas_wide_tile: int = 16
    native_from_batch: int | None = None
    native_train_to_batch: int | None = None
    gru_native_from_batch: int | None = None
    gru_native_train_to_batch: int | None = None


PLANS: dict[str, Plan] = {
    "cpu": Plan("cpu", unroll=1, fused_unroll=2, lstm_backward_unroll=1, lstm_inloop_from_batch=8,
                step_inloop_from_batch=8, pallas=False, parallel_from_T=None, associative=False,
                native_from_batch=1, gru_native_from_batch=1),
    "gpu": Plan("gpu", unroll=8, lstm_inloop_from_batch=None, lstm_step_forward_to_batch=64, pallas=True,
                parallel_from_T=32, associative=True, lapack_solve=True,
                pallas_slstm=True),
    "tpu": Plan("tpu", unroll=8, lstm_inloop_from_batch=None, pallas=False, parallel_from_T=32, associative=True,
                lapack_solve=True),
}
_ALIASES = {"cuda": "gpu", "rocm": "gpu", "METAL": "gpu"}


def plan_for(backend: str) -> Plan:
    """The plan of ``backend`` (``"cuda"`` and ``"rocm"`` are ``"gpu"``; an unknown one gets the GPU's)."""
    backend = _ALIASES.get(backend, backend)
    return PLANS.get(backend, PLANS["gpu"]._replace(backend=backend))


def current_plan() -> Plan:
    """The plan of the default backend: the one place jlstm asks JAX which backend it runs on."""
    return plan_for(jax.default_backend())
