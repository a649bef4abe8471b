"""The LSTM's loops as a native CPU kernel: C++ behind XLA's FFI, built on first use.

XLA:CPU runs the fused LSTM's small per-step GEMMs (``(B, I + H) × (I + H, 4H)``) at about half
of what the cores can do, and PyTorch's oneDNN LSTM beat it on CPU. The C++ in
``jlstm/kernels/native/`` does the three sequential loops of :mod:`jlstm.kernels.fused_lstm` itself:

* ``forward``: the primal loop, with the input projection inside the step, peepholes (diagonal or
  full), and (for training) the backward coefficients ``P, Q, F`` of
  :func:`jlstm.kernels.fused_lstm._coefficients`;
* ``tangent``: the linear tangent recurrence of :func:`jlstm.kernels.fused_lstm._tangent_loop`;
* ``adjoint``: its transpose, which reverse mode runs.

Each thread owns a range of hidden units and packs their weight columns once per call, so the
weights are read from cache, not re-packed every step; the threads meet at one barrier per step.
The weight gradients stay single XLA GEMMs over all ``T·B`` rows, as in the fused path.

The tangent loop is a JAX primitive whose transpose rule is the adjoint kernel (and the adjoint's is
the tangent kernel), so ``jax.grad`` runs native loops in both directions while ``jax.jvp`` keeps
working; ``vmap`` folds a mapped axis into the batch (:mod:`jlstm.kernels.native_library`, which
also builds and loads the library and is re-exported here: :func:`available`, :func:`library`,
:func:`why_unavailable`, :func:`supports`, :func:`cache_dir`, :func:`enabled`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jlstm.kernels import native_library as _lib
from jlstm.kernels.native_library import (  # noqa: F401 -- re-exported: the library's state
    available,
    cache_dir,
    enabled,
    library,
    supports,
    why_unavailable,
)


class Coefficients(NamedTuple):
    """The backward coefficients, [T, B, H] each (:class:`jlstm.kernels.fused_lstm.Coefficients`' fields)."""

    P: jax.Array
    Q: tuple
    F: jax.Array


def forward(w_x, w_h, b, xs, h0, c0, m, r, *, save: bool, keep_states: bool, project_first: bool = False,
            w_c=None):
    """The primal loop: ``(h_T, c_T, ys, hs, cs, coefficients)``; ``hs`` (the carried states, [T, B, H])
    only with ``keep_states``, ``cs`` (the carried cell states) only with ``save`` and peepholes, the
    coefficients only with ``save`` (else ``None``). float32 throughout.
    ``w_c``: None, the diagonal peepholes [3, H] (``w_ci``, ``w_cf``, ``w_co``) or the full ones [H, 3H]
    (``[W_ci | W_cf | W_co]``, the article's form: every gate sees ``c_{t-1}``).

    ``project_first`` computes ``xs @ w_x`` for all steps in one XLA GEMM before the loop, so that a
    step reads only ``w_h`` (faster at small batches, where a step is bound by reading the weights);
    else each step projects its own inputs. Not differentiable by itself:
    :mod:`jlstm.kernels.fused_lstm` gives it a ``custom_jvp``.
    """
    _lib.require()
    T, B, _ = xs.shape
    f32 = jnp.float32
    keep_cells = save and w_c is not None
    call = _lib.forward_call("lstm", T, B, h0.shape[-1], states=2, kept=(keep_states, keep_cells), coefficients=6,
                             save=save)
    x, wx = _lib.inputs(xs, w_x, project_first)
    wc = jnp.zeros((0,), f32) if w_c is None else w_c.astype(f32)
    hT, cT, ys, hs, cs, P, Qi, Qf, Qg, Qo, F = call(x, wx, w_h.astype(f32), b.astype(f32), wc, h0.astype(f32),
                                                c0.astype(f32), _lib.pred(m), _lib.pred(r))
    coef = Coefficients(P, (Qi, Qf, Qg, Qo), F) if save else None
    return hT, cT, ys, (hs if keep_states else None), (cs if keep_cells else None), coef


# tangent operands: drive, P, Qi, Qf, Qg, Qo, F, m, r, w_h, dh0, dc0 -> (dh_T, dc_T, dys), linear in drive, dh0
# and dc0; adjoint operands: g_dys, g_dhT, g_dcT, P, Qi, Qf, Qg, Qo, F, m, r, w_h -> (g_drive, g_dh0, g_dc0),
# linear in the three cotangents.
LOOPS = _lib.Loops(
    family="lstm", gates=4,
    linear={"tangent": (0, 10, 11), "adjoint": (0, 1, 2)},
    kinds={"tangent": ("drive",) + ("seq",) * 6 + ("mask", "mask", "w", "state", "state"),
           "adjoint": ("seq", "state", "state") + ("seq",) * 6 + ("mask", "mask", "w")},
    out_kinds={"tangent": ("state", "state", "seq"), "adjoint": ("drive", "state", "state")},
    perm=(2, 0, 1),
)


def tangent(drive, coef, m, r, w_h, dh0, dc0, *, reference: tuple[Callable, Callable]):
    """The tangent recurrence (``(dh_T, dc_T, dys)``) on the native kernel.

    ``coef`` holds ``P``, ``Q = (Q_i, Q_f, Q_g, Q_o)`` and ``F``; ``m`` and ``r`` are None or bool
    [T, B]. ``reference`` is ``(tangent, adjoint)``: pure-JAX functions of the primitives' operands
    with the same results, differentiated where a derivative of the kernels themselves is needed.
    """
    f32 = jnp.float32
    P, (Qi, Qf, Qg, Qo), F = coef
    args = (drive.astype(f32), P, Qi, Qf, Qg, Qo, F, _lib.pred(m), _lib.pred(r), w_h.astype(f32),
            dh0.astype(f32), dc0.astype(f32))
    return _lib.tangent(LOOPS, args, reference)
