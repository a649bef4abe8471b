"""The native CPU kernels' library: C++ behind XLA's FFI, built on first use, and its loops as primitives.

The sources in ``jlstm/kernels/native/`` hold the LSTM's loops (``lstm_cpu.h``, used by
:mod:`jlstm.kernels.native_lstm`) and the GRU's (``gru_cpu.h``, :mod:`jlstm.kernels.native_gru`), each
a forward loop, a tangent loop and its transpose (the adjoint loop).

Building: the first call compiles ``native/lstm_ffi.cc`` and ``native/gru_ffi.cc`` into one library
with the system's C++ compiler (``$CXX`` or ``g++``/``c++``/``clang++``) against jaxlib's FFI headers,
with ``-march=native``, into ``$JLSTM_CACHE_DIR`` (default ``~/.cache/jlstm``), and later processes
load the cached library (keyed by the sources, the compiler, jaxlib and the CPU). Where no compiler is
found, the build fails, or ``JLSTM_NATIVE=0`` is set, :func:`available` is False and jlstm keeps the
pure-JAX path; a failed build warns once.

Primitives (:func:`primitives`): a family's tangent loop is linear in some operands (the drive and the
initial tangents) and takes the rest (coefficients, masks, ``W_h``) as fixed; its transpose rule is
the adjoint loop, and the adjoint's is the tangent loop, so ``jax.grad`` runs native loops both ways
while ``jax.jvp`` keeps working. ``vmap`` folds a mapped axis into the batch (mapped weights: one call
per element). Where a derivative would need the loops' own derivatives (second order through the
coefficients or the weights), the primitives differentiate the pure-JAX functions they replace (the
``reference`` parameter), so every order stays correct, only slower.
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
_UNITS = ("lstm_ffi.cc", "gru_ffi.cc")  # the translation units of the library
_FILES = _UNITS + ("cpu_common.h", "ffi_common.h", "lstm_cpu.h", "gru_cpu.h")
_TARGETS = {f"jlstm_{family}_{loop}": f"Jlstm{family.capitalize()}{loop.capitalize()}"
            for family in ("lstm", "gru") for loop in ("forward", "tangent", "adjoint")}
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno")
_lock = threading.Lock()
_state: dict[str, Any] = {}


def enabled() -> bool:
    """``JLSTM_NATIVE=0`` (or false/no/off) in the environment keeps the LSTM and GRU off the native kernels."""
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
    return cache_dir() / f"jlstm_native_{h.hexdigest()[:16]}.so"


def _build(cxx: str, include: str, target: pathlib.Path) -> None:
    """Compile into a temporary file next to ``target`` and rename it there (atomic: a concurrent
    process sees the old state or the whole library, never a partial one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        units = [str(_SOURCES / name) for name in _UNITS]
        cmd = [cxx, *_FLAGS, "-I", str(_SOURCES), "-isystem", include, *units, "-o", tmp]
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
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
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
                warnings.warn(f"jlstm: the native CPU kernels (LSTM, GRU) are unavailable, the pure-JAX path "
                              f"runs instead ({_state['error']})", RuntimeWarning, stacklevel=3)
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


def require() -> None:
    """Raise where the library cannot run (the callers check :func:`available` first)."""
    if library() is None:
        raise RuntimeError(f"jlstm: the native CPU kernels are unavailable: {why_unavailable()}")


def pred(a: jax.Array | None) -> jax.Array:
    """A mask or reset operand: bool ``[T, B]``, or empty where absent."""
    return jnp.zeros((0,), jnp.bool_) if a is None else a.astype(jnp.bool_)


def forward_call(family: str, T: int, B: int, H: int, *, states: int, kept: tuple[bool, ...], coefficients: int,
                 save: bool) -> Callable:
    """The FFI call of a family's forward loop. Its float32 results: ``states`` final states [B, H], the
    outputs ``ys`` [T, B, H], one stack of carried states [T, B, H] per entry of ``kept`` (empty where
    False), and ``coefficients`` arrays [T, B, H] (empty unless ``save``)."""
    f32 = jnp.float32
    seq, empty = jax.ShapeDtypeStruct((T, B, H), f32), jax.ShapeDtypeStruct((0,), f32)
    outs = ([jax.ShapeDtypeStruct((B, H), f32)] * states + [seq] + [seq if k else empty for k in kept]
            + [seq if save else empty] * coefficients)
    return jax.ffi.ffi_call(f"jlstm_{family}_forward", outs, vmap_method="sequential")


def inputs(xs: jax.Array, w_x: jax.Array, project_first: bool) -> tuple[jax.Array, jax.Array]:
    """A forward loop's input operands, float32: ``(xs, w_x)``, or with ``project_first``
    ``(xs @ w_x, empty)``: all steps' inputs projected by one XLA GEMM before the loop, so that a step
    reads only ``W_h`` (faster at small batches, where a step is bound by reading the weights)."""
    f32 = jnp.float32
    x, wx = xs.astype(f32), w_x.astype(f32)
    if project_first:
        return jnp.einsum("tbi,ig->tbg", x, wx, precision=jax.lax.Precision.HIGHEST), jnp.zeros((0,), f32)
    return x, wx


# --- the tangent loop and its transpose as primitives ----------------------------------------------------


class Loops(NamedTuple):
    """How one family's ``tangent`` and ``adjoint`` loops take their operands.

    ``linear[kind]``: the positions of the operands the loop is linear in; the others, in order, are the
    operands both loops share (coefficients, masks, ``W_h``). The adjoint's results are the cotangents of
    the tangent's linear operands, in order, and the tangent's results, taken in the order ``perm``, are
    the adjoint's linear operands. ``kinds[kind]`` and ``out_kinds[kind]`` name each operand's and
    result's layout for ``vmap`` and shapes: ``"drive"`` [T, B, gates·H], ``"seq"`` [T, B, H], ``"mask"``
    [T, B] or (0,), ``"state"`` [B, H], ``"w"`` [H, gates·H].
    """

    family: str
    gates: int
    linear: dict
    kinds: dict
    out_kinds: dict
    perm: tuple


def _out_shapes(spec: Loops, kind: str, first_shape: tuple) -> list[tuple]:
    T, B, width = first_shape
    H = width // spec.gates if spec.kinds[kind][0] == "drive" else width
    shapes = {"drive": (T, B, spec.gates * H), "seq": (T, B, H), "state": (B, H)}
    return [shapes[k] for k in spec.out_kinds[kind]]


def _abstract(spec: Loops, kind: str, first, *rest, reference):
    from jax.core import ShapedArray

    return [ShapedArray(s, jnp.float32) for s in _out_shapes(spec, kind, first.shape)]


def _call(spec: Loops, kind: str, *args, reference):
    outs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in _out_shapes(spec, kind, args[0].shape)]
    return jax.ffi.ffi_call(f"jlstm_{spec.family}_{kind}", outs, vmap_method="sequential")(*args)


