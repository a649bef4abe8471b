"""Weight initialisers for the gated cells.

Each initialiser follows ``jax.nn.initializers``: ``init(key, shape, dtype) -> array``, a pure,
deterministic function of the key. Gate blocks are initialised one at a time, so an orthogonal
recurrent matrix is orthogonal within each gate (as in Keras and Flax), not only across the whole
``(H, k*H)`` block.

Initialisation must be cheap: every notebook, test and script builds cells of many shapes, and
``jax.nn.initializers.orthogonal`` compiles a QR program per shape (about a second of CPU each).
So the random numbers come from one compiled program that draws fixed-size blocks of
``_BLOCK`` values (block ``i`` from ``fold_in(key, i)``), and whatever depends on the shape
(the QR, the scaling) runs in NumPy in float64. With a concrete key nothing is compiled per
shape. Under ``jit`` or ``vmap`` the key is a tracer: the draws are traced the same way and the
NumPy part runs through ``jax.pure_callback``, so a jitted or vmapped init returns the same bits
as an eager one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

Initializer = Callable[[jax.Array, tuple, jnp.dtype], jax.Array]

_BLOCK = 4096  # values per compiled draw; one program serves every shape


@functools.partial(jax.jit, static_argnums=2)
def _block(key: jax.Array, index: jax.Array, kind: str) -> jax.Array:
    sub = jax.random.fold_in(key, index)
    if kind == "normal":
        return jax.random.normal(sub, (_BLOCK,), jnp.float32)
    return jax.random.uniform(sub, (_BLOCK,), jnp.float32, -1.0, 1.0)


def _is_traced(x) -> bool:
    return isinstance(x, Tracer)


def _draw(key: jax.Array, size: int, kind: str):
    """``size`` float32 draws from N(0, 1) (``kind="normal"``) or U(-1, 1) (``"uniform"``).

    A NumPy array for a concrete key, a traced array otherwise; the values are the same.
    """
    blocks = [_block(key, np.uint32(i), kind) for i in range(max(1, -(-size // _BLOCK)))]
    if _is_traced(key):
        return jnp.concatenate(blocks)[:size]
    return np.concatenate([np.asarray(b) for b in blocks])[:size]


def _finish(host_fn: Callable[[np.ndarray], np.ndarray], draws, shape: tuple, dtype) -> jax.Array:
    """Apply the NumPy function ``host_fn`` to the draws: directly, or through a callback when traced."""
    dtype = jax.dtypes.canonicalize_dtype(dtype)
    if _is_traced(draws):
        return jax.pure_callback(host_fn, jax.ShapeDtypeStruct(tuple(shape), dtype), draws,
                                 vmap_method="sequential")
    return jax.device_put(host_fn(draws))  # a transfer; jnp.asarray would compile a program per shape


def _shape(name: str, shape) -> tuple[int, ...]:
    try:
        if isinstance(shape, (str, bytes)):
            raise TypeError  # iterable, but not a shape
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: shape must be a tuple of ints, got {shape!r}; call it as "
                        f"{name}(key, (rows, cols), dtype).") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"{name}: shape must have non-negative sizes, got {dims}.")
    return dims


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Fan-in and fan-out as ``jax.nn.initializers`` counts them (input axis -2, output axis -1)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_uniform(key: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
    """U(-limit, limit) with ``limit = sqrt(6 / (fan_in + fan_out))`` (Glorot & Bengio, 2010)."""
    shape = _shape("glorot_uniform", shape)
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(6.0 / max(1, fan_in + fan_out))
    out = np.dtype(jax.dtypes.canonicalize_dtype(dtype))

    def host(u: np.ndarray) -> np.ndarray:
        return (np.asarray(u, np.float64) * limit).reshape(shape).astype(out)

    return _finish(host, _draw(key, math.prod(shape), "uniform"), shape, dtype)


def _orthonormalise(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Orthonormal columns (or rows, when ``rows < cols``) from a Gaussian matrix, in float64.

    The QR factor's columns are multiplied by the signs of ``diag(R)``; this makes the result a
    Haar-distributed orthogonal matrix and a unique function of ``a``.
    """
    tall = rows >= cols
    a = np.asarray(a, np.float64).reshape((rows, cols) if tall else (cols, rows))
    q, r = np.linalg.qr(a)
    d = np.sign(np.diagonal(r))
    q = q * np.where(d == 0, 1.0, d)
    return q if tall else q.T


