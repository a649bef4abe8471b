"""What the xLSTM layers and blocks share: argument checks, dropout, the time layout, valid steps, the
scan call and the head-wise projection (private).

The library's private helpers are imported here and nowhere else in :mod:`jlstm.xlstm`, so a move of
those modules touches this file alone.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

import jlstm
from jlstm.core.checks import check_array, check_option, check_rate, check_size  # noqa: F401 (re-exported)
from jlstm.core.time import valid_steps
from jlstm.layers.dropout import check_key, dropout  # noqa: F401 (re-exported)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "relu^2": lambda x: jnp.square(jax.nn.relu(x)),
    "sigmoid": jax.nn.sigmoid,
    "swish": jax.nn.silu,
    "selu": jax.nn.selu,
}
"""The feed-forward activations of the ``xlstm`` package, by its names (``gelu`` is the exact, erf form)."""


class Inputs(NamedTuple):
    """A layer's inputs, time-major: ``xs [T, *batch, E]``, ``mask``/``resets`` ``[T, *batch]`` or
    ``None``, ``valid`` (lengths and mask together) or ``None`` when every step counts."""

    xs: jax.Array
    mask: Any
    resets: Any
    valid: jax.Array | None


def time_major_inputs(xs: Any, size: int, lengths: Any, mask: Any, resets: Any, key: Any, time_major: bool,
                      where: str) -> Inputs:
    """Check a layer's arguments and bring them to time-major; inputs at invalid steps become 0.

    Zeroing the padding keeps NaN there out of every value and gradient.
    """
    check_key(key, where)
    check_array("xs", xs, where)
    if xs.ndim < 2 or xs.shape[-1] != size:
        raise ValueError(f"{where}: xs must have shape [T, *batch, {size}] (time-major; [*batch, T, {size}] with "
                         f"time_major=False), got {tuple(xs.shape)}; the layer was built for {size} features.")
    if not time_major:
        xs = jnp.moveaxis(xs, -2, 0)
        mask, resets = (None if a is None else jnp.moveaxis(jnp.asarray(a), -1, 0) for a in (mask, resets))
    if resets is not None:
        resets = jnp.asarray(resets)
        if resets.dtype != jnp.bool_ or resets.shape != xs.shape[:-1]:
            raise ValueError(f"{where}: resets must be a bool array of shape {tuple(xs.shape[:-1])} ([T, *batch], "
                             f"True where the state is zeroed before that step), got {resets.dtype} "
                             f"{tuple(resets.shape)}.")
    valid, _ = valid_steps(xs.shape[0], tuple(xs.shape[1:-1]), lengths, mask, where)
    if valid is not None:
        xs = jnp.where(valid[..., None], xs, jnp.zeros((), xs.dtype))
    return Inputs(xs, mask, resets, valid)


def finish(ys: jax.Array, valid: jax.Array | None, time_major: bool) -> jax.Array:
    """Zero the outputs at invalid steps and restore the caller's layout."""
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros((), ys.dtype))
    return ys if time_major else jnp.moveaxis(ys, 0, -2)


def scan(cell: jlstm.Cell, params: Any, xs: jax.Array, state: Any, *, lengths: Any, mask: Any, resets: Any,
         method: Any, remat: Any, unroll: Any, where: str) -> tuple[Any, jax.Array]:
    """:func:`jlstm.scan`, time-major."""
    del where
    return jlstm.scan(cell, params, xs, state, lengths=lengths, mask=mask, resets=resets, method=method,
                      remat=remat, unroll=unroll)


def headwise(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x [..., heads·n]`` times the block-diagonal ``w [heads, n, m]``: ``[..., heads·m]``."""
    heads, n, m = w.shape
    out = jnp.einsum("...hn,hnm->...hm", x.reshape(x.shape[:-1] + (heads, n)), w)
    return out.reshape(x.shape[:-1] + (heads * m,))


def up_size(embedding_dim: int, proj_factor: float, round_to: int, inner_size: int | None, where: str) -> int:
    """The width of an up-projection: ``inner_size`` when given, else ``proj_factor · E`` rounded up
    to a multiple of ``round_to`` (the ``xlstm`` package's rule)."""
    if inner_size is not None:
        check_size("inner_size", inner_size)
        return int(inner_size)
    if isinstance(proj_factor, bool) or not isinstance(proj_factor, (int, float)) or proj_factor <= 0:
        raise ValueError(f"{where}: proj_factor must be a float > 0, got {proj_factor!r}; e.g. proj_factor=2.0.")
    check_size("round_to", round_to)
    return int(math.ceil(proj_factor * embedding_dim / round_to) * round_to)


def check_remat(remat: Any, where: str) -> None:
    """``remat``: ``None``, ``"block"`` (recompute the whole layer in the backward pass) or a policy of
    :func:`jlstm.scan` (``"step"``, ``"segment"``, an int)."""
    if remat is None or remat in ("block", "step", "segment"):
        return
    if isinstance(remat, bool) or not isinstance(remat, int) or remat < 1:
        raise ValueError(f"{where}: remat must be None, 'block', 'step', 'segment' or a segment length >= 1, "
                         f"got {remat!r}.")


def check_input_size(where: str, input_size: int, embedding_dim: int) -> None:
    """A layer's ``init``: its input must be as wide as its output, which joins a residual."""
    check_size("input_size", input_size)
    if input_size != embedding_dim:
        raise ValueError(f"{where}.init: input_size={input_size}, but the layer reads and writes "
                         f"embedding_dim={embedding_dim} features (its output joins a residual); "
                         f"pass input_size={embedding_dim} or build the layer for {input_size}.")