def _is_zero(t) -> bool:
    from jax.interpreters import ad

    return t is None or type(t) is ad.Zero


def _jvp(spec: Loops, kind: str, primals, tangents, *, reference):
    """Linear in the ``linear`` operands: the JVP is the primitive on their tangents while the other
    operands (coefficients, masks, weights) carry none; else the JVP of the pure-JAX loop it replaces."""
    from jax.interpreters import ad

    prim = _state["prims"][spec.family][kind]
    out = prim.bind(*primals, reference=reference)
    linear = spec.linear[kind]
    if all(_is_zero(t) for k, t in enumerate(tangents) if k not in linear):
        args = [ad.instantiate_zeros(t) if k in linear else p for k, (p, t) in enumerate(zip(primals, tangents))]
        return out, prim.bind(*args, reference=reference)
    tans = tuple(np.zeros(p.shape, jax.dtypes.float0) if p.dtype == jnp.bool_
                 else (jnp.zeros_like(p) if _is_zero(t) else t) for p, t in zip(primals, tangents))
    _, t_out = jax.jvp(reference[0 if kind == "tangent" else 1], tuple(primals), tans)
    return out, list(t_out)


def _assemble(spec: Loops, kind: str, linear_values, fixed) -> list:
    """The operands of loop ``kind``: ``linear_values`` at its linear positions, ``fixed`` elsewhere in order."""
    positions = spec.linear[kind]
    values, rest = iter(linear_values), iter(fixed)
    return [next(values) if k in positions else next(rest) for k in range(len(spec.kinds[kind]))]


