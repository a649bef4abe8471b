"""The implementations the scan benchmark times: jlstm and its peers, one builder each.

A builder takes a :class:`Case` and the shared NumPy data and returns a zero-argument
callable that runs one forward (``fwd``: the outputs ``ys``) or one training step
(``fwd+bwd``: the gradient of ``sum(ys * ct)`` with respect to the parameters AND the
inputs) and blocks until the result is ready. A builder raises :class:`Unavailable` when
its library is missing or cannot run the case here (e.g. cuDNN on a CPU).

How each peer is written (the way its users write it):

* ``jlstm``: ``jlstm.scan(jlstm.lstm(H), params, xs)`` under ``jax.jit``; the fused fast
  path (hoisted input GEMM, custom VJP with hoisted weight-gradient GEMMs).
* ``jlstm_ref``: the same with ``fast=False`` (a plain ``lax.scan`` of ``cell.step``).
* ``jlstm_fused``: ``jlstm.lstm_sequence`` directly, the fused scan (on GPU ``jlstm``
  takes the Pallas kernel when the shape fits; this is the path it would otherwise take).
* ``jlstm_pallas``: the Pallas kernel directly (GPU only, float32, B ≤ 64, H a power of
  two ≤ 1024).
* ``jlstm_pallas_wide``: the wide persistent kernel directly (GPU only: W_h split by hidden
  units over the programs of one grid, float32 or bf16 matmuls; where
  :func:`jlstm.kernels.pallas_lstm_wide.options` accepts the shape).
* ``gemm_floor``: not an LSTM, the GEMM floor: only the matmuls of the same shapes and
  FLOPs as jlstm's fused path (:func:`build_gemm_floor`).
* ``flax``: ``nn.RNN(nn.OptimizedLSTMCell(H), time_major=True)``, jitted ``apply`` /
  ``jax.grad``.
* ``equinox``: ``eqx.nn.LSTMCell`` vmapped over the batch inside a ``lax.scan`` over time,
  hoisting nothing.
* ``keras``: ``keras.layers.LSTM(H, return_sequences=True)`` on the JAX backend, called
  through ``layer.stateless_call`` inside ``jax.jit`` (Keras' own training step does the
  same); batch-major input, its native layout.
* ``torch``: ``torch.nn.LSTM`` (oneDNN on CPU, cuDNN on GPU); time-major input, its
  default layout; forward under ``torch.no_grad()``, training via ``torch.autograd.grad``;
  ``torch.cuda.synchronize()`` before the clock stops.
* ``jax_cudnn``: ``jax.experimental.rnn.lstm`` (cuDNN called from JAX; GPU only).

bfloat16 means mixed precision where the library offers it (jlstm ``dtype=bf16``, Flax
``dtype=bf16``, Keras policy ``mixed_bfloat16``: float32 parameters, bf16 matmuls) and
a bf16 module otherwise (Equinox ``dtype=bf16``, ``torch`` ``.to(bfloat16)``,
``jax_cudnn`` bf16 weights).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

Runner = Callable[[], object]


class Unavailable(Exception):
    """The implementation cannot run here (library missing, wrong backend, dtype unsupported)."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One timing: batch ``B``, steps ``T``, input ``I``, hidden ``H``, mode and dtype."""

    B: int
    T: int
    I: int  # noqa: E741
    H: int
    mode: str  # "fwd" | "fwd+bwd"
    dtype: str  # "float32" | "bfloat16"
    peephole: str | None = None  # jlstm only: None, "diagonal" or "full"

    @property
    def flops(self) -> float:
        """Forward 8·T·B·H·(I+H); training three times that."""
        f = 8.0 * self.T * self.B * self.H * (self.I + self.H)
        return f if self.mode == "fwd" else 3.0 * f


@dataclasses.dataclass
class Data:
    """Shared inputs: ``xs`` [T, B, I] and the output cotangent ``ct`` [T, B, H] (float32)."""

    xs: np.ndarray
    ct: np.ndarray

    @classmethod
    def make(cls, case: Case, seed: int = 0) -> Data:
        rng = np.random.default_rng(seed)
        xs = rng.standard_normal((case.T, case.B, case.I), dtype=np.float32)
        ct = rng.standard_normal((case.T, case.B, case.H), dtype=np.float32)
        return cls(xs, ct)


# --------------------------------------------------------------------------- JAX helpers


def _jnp_dtype(case: Case):
    import jax.numpy as jnp

    return jnp.bfloat16 if case.dtype == "bfloat16" else jnp.float32


