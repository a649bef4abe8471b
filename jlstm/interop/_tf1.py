"""TensorFlow 1 ``LSTMCell`` checkpoints <-> jlstm LSTM cells, with peepholes, clipping and projection.

TF1's ``tf.compat.v1.nn.rnn_cell.LSTMCell`` (read from ``tensorflow/python/ops/rnn_cell_impl.py``;
``BasicLSTMCell`` and ``tf.contrib.rnn.LSTMBlockCell`` store the same variables) computes, with
``m`` its output and ``[i | j | f | o] = concat[x, m_{t-1}] kernel + bias``::

    c_t = σ(f + forget_bias + w_f_diag ⊙ c_{t-1}) ⊙ c_{t-1} + σ(i + w_i_diag ⊙ c_{t-1}) ⊙ tanh(j)
    c_t = clip(c_t, ±cell_clip)
    m_t = σ(o + w_o_diag ⊙ c_t) ⊙ tanh(c_t)       then   m_t = m_t projection/kernel   (num_proj)

That is ``jlstm.lstm(H, peephole="diagonal", proj_size=num_proj, cell_clip=cell_clip)``: the o
peephole reads the new cell state in both. The variables, under the cell's scope
(``rnn/lstm_cell`` by default; ``rnn/multi_rnn_cell/cell_0/lstm_cell`` in a ``MultiRNNCell``):
``kernel`` (in + R, 4H) with R = num_proj or H, ``bias`` (4H), the peepholes ``w_i_diag``,
``w_f_diag``, ``w_o_diag`` (H) and ``projection/kernel`` (H, num_proj). TensorFlow before 1.2
named them ``weights`` and ``biases``. ``forget_bias`` and ``cell_clip`` are constructor arguments,
not variables, so they are passed to the converters. TF1's ``proj_clip`` has no jlstm counterpart.

TF1's ``GRUCell`` applies its reset gate before the recurrent matrix::

    [r | u] = σ(concat[x, h] gates/kernel + gates/bias)
    h_t = u ⊙ h + (1 - u) ⊙ tanh(concat[x, r ⊙ h] candidate/kernel + candidate/bias)

which is ``jlstm.gru(H, reset_after=False)`` with ``u`` its ``z``: ``gates/kernel`` (in + H, 2H)
and ``candidate/kernel`` (in + H, H) give the r, z and n columns of ``w_x`` and ``w_h``.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from jlstm.cells.gru import ResetBeforeGRUParams, gru
from jlstm.cells.lstm import LSTMParams, lstm
from jlstm.core.types import Cell
from jlstm.interop._common import param_dtype, pick_one, reorder_blocks, reset_before_gru_arrays, to_numpy

_TO_JLSTM = (0, 2, 1, 3)          # TF1's blocks i, j, f, o -> jlstm's i, f, g, o (its own inverse)
_PEEPHOLES = ("w_i_diag", "w_f_diag", "w_o_diag")
_KERNEL = {"kernel": "bias", "weights": "biases"}      # TF >= 1.2 names, and the older ones


def _names(variables: Any, where: str) -> dict[str, Any]:
    if not isinstance(variables, Mapping):
        raise TypeError(f"{where}: expected a dict of TF1 variable name -> array (e.g. "
                        f"{{n: reader.get_tensor(n) for n, _ in tf.train.list_variables(path)}}), "
                        f"got {type(variables).__name__}.")
    out = {}
    for name, value in variables.items():
        if not isinstance(name, str):
            raise TypeError(f"{where}: variable names must be strings, got {name!r}.")
        out[name.split(":", 1)[0]] = value                    # "rnn/lstm_cell/kernel:0" -> "rnn/lstm_cell/kernel"
    return out


def _cell_scopes(names: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The scopes holding a kernel and its bias: ``(LSTM cells or other layers, GRU cells)``."""
    lstms, grus = [], []
    for name in names:
        scope, _, leaf = name.rpartition("/")
        if leaf not in _KERNEL or f"{scope}/{_KERNEL[leaf]}" not in names or scope.endswith("/projection"):
            continue
        parent, _, last = scope.rpartition("/")
        if last in ("gates", "candidate"):                   # GRUCell: gates/kernel and candidate/kernel
            if last == "gates" and parent not in grus:
                grus.append(parent)
            continue
        lstms.append(scope)
    return lstms, grus


