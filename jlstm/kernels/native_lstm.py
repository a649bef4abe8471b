"""The LSTM's loops as a native CPU kernel: C++ behind XLA's FFI, built on first use.

XLA:CPU runs the fused LSTM's small per-step GEMMs (``(B, I + H) × (I + H, 4H)``) at about half
of what the cores can do, and PyTorch's oneDNN LSTM beat it on CPU. The C++ in
``jlstm/kernels/native/`` does the three sequential loops of :mod:`jlstm.kernels.fused_lstm` itself:

* ``forward``: the primal loop, with the input projection inside the step, and (for training) the
  backward coefficients ``P, Q, F`` of :func:`jlstm.kernels.fused_lstm._coefficients`;
* ``tangent``: the linear tangent recurrence of :func:`jlstm.kernels.fused_lstm._tangent_loop`;
* ``adjoint``: its transpose, which reverse mode runs.

Each thread owns a range of hidden units and packs their weight columns once per call, so the
weights are read from cache, not re-packed every step; the threads meet at one barrier per step.
The weight gradients stay single XLA GEMMs over all ``T·B`` rows, as in the fused path.

The tangent loop is a JAX primitive whose transpose rule is the adjoint kernel (and the adjoint's is
the tangent kernel), so ``jax.grad`` runs native loops in both directions while ``jax.jvp`` keeps
working; ``vmap`` folds a mapped axis into the batch. Where a derivative would need the kernels'
own derivatives (second order through the coefficients or the weights), the primitives
differentiate the pure-JAX loop they replace instead (``reference``), so every order of
differentiation stays correct, only slower.

Building: the first call compiles ``native/lstm_ffi.cc`` with the system's C++ compiler
(``$CXX`` or ``g++``/``c++``/``clang++``) against jaxlib's FFI headers, with ``-march=native``, into
``$JLSTM_CACHE_DIR`` (default ``~/.cache/jlstm``), and later processes load the cached library
(keyed by the sources, the compiler, jaxlib and the CPU). Where no compiler is found, the build
fails, or ``JLSTM_NATIVE=0`` is set, :func:`available` is False and jlstm keeps the pure-JAX path;
a failed build warns once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_SOURCES = pathlib.Path(__file__).parent / "native"
_FILES = ("lstm_ffi.cc", "lstm_cpu.h")
_TARGETS = {"forward": "JlstmLstmForward", "tangent": "JlstmLstmTangent", "adjoint": "JlstmLstmAdjoint"}
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno")
_lock = threading.Lock()
_state: dict[str, Any] = {}


def enabled() -> bool:
    """``JLSTM_NATIVE=0`` (or false/no/off) in the environment keeps the LSTM off the native kernel."""
    return os.environ.get("JLSTM_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """The CPU model and flags, so that a cache shared between machines never serves another CPU's build."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep))