def orthogonal(key: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
    """A matrix with orthonormal columns (or rows, if it is wide), from the QR of a Gaussian matrix.

    Leading axes are flattened into the rows, as in ``jax.nn.initializers.orthogonal``.
    """
    shape = _shape("orthogonal", shape)
    if len(shape) < 2:
        raise ValueError(f"orthogonal: needs a shape with at least 2 axes (rows, cols), got {shape}; "
                         f"use glorot_uniform or zeros for vectors.")
    cols = shape[-1]
    rows = math.prod(shape) // cols if cols else math.prod(shape[:-1])
    out = np.dtype(jax.dtypes.canonicalize_dtype(dtype))

    def host(a: np.ndarray) -> np.ndarray:
        return _orthonormalise(a, rows, cols).reshape(shape).astype(out)

    return _finish(host, _draw(key, rows * cols, "normal"), shape, dtype)


def zeros(key: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
    """All zeros (the key is ignored)."""
    shape = _shape("zeros", shape)
    if _is_traced(key):
        return jnp.zeros(shape, dtype)
    return jax.device_put(np.zeros(shape, np.dtype(jax.dtypes.canonicalize_dtype(dtype))))


def per_gate(init: Initializer, key: jax.Array, rows: int, units: int, gates: int, dtype) -> jax.Array:
    """Initialise a ``(rows, gates*units)`` matrix one ``(rows, units)`` block at a time."""
    keys = jax.random.split(key, gates)
    low = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    build = jnp.float32 if low else dtype  # some initialisers (orthogonal) have no bf16 kernel
    blocks = [init(k, (rows, units), build) for k in keys]
    if any(_is_traced(b) for b in blocks):
        return jnp.concatenate(blocks, axis=-1).astype(dtype)
    out = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
    return jax.device_put(np.concatenate([np.asarray(b) for b in blocks], axis=-1).astype(out))


def uniform(scale: float) -> Initializer:
    """U(-scale, scale), PyTorch's default for recurrent layers with scale = 1/sqrt(H)."""
    return _ScaledDraws("uniform", "uniform", float(scale))


def normal(stddev: float) -> Initializer:
    """N(0, stddev²), drawn like the other initialisers (no compile per shape)."""
    return _ScaledDraws("normal", "normal", float(stddev))


@dataclasses.dataclass(frozen=True)
class _ScaledDraws:
    """An initialiser of ``scale`` times standard draws of ``kind`` (see :func:`_draw`).

    A value, not a closure: equal and hashing alike when rebuilt, so a cell whose config holds one
    (ParaGRU's default ``recurrent_init``) equals the same cell built again and shares its programs.
    """

    name: str
    kind: str
    scale: float

    def __call__(self, key: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
        shape = _shape(self.name, shape)
        out = np.dtype(jax.dtypes.canonicalize_dtype(dtype))

        def host(u: np.ndarray) -> np.ndarray:
            return (np.asarray(u, np.float64) * self.scale).reshape(shape).astype(out)

        return _finish(host, _draw(key, math.prod(shape), self.kind), shape, dtype)


def add_to_slice(x: jax.Array, start: int, stop: int, value: float | np.ndarray) -> jax.Array:
    """``x.at[..., start:stop].add(value)`` (e.g. a forget-gate bias; a number or an array of the slice's
    shape) without a compile per shape when concrete."""
    if _is_traced(x):
        return x.at[..., start:stop].add(jnp.asarray(value, x.dtype))
    out = np.array(x)
    out[..., start:stop] += np.asarray(value, out.dtype)
    return jax.device_put(out)
