"""Trace-time argument checks shared by the cells, the scan and the layers.

Every check raises a ``ValueError`` or ``TypeError`` whose message names what
was expected, what came, and how to fix the call.
"""

from __future__ import annotations

from typing import Any, Iterable

import jax.numpy as jnp
import numpy as np


def check_size(name: str, value: Any, *, allow_none: bool = False, minimum: int = 1) -> None:
    """Check that ``value`` is an int >= ``minimum`` (a layer or feature size)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{name} must be a Python int, got {value!r} of type {type(value).__name__}; "
            f"pass a whole number such as {name}=32."
        )
    if value < minimum:
        raise ValueError(
            f"{name} must be >= {minimum}, got {value}; pass a positive size such as {name}=32."
        )


def check_option(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Check that ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"unknown {name}={value!r}; expected one of {', '.join(repr(a) for a in allowed)}."
        )


def check_rate(name: str, value: Any) -> None:
    """Check that a dropout-like rate lies in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float in [0, 1), got {value!r}.")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}; for example {name}=0.1.")


def check_keywords(where: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Reject a keyword that a function taking ``**options`` does not know, as Python would."""
    allowed = tuple(allowed)
    for name in given:
        if name not in allowed:
            raise TypeError(f"{where}() got an unexpected keyword argument {name!r}; it takes "
                            f"{', '.join(allowed)}.")


def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", np.shape(x)))


def check_array(name: str, x: Any, where: str) -> None:
    """Check that ``x`` is an array of floating point numbers."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(
            f"{where}: {name} must be an array, got {type(x).__name__}; "
            f"wrap it with jnp.asarray(...)."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{where}: {name} must hold floating point numbers, got dtype {x.dtype}; "
            f"convert it with {name}.astype(jnp.float32)."
        )


def check_features(x: Any, expected: int, where: str, name: str = "x") -> None:
    """Check an input's last axis against the size the params were built for."""
    check_array(name, x, where)
    if len(shape_of(x)) < 1:
        raise ValueError(
            f"{where}: {name} must have a feature axis, shape [*batch, {expected}], "
            f"got a scalar; reshape it to (..., {expected})."
        )
    if x.shape[-1] != expected:
        raise ValueError(
            f"{where}: {name} has {x.shape[-1]} features in its last axis (shape {x.shape}), "
            f"but the params were initialised for input_size={expected}; pass inputs of shape "
            f"[..., {expected}] or re-initialise with cell.init(key, {x.shape[-1]})."
        )


def check_type(name: str, value: Any, expected: type, where: str, hint: str) -> None:
    if not isinstance(value, expected):
        raise TypeError(
            f"{where}: {name} must be a {expected.__name__}, got {type(value).__name__}; {hint}"
        )


def check_param_shapes(params: Any, expected: dict[str, tuple[int, ...] | None], where: str) -> None:
    """Check each named field of a params NamedTuple against its expected shape."""
    for field, want in expected.items():
        got = getattr(params, field)
        if want is None:
            if got is not None:
                raise ValueError(
                    f"{where}: params.{field} should be None for this cell's configuration, "
                    f"got an array of shape {shape_of(got)}; these params belong to a cell with "
                    f"other options."
                )
            continue
        if got is None:
            raise ValueError(
                f"{where}: params.{field} is None but this cell expects shape {want}; "
                f"these params belong to a cell with other options: build them with this "
                f"cell's init."
            )
        if shape_of(got) != tuple(want):
            raise ValueError(
                f"{where}: params.{field} has shape {shape_of(got)}, expected {tuple(want)}; "
                f"these params belong to another cell size: build them with this cell's init."
            )
        _check_floating(got, f"params.{field}", where,
                        "build the params with this cell's init or cast them to jnp.float32")


def _check_floating(value: Any, label: str, where: str, hint: str) -> None:
    if hasattr(value, "dtype") and not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{where}: {label} has dtype {value.dtype}, expected a floating point dtype; {hint}.")


def check_state_shapes(state: Any, expected: dict[str, int], where: str) -> tuple[int, ...]:
    """Check the fields of a state NamedTuple: trailing sizes and a common batch shape."""
    batch: tuple[int, ...] | None = None
    for field, size in expected.items():
        value = getattr(state, field)
        shp = shape_of(value)
        if len(shp) < 1 or shp[-1] != size:
            raise ValueError(
                f"{where}: state.{field} has shape {shp}, expected [..., {size}]; "
                f"this state belongs to another cell size: build it with cell.initial_state."
            )
        _check_floating(value, f"state.{field}", where,
                        "build the state with cell.initial_state(params, batch_shape)")
        if batch is None:
            batch = shp[:-1]
        elif shp[:-1] != batch:
            raise ValueError(
                f"{where}: state.{field} has batch shape {shp[:-1]}, expected {batch} "
                f"(the batch shape of the inputs); build the state with "
                f"cell.initial_state(params, batch_shape={batch})."
            )
    return batch if batch is not None else ()


def check_batch(x: Any, h: Any, where: str) -> None:
    """Check that an input and a state agree on their batch shape."""
    if shape_of(h)[:-1] != shape_of(x)[:-1]:
        raise ValueError(
            f"{where}: x has batch shape {shape_of(x)[:-1]} but the state has batch shape "
            f"{shape_of(h)[:-1]}; build the state with "
            f"initial_state(params, batch_shape={shape_of(x)[:-1]}).")


def check_cell_args(
    where: str,
    params: Any,
    params_type: type,
    param_shapes: Any,
    state: Any = None,
    state_type: type | None = None,
    state_sizes: dict[str, int] | None = None,
    x: Any = None,
) -> None:
    """The checks every cell runs: params type and shapes, then the state, then the input.

    ``param_shapes(input_size)`` gives the expected shape of each params field, the input
    size being read from ``params.w_x``.
    """
    check_type("params", params, params_type, where,
               "build the params with this cell's init(key, input_size).")
    input_size = shape_of(params.w_x)[0]
    check_param_shapes(params, param_shapes(input_size), where)
    if state is not None:
        if state_type is None or state_sizes is None:
            raise TypeError(f"{where}: checking a state needs state_type and state_sizes (a bug in the cell).")
        check_type("state", state, state_type, where,
                   "build the state with this cell's initial_state(params, batch_shape).")
        check_state_shapes(state, state_sizes, where)
    if x is not None:
        check_features(x, input_size, where)
        if state is not None:
            check_batch(x, state.h, where)