def _jax_runner(forward: Callable, params, xs, ct, case: Case) -> Runner:
    """Jit ``forward(params, xs) -> ys`` (fwd) or its VJP with ``ct`` (fwd+bwd); block on results."""
    import jax
    import jax.numpy as jnp

    if case.mode == "fwd":
        f = jax.jit(forward)
    else:
        def loss(p, x, c):
            ys = forward(p, x)
            return jnp.sum(ys.astype(jnp.float32) * c)

        f = jax.jit(jax.grad(loss, argnums=(0, 1)))
    args = (params, xs) if case.mode == "fwd" else (params, xs, ct)
    args = jax.device_put(args)
    return lambda: jax.block_until_ready(f(*args))


def build_jlstm(case: Case, data: Data, *, fast: bool = True) -> Runner:
    import jax
    import jax.numpy as jnp

    import jlstm

    dt = _jnp_dtype(case)
    cell = jlstm.lstm(case.H, dtype=dt if case.dtype == "bfloat16" else None, peephole=case.peephole)
    params = cell.init(jax.random.key(0), case.I)

    def forward(p, x):
        return jlstm.scan(cell, p, x, fast=fast)[1]

    return _jax_runner(forward, params, jnp.asarray(data.xs, dt), jnp.asarray(data.ct), case)


def build_jlstm_ref(case: Case, data: Data) -> Runner:
    return build_jlstm(case, data, fast=False)


def _lstm_params(case: Case):
    import jax

    import jlstm

    return jlstm.lstm(case.H).init(jax.random.key(0), case.I)


def build_jlstm_fused(case: Case, data: Data) -> Runner:
    """jlstm's fused scan called directly (``jlstm.lstm_sequence``): the path without the Pallas kernel."""
    _no_peepholes(case)
    if case.dtype != "float32":
        raise Unavailable("jlstm_fused is timed in float32 only")
    import jax.numpy as jnp

    import jlstm

    h0 = jnp.zeros((case.B, case.H))

    def forward(p, x):
        return jlstm.lstm_sequence(p.w_x, p.w_h, p.b, x, h0, h0)[2]

    return _jax_runner(forward, _lstm_params(case), jnp.asarray(data.xs), jnp.asarray(data.ct), case)


def build_jlstm_pallas(case: Case, data: Data) -> Runner:
    """jlstm's Pallas kernel called directly, compiled for the GPU (never interpret mode)."""
    _no_peepholes(case)
    import jax.numpy as jnp

    from jlstm.core.plan import current_plan
    from jlstm.kernels import pallas_lstm as _pallas_lstm

    widest, plan = _pallas_lstm.KERNEL_MAX_HIDDEN, current_plan()
    if not _pallas_lstm.fits(case.B, case.H, None, None, widest) or case.dtype != "float32":
        raise Unavailable(f"the Pallas kernel serves float32, B <= {plan.pallas_max_batch} and H a power of two "
                          f"<= {widest} where the backend's plan allows it (jlstm.lstm routes it up to H = "
                          f"{plan.pallas_max_hidden}); backend {plan.backend!r}, pallas={plan.pallas}")
    h0 = jnp.zeros((case.B, case.H))

    def forward(p, x):
        return _pallas_lstm.lstm_pallas(p.w_x, p.w_h, p.b, x, h0, h0, None, False)[2]

    return _jax_runner(forward, _lstm_params(case), jnp.asarray(data.xs), jnp.asarray(data.ct), case)


def build_jlstm_pallas_wide(case: Case, data: Data) -> Runner:
    """jlstm's wide persistent kernel called directly, compiled for the GPU (never interpret mode); its
    backward kernel in fwd+bwd. bf16: float32 params, bf16 matmul operands, float32 accumulation."""
    _no_peepholes(case)
    import jax.numpy as jnp

    from jlstm.core.plan import current_plan
    from jlstm.kernels import pallas_lstm_wide as _wide

    plan, dt = current_plan(), _jnp_dtype(case)
    st = _wide.options(case.B, case.H, dt, plan=plan)
    if plan.backend != "gpu" or st is None:
        raise Unavailable(f"the wide kernel runs on a GPU where one program's block fits an SM and the grid "
                          f"(H/16 x B/16 programs) fits the device; backend {plan.backend!r}, H={case.H}, "
                          f"B={case.B}, {case.dtype}")
    h0 = jnp.zeros((case.B, case.H))

    def forward(p, x):
        return _wide.lstm_wide(p.w_x, p.w_h, p.b, x, h0, h0, st=st)[2].astype(dt)

    return _jax_runner(forward, _lstm_params(case), jnp.asarray(data.xs, dt), jnp.asarray(data.ct), case)


