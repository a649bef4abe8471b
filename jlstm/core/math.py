"""Small numeric helpers shared by the cells: mixed-precision matmul and dtype rules."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def canonical_dtype(dtype: Any, name: str) -> jnp.dtype | None:
    """Turn a user dtype option into a numpy dtype, rejecting non-float types."""
    if dtype is None:
        return None
    try:
        d = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{name}={dtype!r} is not a dtype; pass e.g. {name}=jnp.float32.") from e
    if not jnp.issubdtype(d, jnp.floating):
        raise TypeError(
            f"{name} must be a floating point dtype, got {d}; pass jnp.float32 or jnp.bfloat16."
        )
    return d


def matmul(a: jax.Array, w: jax.Array, dtype: jnp.dtype | None) -> jax.Array:
    """``a @ w`` computed in ``dtype``; low-precision products accumulate in float32."""
    if dtype is None:
        return jnp.matmul(a, w)
    if dtype in _LOW_PRECISION:
        return jnp.matmul(a.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)
    return jnp.matmul(a.astype(dtype), w.astype(dtype))


def matmul_t(a: jax.Array, w_t: jax.Array, dtype: jnp.dtype | None) -> jax.Array:
    """``a @ w_tᵀ`` for a 2-D ``a``, with :func:`matmul`'s dtype rule, as one product contracting both
    operands' last axes: a ``w_t`` laid out before a loop stays the operand XLA reads."""
    dims = (((1,), (1,)), ((), ()))
    if dtype is None:
        dt = jnp.result_type(a, w_t)
        return jax.lax.dot_general(a.astype(dt), w_t.astype(dt), dims)
    low = jnp.dtype(dtype) in _LOW_PRECISION
    return jax.lax.dot_general(a.astype(dtype), w_t.astype(dtype), dims,
                               preferred_element_type=jnp.float32 if low else None)


def carry_dtype(param_dtype: jnp.dtype, dtype: jnp.dtype | None) -> jnp.dtype:
    """The dtype of the recurrent state: the params' dtype, and never below float32.

    With bf16/f16 matmuls (or params) the state stays in float32, so the cell state
    accumulates without rounding; float64 params give a float64 state.
    """
    wide = jnp.promote_types(param_dtype, jnp.float32)
    if dtype is None or jnp.dtype(dtype) in _LOW_PRECISION:
        return jnp.dtype(wide)
    return jnp.dtype(jnp.promote_types(wide, dtype))


def output(y: jax.Array, dtype: jnp.dtype | None) -> jax.Array:
    return y if dtype is None else y.astype(dtype)


def affine(x: jax.Array, w: jax.Array, b: jax.Array, dtype: jnp.dtype | None) -> jax.Array:
    """``x @ w + b`` in the compute dtype (the input projection of most cells)."""
    return matmul(x, w, dtype) + b.astype(dtype or b.dtype)


def masked(h: jax.Array, recurrent_mask: jax.Array | None) -> jax.Array:
    """``h`` times the variational recurrent-dropout mask, when there is one."""
    return h if recurrent_mask is None else h * recurrent_mask


def zeros_state(batch_shape: Any, size: int, w_h: jax.Array, dtype: jnp.dtype | None) -> jax.Array:
    """A zero state of ``size`` units for ``batch_shape`` (an int or a tuple), in the carry dtype."""
    from jlstm.core.types import batch_tuple

    return jnp.zeros(batch_tuple(batch_shape) + (size,), carry_dtype(w_h.dtype, dtype))


def cell_sizes(hidden_size: Any, dtype: Any, param_dtype: Any) -> tuple[int, jnp.dtype | None, jnp.dtype]:
    """Validate a cell factory's ``hidden_size``, ``dtype`` and ``param_dtype``."""
    from jlstm.core.checks import check_size

    check_size("hidden_size", hidden_size)
    params = canonical_dtype(param_dtype, "param_dtype")
    if params is None:
        raise TypeError("param_dtype=None: the parameters need a dtype; pass e.g. param_dtype=jnp.float32.")
    return int(hidden_size), canonical_dtype(dtype, "dtype"), params
