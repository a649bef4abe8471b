"""Flax linen ``LSTMCell`` / ``OptimizedLSTMCell`` / ``GRUCell`` params <-> jlstm cells.

Flax linen keeps one Dense per gate; the names (read from ``flax/linen/recurrent.py``) are:

* LSTM (both cells): ``i{i,f,g,o}`` with a ``kernel`` (in, H) and no bias, ``h{i,f,g,o}`` with a
  ``kernel`` (H, H) and a ``bias`` (H). Gate order i, f, g, o as in jlstm, so
  ``w_x = concat(ii, if, ig, io)``, ``w_h = concat(hi, hf, hg, ho)``, ``b = concat(h*.bias)``.
* GRU: ``i{r,z,n}`` with ``kernel`` and ``bias``; ``h{r,z}`` with a ``kernel`` only, ``hn`` with
  ``kernel`` and ``bias`` (the bias inside the reset product, PyTorch's ``b_hn``). So
  ``b_x = concat(ir.bias, iz.bias, in.bias)`` and ``b_h = [0, 0, hn.bias]``. Going back,
  the r and z blocks of ``b_h`` are added to the input biases (they are summed anyway).

The LSTM carry of Flax is ``(c, h)``; jlstm's :class:`jlstm.LSTMState` is ``(h, c)`` with named
fields: use :func:`from_flax_carry` / :func:`to_flax_carry`. Flax is not imported here: the
functions read and write plain dicts.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from jlstm.cells.gru import GRUParams, GRUState, gru
from jlstm.cells.lstm import LSTMParams, LSTMState, lstm
from jlstm.core.types import Cell
from jlstm.interop._common import other_form, param_dtype, plain_lstm_arrays, to_numpy

_LSTM_GATES = ("i", "f", "g", "o")
_GRU_GATES = ("r", "z", "n")


def _unwrap(variables: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(variables, Mapping):
        raise TypeError(f"{where}: expected the variables of a Flax linen cell ({{'params': {{...}}}}) or "
                        f"their 'params' entry, got {type(variables).__name__}.")
    tree = variables
    if "params" in tree:  # the variables of cell.init; other collections are ignored
        tree = tree["params"]
    if isinstance(tree, Mapping) and set(tree) == {"cell"}:  # nn.RNN(cell)
        tree = tree["cell"]
    if not isinstance(tree, Mapping):
        raise TypeError(f"{where}: the params must be a dict of per-gate Dense params, got {type(tree).__name__}.")
    return tree


def _read(tree: Mapping[str, Any], spec: dict[str, tuple[str, ...]], cell: str, where: str) -> dict:
    if set(tree) != set(spec):
        missing = sorted(set(spec) - set(tree))
        extra = sorted(set(tree) - set(spec))
        raise ValueError(f"{where}: these are not the params of a flax.linen.{cell}: "
                         + (f"missing {missing}" if missing else "")
                         + ("; " if missing and extra else "")
                         + (f"unexpected {extra}" if extra else "")
                         + f". Expected the sub-dicts {sorted(spec)}.")
    out = {}
    for name, fields in spec.items():
        sub = tree[name]
        if not isinstance(sub, Mapping) or set(sub) != set(fields):
            got = sorted(sub) if isinstance(sub, Mapping) else type(sub).__name__
            raise ValueError(f"{where}: params[{name!r}] must hold {list(fields)}, got {got} "
                             f"(flax.linen.{cell} layout).")
        for f in fields:
            out[(name, f)] = to_numpy(sub[f], f"params[{name!r}][{f!r}]", where)
    return out


def _check_gates(arrs: dict, gates: tuple[str, ...], where: str, cell: str) -> tuple[int, int]:
    H = arrs[("h" + gates[0], "kernel")].shape[-1]
    I = arrs[("i" + gates[0], "kernel")].shape[0]
    for (name, f), a in arrs.items():
        want = {"kernel": (I if name[0] == "i" else H, H), "bias": (H,)}[f]
        if tuple(a.shape) != want:
            raise ValueError(f"{where}: params[{name!r}][{f!r}] has shape {tuple(a.shape)}, expected {want} "
                             f"(input size {I}, hidden size {H} of flax.linen.{cell}).")
    return I, H


def from_flax_lstm(variables: Any) -> tuple[Cell, LSTMParams]:
    """Convert the params of a Flax linen ``LSTMCell`` or ``OptimizedLSTMCell`` to a jlstm cell.

    Both cells have the same parameter tree: ``ii, if, ig, io`` kernels (in, H) and
    ``hi, hf, hg, ho`` kernels (H, H) with biases (H)::

        w_x = [ii | if | ig | io]   w_h = [hi | hf | hg | ho]   b = [hi.b | hf.b | hg.b | ho.b]

    Args:
      variables: ``cell.init(...)`` (``{"params": {...}}``), its ``"params"`` entry, or the
        variables of ``nn.RNN(cell)`` (one ``"cell"`` entry).

    Returns:
      ``(cell, params)``: ``jlstm.lstm(H)`` and its :class:`jlstm.LSTMParams`. Run a sequence
      with ``jlstm.scan(cell, params, xs)`` or ``jlstm.recurrent(cell)``; convert Flax's
      ``(c, h)`` carry with :func:`from_flax_carry`.

    Raises:
      TypeError: ``variables`` is not a dict.
      ValueError: missing or unexpected entries, or shapes that disagree.
    """
    where = "jlstm.interop.from_flax_lstm"
    spec = {**{"i" + g: ("kernel",) for g in _LSTM_GATES}, **{"h" + g: ("kernel", "bias") for g in _LSTM_GATES}}
    arrs = _read(_unwrap(variables, where), spec, "LSTMCell", where)
    _, H = _check_gates(arrs, _LSTM_GATES, where, "LSTMCell")
    dt = param_dtype(arrs[("ii", "kernel")])

    def cat(prefix: str, field: str) -> Any:
        return jnp.asarray(np.concatenate([arrs[(prefix + g, field)] for g in _LSTM_GATES], axis=-1), dt)

    params = LSTMParams(w_x=cat("i", "kernel"), w_h=cat("h", "kernel"), b=cat("h", "bias"))
    return lstm(H, param_dtype=dt), params


def to_flax_lstm(params: LSTMParams, *, rnn: bool = False) -> dict[str, Any]:
    """Convert jlstm :class:`LSTMParams` to the variables of a Flax linen ``(Optimized)LSTMCell``.

    The inverse of :func:`from_flax_lstm`; the bias goes to the ``h*`` Dense layers.

    Args:
      params: the params of ``jlstm.lstm(H)`` (no peepholes, no projection).
      rnn: nest the params under ``"cell"`` for ``nn.RNN(cell)``.

    Returns:
      ``{"params": {...}}`` of NumPy arrays, ready for ``cell.apply(variables, carry, x)``.
    """
    w_x, w_h, b = plain_lstm_arrays(params, "jlstm.interop.to_flax_lstm", "Flax's LSTM cells")
    H = b.shape[0] // 4
    tree: dict[str, Any] = {}
    for j, g in enumerate(_LSTM_GATES):
        s = slice(j * H, (j + 1) * H)
        tree["i" + g] = {"kernel": np.ascontiguousarray(w_x[:, s])}
        tree["h" + g] = {"kernel": np.ascontiguousarray(w_h[:, s]), "bias": np.ascontiguousarray(b[s])}
    return {"params": {"cell": tree} if rnn else tree}


def from_flax_gru(variables: Any) -> tuple[Cell, GRUParams]:
    """Convert the params of a Flax linen ``GRUCell`` to a jlstm GRU cell.

    Flax's GRU is PyTorch's (gates r, z, n; ``hn`` carries the bias inside the reset
    product)::

        w_x = [ir | iz | in]   w_h = [hr | hz | hn]   b_x = [ir.b | iz.b | in.b]   b_h = [0 | 0 | hn.b]

    Args:
      variables: ``cell.init(...)``, its ``"params"``, or the variables of ``nn.RNN(cell)``.

    Returns:
      ``(jlstm.gru(H), GRUParams)``. The Flax carry ``h`` is :class:`jlstm.GRUState` ``(h,)``.
    """
    where = "jlstm.interop.from_flax_gru"
    spec = {"ir": ("kernel", "bias"), "iz": ("kernel", "bias"), "in": ("kernel", "bias"),
            "hr": ("kernel",), "hz": ("kernel",), "hn": ("kernel", "bias")}
    arrs = _read(_unwrap(variables, where), spec, "GRUCell", where)
    _, H = _check_gates(arrs, _GRU_GATES, where, "GRUCell")
    dt = param_dtype(arrs[("ir", "kernel")])
    zeros = np.zeros((H,), arrs[("hn", "bias")].dtype)

    def cat(parts: list[np.ndarray]) -> Any:
        return jnp.asarray(np.concatenate(parts, axis=-1), dt)

    params = GRUParams(
        w_x=cat([arrs[("i" + g, "kernel")] for g in _GRU_GATES]),
        w_h=cat([arrs[("h" + g, "kernel")] for g in _GRU_GATES]),
        b_x=cat([arrs[("i" + g, "bias")] for g in _GRU_GATES]),
        b_h=cat([zeros, zeros, arrs[("hn", "bias")]]),
    )
    return gru(H, param_dtype=dt), params


def to_flax_gru(params: GRUParams, *, rnn: bool = False) -> dict[str, Any]:
    """Convert jlstm :class:`GRUParams` to the variables of a Flax linen ``GRUCell``.

    ``ir.bias = b_xr + b_hr`` and ``iz.bias = b_xz + b_hz`` (Flax has no separate recurrent
    biases for r and z; only their sum matters), ``in.bias = b_xn``, ``hn.bias = b_hn``.

    Args:
      params: the params of ``jlstm.gru(H)``.
      rnn: nest the params under ``"cell"`` for ``nn.RNN(cell)``.

    Returns:
      ``{"params": {...}}`` of NumPy arrays.
    """
    where = "jlstm.interop.to_flax_gru"
    if not isinstance(params, GRUParams):
        raise TypeError(f"{where}: params must be GRUParams (from jlstm.gru(H)), got "
                        f"{type(params).__name__}{other_form(params)}.")
    w_x, w_h, b_x, b_h = (to_numpy(getattr(params, n), n, where) for n in GRUParams._fields)
    H = w_h.shape[0]
    if w_h.shape != (H, 3 * H) or w_x.shape[-1] != 3 * H or b_x.shape != (3 * H,) or b_h.shape != (3 * H,):
        raise ValueError(f"{where}: inconsistent GRUParams shapes w_x {w_x.shape}, w_h {w_h.shape}, "
                         f"b_x {b_x.shape}, b_h {b_h.shape}; expected (in, 3H), (H, 3H), (3H,), (3H,).")
    blk = [slice(j * H, (j + 1) * H) for j in range(3)]
    tree = {
        "ir": {"kernel": w_x[:, blk[0]], "bias": b_x[blk[0]] + b_h[blk[0]]},
        "iz": {"kernel": w_x[:, blk[1]], "bias": b_x[blk[1]] + b_h[blk[1]]},
        "in": {"kernel": w_x[:, blk[2]], "bias": b_x[blk[2]]},
        "hr": {"kernel": w_h[:, blk[0]]},
        "hz": {"kernel": w_h[:, blk[1]]},
        "hn": {"kernel": w_h[:, blk[2]], "bias": b_h[blk[2]]},
    }
    tree = {k: {f: np.ascontiguousarray(v) for f, v in d.items()} for k, d in tree.items()}
    return {"params": {"cell": tree} if rnn else tree}


def from_flax_carry(carry: Any) -> LSTMState | GRUState:
    """Flax's LSTM carry ``(c, h)`` -> :class:`jlstm.LSTMState` ``(h, c)``; a GRU carry ``h`` -> ``GRUState``."""
    if isinstance(carry, (tuple, list)):
        if len(carry) != 2:
            raise ValueError(f"jlstm.interop.from_flax_carry: an LSTM carry is (c, h), got {len(carry)} entries.")
        c, h = carry
        return LSTMState(h=jnp.asarray(h), c=jnp.asarray(c))
    if not hasattr(carry, "shape"):
        raise TypeError(f"jlstm.interop.from_flax_carry: expected (c, h) or an array h, got "
                        f"{type(carry).__name__}.")
    return GRUState(h=jnp.asarray(carry))


def to_flax_carry(state: LSTMState | GRUState) -> Any:
    """:class:`jlstm.LSTMState` ``(h, c)`` -> Flax's carry ``(c, h)``; ``GRUState(h)`` -> ``h``."""
    if isinstance(state, LSTMState):
        return (state.c, state.h)
    if isinstance(state, GRUState):
        return state.h
    raise TypeError(f"jlstm.interop.to_flax_carry: expected LSTMState or GRUState, got {type(state).__name__}.")