def build_gemm_floor(case: Case, data: Data) -> Runner:
    """The GEMM floor: only the matmuls of one LSTM forward (or training step), nothing else.

    The same shapes and FLOPs as jlstm's fused path, in XLA, in this process: the input GEMM
    ``[T·B, I]×[I, 4H]`` and a ``lax.scan`` of the T recurrent GEMMs ``[B, H]×[H, 4H]``
    (fwd); training adds the backward scan of ``[B, 4H]×[4H, H]`` and the three GEMMs over
    all steps ``Hᵀ dZ``, ``Xᵀ dZ`` and ``dZ W_xᵀ``. Operands are random, so no element-wise
    work, gate math, masking or layout change is timed: what is left of jlstm's time above
    this is overhead that is not GEMM. Independent GEMMs may overlap here, so it is a lower
    bound. FLOPs: 8·T·B·H·(I+H), ×3 for training.
    """
    if case.peephole == "full":
        raise Unavailable("full peepholes add GEMMs that the floor does not count")
    import jax
    import jax.numpy as jnp
    from jax import lax

    dt = _jnp_dtype(case)
    B, T, I, H = case.B, case.T, case.I, case.H
    k = jax.random.split(jax.random.key(0), 4)
    w_x = (0.05 * jax.random.normal(k[0], (I, 4 * H))).astype(dt)
    w_h = (0.05 * jax.random.normal(k[1], (H, 4 * H))).astype(dt)
    hs = jax.random.normal(k[2], (T, B, H)).astype(dt)
    dz = jax.random.normal(k[3], (T, B, 4 * H)).astype(dt)
    xs = jnp.asarray(data.xs, dt)

    def mm(a, b):
        return jnp.matmul(a, b, preferred_element_type=jnp.float32)

    def forward(w_x, w_h, xs, hs):
        zx = mm(xs.reshape(T * B, I), w_x)
        zh = lax.scan(lambda c, h: (c, mm(h, w_h)), None, hs)[1]
        return zx, zh

    def train(w_x, w_h, xs, hs, dz):
        zx, zh = forward(w_x, w_h, xs, hs)
        dh = lax.scan(lambda c, d: (c, mm(d, w_h.T)), None, dz, reverse=True)[1]
        dz2, x2 = dz.reshape(T * B, 4 * H), xs.reshape(T * B, I)
        return zx, zh, dh, mm(hs.reshape(T * B, H).T, dz2), mm(x2.T, dz2), mm(dz2, w_x.T)

    f = jax.jit(forward) if case.mode == "fwd" else jax.jit(train)
    args = (w_x, w_h, xs, hs) if case.mode == "fwd" else (w_x, w_h, xs, hs, dz)
    return lambda: jax.block_until_ready(f(*args))


def _no_peepholes(case: Case) -> None:
    if case.peephole is not None:
        raise Unavailable(f"{case.peephole} peepholes: only jlstm has them")


def build_flax(case: Case, data: Data) -> Runner:
    _no_peepholes(case)
    try:
        import flax.linen as nn
    except ImportError as e:
        raise Unavailable(f"flax is not installed ({e})") from e
    import jax
    import jax.numpy as jnp

    dt = _jnp_dtype(case)
    model = nn.RNN(nn.OptimizedLSTMCell(case.H, dtype=dt, param_dtype=jnp.float32), time_major=True)
    xs = jnp.asarray(data.xs, dt)
    variables = model.init(jax.random.key(0), xs[:, :1])
    return _jax_runner(model.apply, variables, xs, jnp.asarray(data.ct), case)


def build_equinox(case: Case, data: Data) -> Runner:
    _no_peepholes(case)
    try:
        import equinox as eqx
    except ImportError as e:
        raise Unavailable(f"equinox is not installed ({e})") from e
    import jax
    import jax.numpy as jnp
    from jax import lax

    dt = _jnp_dtype(case)
    kw = {"dtype": dt} if case.dtype == "bfloat16" else {}
    cell = eqx.nn.LSTMCell(case.I, case.H, key=jax.random.key(0), **kw)
    params, static = eqx.partition(cell, eqx.is_array)

    def forward(p, xs):
        c = eqx.combine(p, static)
        zeros = jnp.zeros((xs.shape[1], case.H), dt)

        def step(carry, x):
            carry = jax.vmap(c)(x, carry)
            return carry, carry[0]

        return lax.scan(step, (zeros, zeros), xs)[1]

    return _jax_runner(forward, params, jnp.asarray(data.xs, dt), jnp.asarray(data.ct), case)


