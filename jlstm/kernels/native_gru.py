"""The GRU's loops as a native CPU kernel (``jlstm/kernels/native/gru_cpu.h``), beside the LSTM's.

The three sequential loops of :mod:`jlstm.kernels.fused_gru`, in C++ behind XLA's FFI:

* ``forward``: the primal loop, with the input projection inside the step (or projected by one XLA
  GEMM first), and for training the tangent coefficients ``A_r, A_z, A_n, R, F`` of
  :func:`jlstm.kernels.fused_gru._coefficients`;
* ``tangent``: the linear recurrence of :func:`jlstm.kernels.fused_gru._tangent_loop`;
* ``adjoint``: its transpose, which reverse mode runs.

The weight, bias and input gradients stay single XLA GEMMs over all ``T·B`` rows, as in the fused
path. The library, its build and the primitives' rules are :mod:`jlstm.kernels.native_library`'s.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from jlstm.kernels import native_library as _lib
from jlstm.kernels.native_library import available, enabled, supports  # noqa: F401 -- re-exported

# tangent operands: drive, a_n, A_r, A_z, A_n, R, F, m, r, w_h, dh0 -> (dh_T, dys), linear in drive, a_n and
# dh0; adjoint operands: g_dys, g_dhT, A_r, A_z, A_n, R, F, m, r, w_h -> (g_drive, g_an, g_dh0), linear in
# the two cotangents.
LOOPS = _lib.Loops(
    family="gru", gates=3,
    linear={"tangent": (0, 1, 10), "adjoint": (0, 1)},
    kinds={"tangent": ("drive",) + ("seq",) * 6 + ("mask", "mask", "w", "state"),
           "adjoint": ("seq", "state") + ("seq",) * 5 + ("mask", "mask", "w")},
    out_kinds={"tangent": ("state", "seq"), "adjoint": ("drive", "seq", "state")},
    perm=(1, 0),
)


def forward(w_x, w_h, b_x, b_h, xs, h0, m, r, *, save: bool, keep_states: bool, project_first: bool = False):
    """The primal loop: ``(h_T, ys, hs, coefficients)``; ``hs`` (the carried states, [T, B, H]) only
    with ``keep_states``, the coefficients ``(A_r, A_z, A_n, R, F)`` only with ``save`` (else ``None``).
    float32 throughout.

    ``project_first`` computes ``xs @ w_x`` for all steps in one XLA GEMM before the loop, so that a
    step reads only ``w_h``; else each step projects its own inputs. Not differentiable by itself:
    :mod:`jlstm.kernels.fused_gru` gives it a ``custom_jvp``.
    """
    _lib.require()
    T, B, _ = xs.shape
    f32 = jnp.float32
    call = _lib.forward_call("gru", T, B, h0.shape[-1], states=1, kept=(keep_states,), coefficients=5, save=save)
    x, wx = _lib.inputs(xs, w_x, project_first)
    hT, ys, hs, *coef = call(x, wx, w_h.astype(f32), b_x.astype(f32), b_h.astype(f32), h0.astype(f32),
                             _lib.pred(m), _lib.pred(r))
    return hT, ys, (hs if keep_states else None), (tuple(coef) if save else None)


def tangent(drive, a_n, coef, m, r, w_h, dh0, *, reference: tuple[Callable, Callable]):
    """The tangent recurrence (``(dh_T, dys)``) on the native kernel.

    ``drive`` [T, B, 3H] and ``a_n`` [T, B, H] are as in :func:`jlstm.kernels.fused_gru._tangent_loop`,
    ``coef`` holds ``(A_r, A_z, A_n, R, F)``; ``m`` and ``r`` are None or bool [T, B]. ``reference`` is
    ``(tangent, adjoint)``: pure-JAX functions of the primitives' operands with the same results,
    differentiated where a derivative of the kernels themselves is needed.
    """
    f32 = jnp.float32
    args = (drive.astype(f32), a_n.astype(f32), *coef, _lib.pred(m), _lib.pred(r), w_h.astype(f32),
            dh0.astype(f32))
    return _lib.tangent(LOOPS, args, reference)