def _lstm_shaped(names: Mapping[str, Any], scope: str) -> bool:
    """Whether the kernel and bias at ``scope`` have an LSTM cell's shapes: (in + R, 4H) and (4H,)."""
    def shape(leaves: tuple[str, ...]) -> tuple:
        return next((np.shape(names[f"{scope}/{leaf}"]) for leaf in leaves if f"{scope}/{leaf}" in names), ())

    kernel, bias, proj = shape(("kernel", "weights")), shape(("bias", "biases")), shape(
        ("projection/kernel", "projection/weights"))
    R = proj[-1] if len(proj) == 2 else (bias[0] // 4 if bias else 0)
    return (len(bias) == 1 and bias[0] % 4 == 0 and len(kernel) == 2 and kernel[1] == bias[0]
            and kernel[0] > R)


def _pick_scope(names: Mapping[str, Any], scope: str | None, where: str) -> str:
    lstms, grus = _cell_scopes(names)
    keras = [s for s in lstms if f"{s}/recurrent_kernel" in names]
    lstms = [s for s in lstms if s not in keras]
    if scope is None:            # other layers (a read-out Dense) are not candidates, unless nothing else is
        lstms = [s for s in lstms if _lstm_shaped(names, s)] or lstms      # (then its shapes are reported)
        named = [s for s in lstms if "lstm" in s.rsplit("/", 1)[-1].lower()]
        lstms = named if len(lstms) > 1 and len(named) == 1 else lstms
    if keras and (scope is None and not lstms or scope is not None and scope.rstrip("/") in keras):
        raise ValueError(f"{where}: {keras[0]!r} has a kernel, a recurrent_kernel and a bias: the variables of a "
                         f"Keras LSTM or GRU layer (tf.keras), not of a TF1 cell. Convert the layer with "
                         f"jlstm.interop.from_keras_lstm or from_keras_gru; for an LSTM's variables alone, "
                         f"jlstm.LSTMParams(w_x=kernel, w_h=recurrent_kernel, b=bias) is exact (gates i, f, c, "
                         f"o).")
    if scope is None and not lstms and grus:
        raise ValueError(f"{where}: {grus[0]!r} is a TF1 GRUCell; convert it with jlstm.interop.from_tf1_gru.")
    return pick_one(lstms, None if scope is None else scope.rstrip("/"), where, arg="scope", plural="cells",
                    missing="no LSTM cell under", none=f"found no LSTM cell (a '<scope>/kernel' with a "
                                                       f"'<scope>/bias') among the variables {_listing(names)}.")


def _listing(names: Mapping[str, Any]) -> str:
    return f"{sorted(names)[:12]}" + (" ..." if len(names) > 12 else "")


def _get(names: Mapping[str, Any], scope: str, leaves: tuple[str, ...], where: str) -> np.ndarray | None:
    for leaf in leaves:
        if f"{scope}/{leaf}" in names:
            return to_numpy(names[f"{scope}/{leaf}"], f"{scope}/{leaf}", where)
    return None


def _read_cell(names: Mapping[str, Any], scope: str, where: str) -> tuple[np.ndarray, np.ndarray, list, Any]:
    """The kernel, bias, peepholes (three arrays or three ``None``) and projection of the cell at ``scope``."""
    kernel = _get(names, scope, ("kernel", "weights"), where)
    bias = _get(names, scope, ("bias", "biases"), where)
    assert kernel is not None and bias is not None                       # _pick_scope found both
    if bias.ndim != 1 or bias.shape[0] % 4:
        raise _shape_error(where, f"{scope}/bias", bias.shape, ("4H",), "4 gate blocks of H units")
    H = bias.shape[0] // 4
    proj = _get(names, f"{scope}/projection", ("kernel", "weights"), where)
    R = H if proj is None else (proj.shape[-1] if proj.ndim == 2 else -1)
    if proj is not None and proj.shape != (H, R):
        raise _shape_error(where, f"{scope}/projection/kernel", proj.shape, (H, "num_proj"), f"H = {H}")
    if kernel.ndim != 2 or kernel.shape[1] != 4 * H or kernel.shape[0] <= R:
        raise _shape_error(where, f"{scope}/kernel", kernel.shape, ("in + " + str(R), 4 * H),
                           f"H = {H} from the bias, recurrent size {R}")
    diag = [_get(names, scope, (p,), where) for p in _PEEPHOLES]
    if any(d is None for d in diag) and any(d is not None for d in diag):
        have = [p for p, d in zip(_PEEPHOLES, diag) if d is not None]
        raise ValueError(f"{where}: {scope} has the peepholes {have} but not all of {list(_PEEPHOLES)}; TF1's "
                         f"use_peepholes=True makes all three.")
    for p, d in zip(_PEEPHOLES, diag):
        if d is not None and d.shape != (H,):
            raise _shape_error(where, f"{scope}/{p}", d.shape, (H,), f"H = {H}")
    return kernel, bias, diag, proj


def _shape_error(where: str, name: str, got: tuple, want: tuple, sizes: str) -> ValueError:
    return ValueError(f"{where}: {name} has shape {got}, expected {want} ({sizes}).")


def from_tf1_lstm(variables: Mapping[str, Any], *, scope: str | None = None, forget_bias: float = 1.0,
                  cell_clip: float | None = None) -> tuple[Cell, LSTMParams]:
    """Convert the variables of a TF1 ``LSTMCell`` (or ``BasicLSTMCell``, ``LSTMBlockCell``) to a jlstm cell.

    ::

        [w_x; w_h] = kernel (blocks i, j, f, o -> i, f, g, o)     b = bias, + forget_bias on f
        w_c = [w_i_diag; w_f_diag; w_o_diag]                     w_p = projection/kernel

    Peepholes and the projection are taken when their variables are there.

    Args:
      variables: variable name -> array, e.g. ``{n: reader.get_tensor(n) for n, _ in
        tf.train.list_variables(path)}`` with ``reader = tf.train.load_checkpoint(path)``, or
        ``{v.name: sess.run(v) for v in tf.global_variables()}`` (a ``:0`` suffix is dropped).
        Optimizer slots and other layers' variables are ignored.
      scope: the cell's variable scope (``"rnn/lstm_cell"``), needed where the variables hold
        several cells (a ``MultiRNNCell``, an encoder and a decoder).
      forget_bias: the cell's ``forget_bias`` (TF1's default 1.0); it joins the forget bias.
      cell_clip: the cell's ``cell_clip`` (``None``: no clipping).

    Returns:
      ``(jlstm.lstm(H, peephole=..., proj_size=..., cell_clip=...), LSTMParams)``. TF1's state
      ``LSTMStateTuple(c, h)`` becomes ``jlstm.LSTMState(h=state.h, c=state.c)``.

    Raises:
      TypeError: ``variables`` is not a dict of names.
      ValueError: no LSTM cell, several without ``scope=``, a ``GRUCell`` (no exact jlstm
        counterpart), some but not all peepholes, or shapes that disagree.
    """
    where = "jlstm.interop.from_tf1_lstm"
    names = _names(variables, where)
    scope = _pick_scope(names, scope, where)
    kernel, bias, diag, proj = _read_cell(names, scope, where)
    H = bias.shape[0] // 4
    R = H if proj is None else proj.shape[1]
    I = kernel.shape[0] - R
    dt = param_dtype(kernel)
    kernel = reorder_blocks(kernel, _TO_JLSTM)
    b = reorder_blocks(bias, _TO_JLSTM).copy()
    b[H:2 * H] += np.asarray(forget_bias, b.dtype)
    peephole = None if diag[0] is None else "diagonal"
    params = LSTMParams(
        w_x=jnp.asarray(kernel[:I], dt), w_h=jnp.asarray(kernel[I:], dt), b=jnp.asarray(b, dt),
        w_c=None if peephole is None else jnp.asarray(np.stack(diag), dt),
        w_p=None if proj is None else jnp.asarray(proj, dt))
    cell = lstm(H, peephole=peephole, proj_size=None if proj is None else R, cell_clip=cell_clip,
                param_dtype=dt)
    return cell, params


def to_tf1_lstm(params: LSTMParams, *, scope: str = "rnn/lstm_cell", forget_bias: float = 1.0) -> dict[str, Any]:
    """Convert jlstm :class:`LSTMParams` to the variables of a TF1 ``LSTMCell`` (the inverse of
    :func:`from_tf1_lstm`).

    Build the TF1 cell with ``use_peepholes=True`` when the params have diagonal peepholes,
    ``num_proj=P`` when they have a projection, the same ``forget_bias`` (subtracted here, added
    back by TF1 at run time), and the jlstm cell's ``cell_clip``.

    Args:
      params: the params of ``jlstm.lstm(H)``, ``peephole=None`` or ``"diagonal"`` (TF1 has no
        full peephole matrices), with or without ``proj_size``.
      scope: the variable scope the names get.
      forget_bias: the TF1 cell's ``forget_bias``.

    Returns:
      ``{"<scope>/kernel": ..., "<scope>/bias": ..., ["<scope>/w_i_diag", ...,
      "<scope>/projection/kernel"]}`` of NumPy arrays.

    Raises:
      TypeError: not :class:`LSTMParams`.
      ValueError: full peephole matrices, or inconsistent shapes.
    """
    where = "jlstm.interop.to_tf1_lstm"
    if not isinstance(params, LSTMParams):
        raise TypeError(f"{where}: params must be LSTMParams (from jlstm.lstm(H)), got {type(params).__name__}.")
    w_x, w_h, b = (to_numpy(a, n, where) for a, n in ((params.w_x, "w_x"), (params.w_h, "w_h"), (params.b, "b")))
    H = b.shape[0] // 4 if b.ndim == 1 else -1
    w_p = None if params.w_p is None else to_numpy(params.w_p, "w_p", where)
    R = H if w_p is None else w_p.shape[-1]
    if (b.shape != (4 * H,) or w_h.shape != (R, 4 * H) or w_x.ndim != 2 or w_x.shape[1] != 4 * H
            or (w_p is not None and w_p.shape != (H, R))):
        raise ValueError(f"{where}: inconsistent LSTMParams shapes w_x {w_x.shape}, w_h {w_h.shape}, b {b.shape}"
                         + ("" if w_p is None else f", w_p {w_p.shape}")
                         + "; expected (in, 4H), (R, 4H), (4H,) and w_p (H, R) with R = proj_size or H.")
    scope = scope.rstrip("/")
    b = b.copy()
    b[H:2 * H] -= np.asarray(forget_bias, b.dtype)
    out = {f"{scope}/kernel": np.ascontiguousarray(reorder_blocks(np.concatenate([w_x, w_h]), _TO_JLSTM)),
           f"{scope}/bias": np.ascontiguousarray(reorder_blocks(b, _TO_JLSTM))}
    if params.w_c is not None:
        w_c = to_numpy(params.w_c, "w_c", where)
        if w_c.shape != (3, H):
            raise ValueError(f"{where}: w_c has shape {w_c.shape}; TF1 has diagonal peepholes only, (3, H) = "
                             f"(3, {H}) in jlstm (peephole='diagonal'), not the full matrices (H, 3H).")
        out.update({f"{scope}/{p}": np.ascontiguousarray(w_c[k]) for k, p in enumerate(_PEEPHOLES)})
    if w_p is not None:
        out[f"{scope}/projection/kernel"] = np.ascontiguousarray(w_p)
    return out


def _pick_gru_scope(names: Mapping[str, Any], scope: str | None, where: str) -> str:
    _, grus = _cell_scopes(names)
    grus = [g for g in grus if any(f"{g}/candidate/{k}" in names and f"{g}/candidate/{b}" in names
                                   for k, b in _KERNEL.items())]
    return pick_one(grus, None if scope is None else scope.rstrip("/"), where, arg="scope", plural="GRU cells",
                    missing="no GRU cell under", none=f"found no GRU cell ('<scope>/gates/kernel' and "
                                                      f"'<scope>/candidate/kernel' with their biases) among the "
                                                      f"variables {_listing(names)}.")


def from_tf1_gru(variables: Mapping[str, Any], *, scope: str | None = None) -> tuple[Cell, ResetBeforeGRUParams]:
    """Convert the variables of a TF1 ``GRUCell`` to ``jlstm.gru(H, reset_after=False)`` and its params.

    ::

        [w_x; w_h] = [gates/kernel | candidate/kernel]    b = [gates/bias | candidate/bias]

    Args:
      variables: variable name -> array, as for :func:`from_tf1_lstm`.
      scope: the cell's variable scope (``"rnn/gru_cell"``), needed where there are several.

    Returns:
      ``(jlstm.gru(H, reset_after=False), ResetBeforeGRUParams)``; TF1's state ``h`` is
      :class:`jlstm.GRUState` ``(h,)``.

    Raises:
      TypeError: ``variables`` is not a dict of names.
      ValueError: no GRU cell, several without ``scope=``, or shapes that disagree.
    """
    where = "jlstm.interop.from_tf1_gru"
    names = _names(variables, where)
    scope = _pick_gru_scope(names, scope, where)
    gk = _get(names, f"{scope}/gates", ("kernel", "weights"), where)
    gb = _get(names, f"{scope}/gates", ("bias", "biases"), where)
    ck = _get(names, f"{scope}/candidate", ("kernel", "weights"), where)
    cb = _get(names, f"{scope}/candidate", ("bias", "biases"), where)
    assert gk is not None and gb is not None and ck is not None and cb is not None   # the scope has all four
    H = cb.shape[0] if cb.ndim == 1 else -1
    n = ck.shape[0] if ck.ndim == 2 else -1
    for what, a, want in (("gates/kernel", gk, (n, 2 * H)), ("gates/bias", gb, (2 * H,)),
                          ("candidate/kernel", ck, (n, H))):
        if a.shape != want or n <= H:
            raise _shape_error(where, f"{scope}/{what}", a.shape, want,
                               f"in + H rows, H = {H} from candidate/bias")
    I = n - H
    dt = param_dtype(gk)
    params = ResetBeforeGRUParams(w_x=jnp.asarray(np.concatenate([gk[:I], ck[:I]], axis=1), dt),
                                  w_h=jnp.asarray(np.concatenate([gk[I:], ck[I:]], axis=1), dt),
                                  b=jnp.asarray(np.concatenate([gb, cb]), dt))
    return gru(H, reset_after=False, param_dtype=dt), params


def to_tf1_gru(params: ResetBeforeGRUParams, *, scope: str = "rnn/gru_cell") -> dict[str, Any]:
    """Convert the params of ``jlstm.gru(H, reset_after=False)`` to a TF1 ``GRUCell``'s variables (the
    inverse of :func:`from_tf1_gru`).

    Args:
      params: :class:`jlstm.ResetBeforeGRUParams`. PyTorch-form :class:`jlstm.GRUParams` have no
        TF1 ``GRUCell`` counterpart.
      scope: the variable scope the names get.

    Returns:
      ``{"<scope>/gates/kernel", "<scope>/gates/bias", "<scope>/candidate/kernel",
      "<scope>/candidate/bias"}`` of NumPy arrays.

    Raises:
      TypeError: other params.
      ValueError: inconsistent shapes.
    """
    w_x, w_h, b = reset_before_gru_arrays(params, "jlstm.interop.to_tf1_gru", "TF1's GRUCell")
    H = w_h.shape[0]
    kernel = np.concatenate([w_x, w_h], axis=0)
    scope = scope.rstrip("/")
    return {f"{scope}/gates/kernel": np.ascontiguousarray(kernel[:, :2 * H]),
            f"{scope}/gates/bias": np.ascontiguousarray(b[:2 * H]),
            f"{scope}/candidate/kernel": np.ascontiguousarray(kernel[:, 2 * H:]),
            f"{scope}/candidate/bias": np.ascontiguousarray(b[2 * H:])}