def build_keras(case: Case, data: Data) -> Runner:
    _no_peepholes(case)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except Exception as e:  # ImportError, or a broken install needing TensorFlow
        raise Unavailable(f"keras is not importable ({type(e).__name__}: {e})") from e
    if keras.backend.backend() != "jax":
        raise Unavailable(f"keras runs on the {keras.backend.backend()!r} backend; set KERAS_BACKEND=jax")
    import jax.numpy as jnp

    policy = "mixed_bfloat16" if case.dtype == "bfloat16" else "float32"
    layer = keras.layers.LSTM(case.H, return_sequences=True, dtype=policy)
    layer.build((case.B, case.T, case.I))
    trainable = [v.value for v in layer.trainable_variables]
    frozen = [v.value for v in layer.non_trainable_variables]

    def forward(tv, xs):
        out = layer.stateless_call(tv, frozen, xs)
        return out[0] if isinstance(out, tuple) else out

    dt = _jnp_dtype(case)
    xs = jnp.asarray(np.swapaxes(data.xs, 0, 1), dt)        # [B, T, I], Keras' layout
    ct = jnp.asarray(np.swapaxes(data.ct, 0, 1))
    return _jax_runner(forward, trainable, xs, ct, case)


def build_jax_cudnn(case: Case, data: Data) -> Runner:
    _no_peepholes(case)
    import jax
    import jax.numpy as jnp

    if jax.default_backend() not in ("gpu", "cuda"):
        raise Unavailable(f"jax.experimental.rnn needs cuDNN (GPU); backend is {jax.default_backend()!r}")
    try:
        from jax.experimental import rnn
    except ImportError as e:
        raise Unavailable(f"jax.experimental.rnn is missing ({e})") from e
    dt = _jnp_dtype(case)
    B, H, I = case.B, case.H, case.I
    weights = rnn.init_lstm_weight(jax.random.key(0), I, H, 1, False).astype(dt)
    h0 = jnp.zeros((1, B, H), dt)
    lengths = jnp.full((B,), case.T, jnp.int32)

    def forward(w, xs):
        ys, _, _ = rnn.lstm(xs, h0, h0, w, lengths, I, H, 1, 0.0, False)
        return ys

    xs = jnp.asarray(np.swapaxes(data.xs, 0, 1), dt)        # [B, T, I]
    ct = jnp.asarray(np.swapaxes(data.ct, 0, 1))
    return _jax_runner(forward, weights, xs, ct, case)


def build_torch(case: Case, data: Data) -> Runner:
    _no_peepholes(case)
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"torch is not installed ({e})") from e
    dev, sync = torch_device()
    dt = torch.bfloat16 if case.dtype == "bfloat16" else torch.float32
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(case.I, case.H).to(dev, dt)
    xs = torch.from_numpy(data.xs).to(dev, dt)
    ct = torch.from_numpy(data.ct).to(dev, dt)
    params = list(lstm.parameters())

    if case.mode == "fwd":
        def run():
            with torch.no_grad():
                ys, _ = lstm(xs)
            sync()
            return ys
    else:
        xs.requires_grad_(True)

        def run():
            ys, _ = lstm(xs)
            grads = torch.autograd.grad((ys * ct).sum(), params + [xs])
            sync()
            return grads
    return run


def torch_device() -> tuple:
    """``(device, sync)`` for a PyTorch peer: CUDA where JAX runs on a GPU and PyTorch sees one (``sync`` waits
    for it), else the CPU with one thread per core this process may use (``sync`` does nothing)."""
    import jax
    import torch

    on_gpu = jax.default_backend() in ("gpu", "cuda") and torch.cuda.is_available()
    if not on_gpu:
        torch.set_num_threads(cpu_count())
    return torch.device("cuda" if on_gpu else "cpu"), (torch.cuda.synchronize if on_gpu else (lambda: None))


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, so ``taskset`` is honoured)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


BUILDERS: dict[str, Callable[[Case, Data], Runner]] = {
    "jlstm": build_jlstm,
    "jlstm_ref": build_jlstm_ref,
    "gemm_floor": build_gemm_floor,
    "jlstm_fused": build_jlstm_fused,
    "jlstm_pallas": build_jlstm_pallas,
    "jlstm_pallas_wide": build_jlstm_pallas_wide,
    "flax": build_flax,
    "equinox": build_equinox,
    "keras": build_keras,
    "torch": build_torch,
    "jax_cudnn": build_jax_cudnn,
}


def versions() -> dict[str, str]:
    """Versions of the libraries that are importable (never imports one that is missing)."""
    import importlib
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "equinox", "keras", "torch", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    try:
        import jlstm

        out["jlstm"] = jlstm.__version__
    except ImportError:
        pass
    if "torch" in out:
        try:
            torch = importlib.import_module("torch")
            if torch.cuda.is_available():
                out["cuda (torch)"] = str(torch.version.cuda)
                out["cudnn (torch)"] = str(torch.backends.cudnn.version())
        except Exception:  # a broken torch must not stop the benchmark
            pass
    return out