def cache_dir() -> pathlib.Path:
    """Where the compiled library lives: ``$JLSTM_CACHE_DIR``, else ``$XDG_CACHE_HOME/jlstm``, else
    ``~/.cache/jlstm``."""
    if os.environ.get("JLSTM_CACHE_DIR"):
        return pathlib.Path(os.environ["JLSTM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "jlstm"


def _library_path(cxx: str, include: str) -> pathlib.Path:
    h = hashlib.sha256()
    for name in _FILES:
        h.update((_SOURCES / name).read_bytes())
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    for part in (cxx, version, " ".join(_FLAGS), include, jax.__version__, _cpu_signature(), platform.machine()):
        h.update(part.encode())
    return cache_dir() / f"jlstm_lstm_{h.hexdigest()[:16]}.so"


def _build(cxx: str, include: str, target: pathlib.Path) -> None:
    """Compile into a temporary file next to ``target`` and rename it there (atomic: a concurrent
    process sees the old state or the whole library, never a partial one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cxx, *_FLAGS, "-I", str(_SOURCES), "-isystem", include, str(_SOURCES / "lstm_ffi.cc"), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> dict[str, Any] | None:
    """Build (once per cache) and register the FFI targets; ``None`` where that is not possible."""
    cxx = _compiler()
    if cxx is None:
        _state["error"] = "no C++ compiler found ($CXX, g++, c++ or clang++)"
        return None
    include = jax.ffi.include_dir()
    path = _library_path(cxx, include)
    if not path.exists():
        _build(cxx, include, path)
    lib = ctypes.CDLL(str(path))
    for name, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(f"jlstm_lstm_{name}", jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return {"path": path, "vector_width": int(lib.JlstmLstmVectorWidth()), "lib": lib}


def library() -> dict[str, Any] | None:
    """The loaded library's facts (``path``, ``vector_width``), building it on the first call; ``None``
    where the native path is unavailable (see :func:`why_unavailable`)."""
    with _lock:
        if "loaded" not in _state:
            try:
                _state["loaded"] = _load()
            except Exception as err:  # noqa: BLE001 -- any build or load failure means: use the JAX path
                _state["loaded"] = None
                _state["error"] = f"{type(err).__name__}: {err}"
                warnings.warn(f"jlstm: the native CPU LSTM kernel is unavailable, the pure-JAX path runs "
                              f"instead ({_state['error']})", RuntimeWarning, stacklevel=3)
        return _state["loaded"]


def available() -> bool:
    """Whether the native kernels can run here: enabled, and the library built and loaded."""
    return enabled() and library() is not None


def why_unavailable() -> str | None:
    """Why :func:`available` is False (``None`` when it is True)."""
    if not enabled():
        return "JLSTM_NATIVE=0 is set"
    if library() is None:
        return _state.get("error", "unknown")
    return None


def supports(B: int, H: int, I: int) -> bool:
    """Whether the kernels take this shape: H a multiple of the vector width, positive sizes."""
    lib = library()
    return lib is not None and B > 0 and I > 0 and H > 0 and H % lib["vector_width"] == 0


class Coefficients(NamedTuple):
    """The backward coefficients, [T, B, H] each (:class:`jlstm.kernels.fused_lstm.Coefficients`' fields)."""

    P: jax.Array
    Q: tuple
    F: jax.Array


def _require() -> None:
    if library() is None:
        raise RuntimeError(f"jlstm: the native CPU LSTM kernel is unavailable: {why_unavailable()}")


def _pred(a: jax.Array | None) -> jax.Array:
    return jnp.zeros((0,), jnp.bool_) if a is None else a.astype(jnp.bool_)


def forward(w_x, w_h, b, xs, h0, c0, m, r, *, save: bool, keep_states: bool, project_first: bool = False):
    """The primal loop: ``(h_T, c_T, ys, hs, coefficients)``; ``hs`` (the carried states, [T, B, H])
    only with ``keep_states``, the coefficients only with ``save`` (else ``None``). float32 throughout.

    ``project_first`` computes ``xs @ w_x`` for all steps in one XLA GEMM before the loop, so that a
    step reads only ``w_h`` (faster at small batches, where a step is bound by reading the weights);
    else each step projects its own inputs. Not differentiable by itself:
    :mod:`jlstm.kernels.fused_lstm` gives it a ``custom_jvp``.
    """
    _require()
    T, B, _ = xs.shape
    H = h0.shape[-1]
    f32 = jnp.float32
    seq = jax.ShapeDtypeStruct((T, B, H), f32)
    empty = jax.ShapeDtypeStruct((0,), f32)
    state = jax.ShapeDtypeStruct((B, H), f32)
    outs = [state, state, seq, seq if keep_states else empty] + [seq if save else empty] * 6
    call = jax.ffi.ffi_call("jlstm_lstm_forward", outs, vmap_method="sequential")
    x, wx = xs.astype(f32), w_x.astype(f32)
    if project_first:
        x, wx = jnp.einsum("tbi,ig->tbg", x, wx, precision=jax.lax.Precision.HIGHEST), jnp.zeros((0,), f32)
    hT, cT, ys, hs, P, Qi, Qf, Qg, Qo, F = call(x, wx, w_h.astype(f32), b.astype(f32), h0.astype(f32),
                                                c0.astype(f32), _pred(m), _pred(r))
    coef = Coefficients(P, (Qi, Qf, Qg, Qo), F) if save else None
    return hT, cT, ys, (hs if keep_states else None), coef


# --- the tangent recurrence and its transpose, as primitives --------------------------------------------
#
# tangent operands: drive, P, Qi, Qf, Qg, Qo, F, m, r, w_h, dh0, dc0 -> (dh_T, dc_T, dys); linear in 0, 10, 11.
# adjoint operands: g_dys, g_dhT, g_dcT, P, Qi, Qf, Qg, Qo, F, m, r, w_h -> (g_drive, g_dh0, g_dc0); linear
# in 0, 1, 2. Operand kinds for vmap: "seq" [T, B, ·], "mask" [T, B] or (0,), "state" [B, ·], "w" [H, 4H].

_LINEAR = {"tangent": (0, 10, 11), "adjoint": (0, 1, 2)}
_KINDS = {"tangent": ("seq",) * 7 + ("mask", "mask", "w", "state", "state"),
          "adjoint": ("seq", "state", "state") + ("seq",) * 6 + ("mask", "mask", "w")}
_OUT_KINDS = {"tangent": ("state", "state", "seq"), "adjoint": ("seq", "state", "state")}


def _out_shapes(kind: str, first_shape: tuple) -> list[tuple]:
    if kind == "tangent":
        T, B, G = first_shape
        return [(B, G // 4), (B, G // 4), (T, B, G // 4)]
    T, B, H = first_shape
    return [(T, B, 4 * H), (B, H), (B, H)]


def _abstract(kind: str, first, *rest, reference):
    from jax.core import ShapedArray

    return [ShapedArray(s, jnp.float32) for s in _out_shapes(kind, first.shape)]


def _call(kind: str, *args, reference):
    outs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in _out_shapes(kind, args[0].shape)]
    return jax.ffi.ffi_call(f"jlstm_lstm_{kind}", outs, vmap_method="sequential")(*args)


def _is_zero(t) -> bool:
    from jax.interpreters import ad

    return t is None or type(t) is ad.Zero


def _jvp(kind: str, primals, tangents, *, reference):
    """Linear in the ``_LINEAR`` operands: the JVP is the primitive on their tangents while the other
    operands (coefficients, masks, weights) carry none; else the JVP of the pure-JAX loop it replaces."""
    from jax.interpreters import ad

    prim = _state["prims"][kind]
    out = prim.bind(*primals, reference=reference)
    linear = _LINEAR[kind]
    if all(_is_zero(t) for k, t in enumerate(tangents) if k not in linear):
        args = [ad.instantiate_zeros(t) if k in linear else p for k, (p, t) in enumerate(zip(primals, tangents))]
        return out, prim.bind(*args, reference=reference)
    tans = tuple(np.zeros(p.shape, jax.dtypes.float0) if p.dtype == jnp.bool_
                 else (jnp.zeros_like(p) if _is_zero(t) else t) for p, t in zip(primals, tangents))
    _, t_out = jax.jvp(reference[0 if kind == "tangent" else 1], tuple(primals), tans)
    return out, list(t_out)


def _transpose(kind: str, cts, *args, reference):
    """The tangent loop's transpose is the adjoint loop, and the adjoint's is the tangent loop."""
    from jax.interpreters import ad

    linear = _LINEAR[kind]
    if any(ad.is_undefined_primal(a) for k, a in enumerate(args) if k not in linear):
        raise NotImplementedError(f"jlstm native LSTM: the {kind} loop is linear only in operands {linear}")
    first = args[0].aval if ad.is_undefined_primal(args[0]) else jax.typeof(args[0])
    cts = [jnp.zeros(s, jnp.float32) if _is_zero(c) else c for c, s in zip(cts, _out_shapes(kind, first.shape))]
    fixed = args[3:] if kind == "adjoint" else args[1:10]  # P ... r, w_h
    if kind == "tangent":  # cotangents (dh_T, dc_T, dys) -> adjoint(g_dys, g_dhT, g_dcT, ...)
        res = _state["prims"]["adjoint"].bind(cts[2], cts[0], cts[1], *fixed, reference=reference)
        grads = {0: res[0], 10: res[1], 11: res[2]}
    else:  # cotangents (g_drive, g_dh0, g_dc0) -> tangent(drive, ..., dh0, dc0) = (dh_T, dc_T, dys)
        res = _state["prims"]["tangent"].bind(cts[0], *fixed, cts[1], cts[2], reference=reference)
        grads = {0: res[2], 1: res[0], 2: res[1]}
    return [grads[k] if k in grads and ad.is_undefined_primal(args[k]) else None for k in range(len(args))]


def _batch(kind: str, args, dims, *, reference):
    """vmap: fold the mapped axis into the batch where the weights are shared, else map over it."""
    prim = _state["prims"][kind]
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    kinds = _KINDS[kind]
    if dims[kinds.index("w")] is not None:
        moved = [jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (size,) + a.shape)
                 for a, d in zip(args, dims)]
        outs = jax.lax.map(lambda xs: prim.bind(*xs, reference=reference), moved)
        return list(outs), [0] * len(outs)
    unbatched = [a.shape if d is None else a.shape[:d] + a.shape[d + 1:] for a, d in zip(args, dims)]
    B = next(sh[1 if k == "seq" else 0] for sh, k in zip(unbatched, kinds) if k in ("seq", "state"))
    folded = []
    for a, d, k in zip(args, dims, kinds):
        if k == "w" or (k == "mask" and a.size == 0 and d is None):
            folded.append(a)
            continue
        a = jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (size,) + a.shape)
        if k == "state":  # [V, B, ·] -> [V·B, ·]
            folded.append(a.reshape((size * B,) + a.shape[2:]))
        else:  # [V, T, B, ·] -> [T, V·B, ·]
            a = jnp.moveaxis(a, 0, 1)
            folded.append(a.reshape((a.shape[0], size * B) + a.shape[3:]))
    outs = prim.bind(*folded, reference=reference)
    result = [o.reshape((size, B) + o.shape[1:]) if k == "state"
              else o.reshape((o.shape[0], size, B) + o.shape[2:]) for o, k in zip(outs, _OUT_KINDS[kind])]
    return result, [0 if k == "state" else 1 for k in _OUT_KINDS[kind]]


def _primitives() -> dict[str, Any]:
    """Create and register (once) the two primitives. Deferred so that importing jlstm does not touch
    JAX's internals; the rules use ``jax.interpreters`` (ad, batching, mlir)."""
    if "prims" in _state:
        return _state["prims"]
    from jax.extend.core import Primitive
    from jax.interpreters import ad, batching, mlir

    prims = {}
    for kind in ("tangent", "adjoint"):
        prim = Primitive(f"jlstm_lstm_{kind}")
        prim.multiple_results = True
        call = functools.partial(_call, kind)
        prim.def_impl(call)
        prim.def_abstract_eval(functools.partial(_abstract, kind))
        mlir.register_lowering(prim, mlir.lower_fun(call, multiple_results=True), platform="cpu")
        ad.primitive_jvps[prim] = functools.partial(_jvp, kind)
        ad.primitive_transposes[prim] = functools.partial(_transpose, kind)
        batching.primitive_batchers[prim] = functools.partial(_batch, kind)
        prims[kind] = prim
    _state["prims"] = prims
    return prims


def tangent(drive, coef, m, r, w_h, dh0, dc0, *, reference: tuple[Callable, Callable]):
    """The tangent recurrence (``(dh_T, dc_T, dys)``) on the native kernel.

    ``coef`` holds ``P``, ``Q = (Q_i, Q_f, Q_g, Q_o)`` and ``F``; ``m`` and ``r`` are None or bool
    [T, B]. ``reference`` is ``(tangent, adjoint)``: pure-JAX functions of the primitives' operands
    with the same results, differentiated where a derivative of the kernels themselves is needed.
    """
    _require()
    tangent_p = _primitives()["tangent"]
    f32 = jnp.float32
    P, (Qi, Qf, Qg, Qo), F = coef
    args = (drive.astype(f32), P, Qi, Qf, Qg, Qo, F, _pred(m), _pred(r), w_h.astype(f32),
            dh0.astype(f32), dc0.astype(f32))
    return tuple(tangent_p.bind(*args, reference=reference))