def _transpose(spec: Loops, kind: str, cts, *args, reference):
    """The tangent loop's transpose is the adjoint loop, and the adjoint's is the tangent loop."""
    from jax.interpreters import ad

    linear = spec.linear[kind]
    if any(ad.is_undefined_primal(a) for k, a in enumerate(args) if k not in linear):
        raise NotImplementedError(f"jlstm native {spec.family}: the {kind} loop is linear only in {linear}")
    first = args[0].aval if ad.is_undefined_primal(args[0]) else jax.typeof(args[0])
    shapes = _out_shapes(spec, kind, first.shape)
    cts = [jnp.zeros(s, jnp.float32) if _is_zero(c) else c for c, s in zip(cts, shapes)]
    fixed = [a for k, a in enumerate(args) if k not in linear]
    other = "adjoint" if kind == "tangent" else "tangent"
    if kind == "tangent":  # the cotangents of (results...) are the adjoint's linear operands, taken by perm
        res = _state["prims"][spec.family][other].bind(
            *_assemble(spec, other, [cts[p] for p in spec.perm], fixed), reference=reference)
        grads = dict(zip(linear, res))
    else:  # the adjoint's result cotangents are the tangent's linear operands, in order
        res = _state["prims"][spec.family][other].bind(*_assemble(spec, other, cts, fixed), reference=reference)
        grads = {pos: res[p] for pos, p in zip(linear, spec.perm)}
    return [grads[k] if k in grads and ad.is_undefined_primal(args[k]) else None for k in range(len(args))]


def _batch(spec: Loops, kind: str, args, dims, *, reference):
    """vmap: fold the mapped axis into the batch where the weights are shared, else map over it."""
    prim = _state["prims"][spec.family][kind]
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    kinds = spec.kinds[kind]
    if dims[kinds.index("w")] is not None:
        moved = [jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (size,) + a.shape)
                 for a, d in zip(args, dims)]
        outs = jax.lax.map(lambda xs: prim.bind(*xs, reference=reference), moved)
        return list(outs), [0] * len(outs)
    unbatched = [a.shape if d is None else a.shape[:d] + a.shape[d + 1:] for a, d in zip(args, dims)]
    B = next(sh[0 if k == "state" else 1] for sh, k in zip(unbatched, kinds) if k in ("drive", "seq", "state"))
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
    out_kinds = spec.out_kinds[kind]
    result = [o.reshape((size, B) + o.shape[1:]) if k == "state"
              else o.reshape((o.shape[0], size, B) + o.shape[2:]) for o, k in zip(outs, out_kinds)]
    return result, [0 if k == "state" else 1 for k in out_kinds]


def primitives(spec: Loops) -> dict[str, Any]:
    """The family's ``tangent`` and ``adjoint`` primitives, created and registered once. Deferred so that
    importing jlstm does not touch JAX's internals; the rules use ``jax.interpreters`` (ad, batching, mlir)."""
    with _lock:
        registry = _state.setdefault("prims", {})
        if spec.family in registry:
            return registry[spec.family]
        from jax.extend.core import Primitive
        from jax.interpreters import ad, batching, mlir

        prims = {}
        for kind in ("tangent", "adjoint"):
            prim = Primitive(f"jlstm_{spec.family}_{kind}")
            prim.multiple_results = True
            call = functools.partial(_call, spec, kind)
            prim.def_impl(call)
            prim.def_abstract_eval(functools.partial(_abstract, spec, kind))
            mlir.register_lowering(prim, mlir.lower_fun(call, multiple_results=True), platform="cpu")
            ad.primitive_jvps[prim] = functools.partial(_jvp, spec, kind)
            ad.primitive_transposes[prim] = functools.partial(_transpose, spec, kind)
            batching.primitive_batchers[prim] = functools.partial(_batch, spec, kind)
            prims[kind] = prim
        registry[spec.family] = prims
        return prims


def tangent(spec: Loops, args, reference: tuple[Callable, Callable]) -> tuple:
    """Bind the family's tangent primitive on ``args`` (its operands, float32 and bool)."""
    require()
    return tuple(primitives(spec)["tangent"].bind(*args, reference=reference))
