"""PyTorch ``nn.LSTM`` / ``nn.GRU`` weights and states <-> jlstm models (torch imported lazily).

PyTorch keeps column-vector weights ``W_ih`` (G·H, in), ``W_hh`` (G·H, R) with the same gate
order as jlstm (LSTM: i, f, g, o; GRU: r, z, n), so a conversion is a transpose per matrix:

* LSTM: ``w_x = W_ih.T``, ``w_h = W_hh.T``, ``b = b_ih + b_hh``, ``w_p = W_hr.T`` (proj_size).
* GRU: ``w_x = W_ih.T``, ``w_h = W_hh.T``, ``b_x = b_ih``, ``b_h = b_hh`` (``b_hn`` stays inside
  the reset product in both libraries).

Layer ``k`` direction ``d`` of PyTorch is entry ``k`` of the :func:`jlstm.stack` params; a
bidirectional layer has :class:`jlstm.BidirectionalParams` ``(forward, backward)`` and the
``_reverse`` keys go to ``backward``. The states ``(h_n, c_n)`` of shape
(num_layers·num_directions, *batch, size) index layer ``k`` direction ``d`` at ``k·D + d``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from jlstm.cells.gru import GRUParams, GRUState, gru
from jlstm.cells.lstm import LSTMParams, LSTMState, lstm
from jlstm.core.checks import check_rate
from jlstm.core.types import SequenceModel
from jlstm.interop._common import check_model_name, layers_of, param_dtype, to_numpy
from jlstm.layers.bidirectional import BidirectionalParams, BidirectionalState, bidirectional
from jlstm.layers.recurrent import recurrent
from jlstm.layers.stack import stack

_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
_GATES = {"lstm": 4, "gru": 3}
_CELL_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_TORCH_NAME = {"lstm": "nn.LSTM", "gru": "nn.GRU"}
_BY_RATIO = {1: "nn.RNN", 3: "nn.GRU (use from_torch_gru)", 4: "nn.LSTM (use from_torch_lstm)"}


class _Parsed:
    """The checked contents of a PyTorch RNN state dict."""

    def __init__(self, entries, num_layers, num_dirs, hidden, proj, input_size, bias, dtype):
        self.entries = entries
        self.num_layers = num_layers
        self.num_dirs = num_dirs
        self.hidden = hidden
        self.proj = proj
        self.input_size = input_size
        self.bias = bias
        self.dtype = dtype

    def get(self, name: str, layer: int, direction: int) -> np.ndarray:
        return self.entries[(name, layer, direction)]


def _state_dict_of(obj: Any, kind: str, where: str) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    if callable(getattr(obj, "state_dict", None)):
        import torch

        want = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
        if not isinstance(obj, want):
            other = {"LSTM": "from_torch_lstm", "GRU": "from_torch_gru", "LSTMCell": "from_torch_lstm_cell",
                     "GRUCell": "from_torch_gru_cell"}.get(type(obj).__name__)
            hint = f"; use jlstm.interop.{other} for it" if other else ""
            raise TypeError(f"{where}: expected a torch.{_TORCH_NAME[kind]} or its state_dict(), got a "
                            f"{type(obj).__name__} module{hint}.")
        return obj.state_dict()
    raise TypeError(f"{where}: expected the state_dict() of a torch.{_TORCH_NAME[kind]} (a mapping from "
                    f"names such as 'weight_ih_l0' to arrays), got {type(obj).__name__}.")


def _parse(state_dict: Any, kind: str, prefix: str, where: str) -> _Parsed:
    entries = _entries(_state_dict_of(state_dict, kind, where), kind, prefix, where)
    num_layers = max(k for _, k, _ in entries) + 1
    num_dirs = 2 if any(d for _, _, d in entries) else 1
    bias = any(n.startswith("bias") for n, _, _ in entries)
    proj = any(n == "weight_hr" for n, _, _ in entries)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else []) + (["weight_hr"] if proj else [])
    expected = {(n, k, d) for n in names for k in range(num_layers) for d in range(num_dirs)}
    missing = sorted(expected - set(entries), key=lambda e: (e[1], e[2], e[0]))
    if missing:
        listed = ", ".join(f"{prefix}{n}_l{k}{'_reverse' if d else ''}" for n, k, d in missing[:6])
        raise ValueError(f"{where}: the state_dict is incomplete: missing {listed}"
                         + (" ..." if len(missing) > 6 else "")
                         + f" (found {num_layers} layer(s), {num_dirs} direction(s)"
                         + (", biases" if bias else "") + (", projections" if proj else "") + ").")
    H, P = _sizes(entries, kind, prefix, where)
    input_size = entries[("weight_ih", 0, 0)].shape[1]
    _check_shapes(entries, names, kind, H, P, input_size, num_layers, num_dirs, prefix, where)
    dtype = param_dtype(entries[("weight_ih", 0, 0)])
    return _Parsed(entries, num_layers, num_dirs, H, P, input_size, bias, dtype)


def _entries(sd: Any, kind: str, prefix: str, where: str) -> dict[tuple[str, int, int], np.ndarray]:
    """The state_dict's arrays by ``(name, layer, direction)``, the keys checked."""
    if not isinstance(prefix, str):
        raise TypeError(f"{where}: prefix must be a str such as 'encoder.rnn.', got {prefix!r}.")
    entries: dict[tuple[str, int, int], np.ndarray] = {}
    for key, value in sd.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: state_dict keys must be strings, got {key!r}.")
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix):]
        m = _KEY.match(key)
        if m is None or (m.group(1) == "weight_hr" and kind == "gru"):
            cell = (f" (a torch.{_TORCH_NAME[kind]}Cell's key: use from_torch_{kind}_cell)" if key in _CELL_KEYS
                    else "")
            raise ValueError(
                f"{where}: unexpected key {prefix + key!r}{cell}; a torch.{_TORCH_NAME[kind]} state_dict has keys "
                f"weight_ih_l{{k}}, weight_hh_l{{k}}, bias_ih_l{{k}}, bias_hh_l{{k}}"
                + (", weight_hr_l{k}" if kind == "lstm" else "")
                + " with an optional '_reverse' suffix. Pass prefix='...' to read the RNN out of a "
                  "larger model's state_dict.")
        entries[(m.group(1), int(m.group(2)), 1 if m.group(3) else 0)] = to_numpy(
            value, f"state_dict[{prefix + key!r}]", where)
    if not entries:
        raise ValueError(f"{where}: found no weights" + (f" under prefix {prefix!r}" if prefix else "")
                         + f"; expected keys such as {prefix}weight_ih_l0.")
    for (n, k, d), arr in entries.items():
        want_ndim = 1 if n.startswith("bias") else 2
        if arr.ndim != want_ndim:
            raise ValueError(f"{where}: {prefix}{n}_l{k}{'_reverse' if d else ''} has shape {arr.shape}, "
                             f"expected a {want_ndim}-d array.")
    return entries


def _sizes(entries: dict, kind: str, prefix: str, where: str) -> tuple[int, int | None]:
    """``(hidden_size, proj_size)`` read from layer 0, with a guess at the module when they do not fit."""
    G = _GATES[kind]
    w_hh = entries[("weight_hh", 0, 0)]
    if ("weight_hr", 0, 0) in entries:
        P, H = entries[("weight_hr", 0, 0)].shape
    else:
        H, P = w_hh.shape[1], None
    R = H if P is None else P
    if w_hh.shape[0] != G * H:
        ratio = w_hh.shape[0] / max(w_hh.shape[1], 1)
        guess = _BY_RATIO.get(int(ratio)) if ratio == int(ratio) else None
        raise ValueError(
            f"{where}: {prefix}weight_hh_l0 has shape {w_hh.shape}, expected ({G}·H, {R}) = ({G * H}, {R}) "
            f"for a torch.{_TORCH_NAME[kind]} with hidden_size {H}"
            + (f"; these look like the weights of a {guess}." if guess else "."))
    return H, P


def _check_shapes(entries: dict, names: list[str], kind: str, H: int, P: int | None, input_size: int,
                  num_layers: int, num_dirs: int, prefix: str, where: str) -> None:
    G, R = _GATES[kind], H if P is None else P
    for k in range(num_layers):
        in_k = input_size if k == 0 else num_dirs * R
        want = {"weight_ih": (G * H, in_k), "weight_hh": (G * H, R), "bias_ih": (G * H,),
                "bias_hh": (G * H,), "weight_hr": (R, H)}
        for d in range(num_dirs):
            for n in names:
                got = entries[(n, k, d)].shape
                if tuple(got) != want[n]:
                    raise ValueError(
                        f"{where}: {prefix}{n}_l{k}{'_reverse' if d else ''} has shape {tuple(got)}, expected "
                        f"{want[n]} (hidden_size {H}" + (f", proj_size {P}" if P else "")
                        + f", layer input size {in_k}); the state_dict mixes modules of different sizes.")


def _build(parsed: _Parsed, kind: str, dropout: float) -> tuple[SequenceModel, tuple]:
    G, H, D = _GATES[kind], parsed.hidden, parsed.num_dirs
    zeros = np.zeros((G * H,), np.float32)
    layers, params = [], []
    for k in range(parsed.num_layers):
        dirs = []
        for d in range(D):
            w_x = jnp.asarray(parsed.get("weight_ih", k, d).T, parsed.dtype)
            w_h = jnp.asarray(parsed.get("weight_hh", k, d).T, parsed.dtype)
            b_ih = parsed.get("bias_ih", k, d) if parsed.bias else zeros
            b_hh = parsed.get("bias_hh", k, d) if parsed.bias else zeros
            if kind == "lstm":
                b = b_ih.astype(np.float64) + b_hh.astype(np.float64)
                w_p = None if parsed.proj is None else jnp.asarray(parsed.get("weight_hr", k, d).T, parsed.dtype)
                dirs.append(LSTMParams(w_x, w_h, jnp.asarray(b, parsed.dtype), None, w_p))
            else:
                dirs.append(GRUParams(w_x, w_h, jnp.asarray(b_ih, parsed.dtype), jnp.asarray(b_hh, parsed.dtype)))
        if kind == "lstm":
            cell = lstm(H, proj_size=parsed.proj, param_dtype=parsed.dtype)
        else:
            cell = gru(H, param_dtype=parsed.dtype)
        if D == 2:
            layers.append(bidirectional(cell, merge="concat"))
            params.append(BidirectionalParams(dirs[0], dirs[1]))
        else:
            layers.append(recurrent(cell))
            params.append(dirs[0])
    return stack(*layers, inter_layer_dropout=dropout), tuple(params)


def from_torch_lstm(state_dict: Any, *, dropout: float = 0.0, prefix: str = "") -> tuple[SequenceModel, tuple]:
    """Convert a ``torch.nn.LSTM`` (its ``state_dict()``, or the module) to a jlstm model and params.

    Sizes are read from the keys and shapes: the number of layers, bidirectional (``_reverse``
    keys), ``proj_size`` (``weight_hr`` keys), ``bias=False`` (no bias keys). The values may be
    torch tensors or NumPy arrays.

    Per layer ``k`` and direction::

        w_x = W_ih.T  (in, 4H)    w_h = W_hh.T  (R, 4H)    b = b_ih + b_hh  (4H)
        w_p = W_hr.T  (H, P)      # proj_size > 0 only; R = P, else R = H

    Args:
      state_dict: ``lstm.state_dict()`` (or the ``nn.LSTM`` itself).
      dropout: PyTorch's between-layer ``dropout`` (it is not in the state dict); used as the
        ``inter_layer_dropout`` of :func:`jlstm.stack`, active only when ``apply`` gets a key.
      prefix: read only the keys that start with it (e.g. ``"encoder.rnn."``) from the
        state dict of a larger model.

    Returns:
      ``(model, params)``: ``model = jlstm.stack(layer_0, ...)`` where each layer is
      ``jlstm.recurrent(jlstm.lstm(H, proj_size=P))`` or
      ``jlstm.bidirectional(jlstm.lstm(H, proj_size=P), merge='concat')``, and ``params`` is a
      tuple with one entry per layer. ``model.apply(params, xs, state=None, *, lengths=None)``
      takes time-major ``xs`` [T, B, in] like PyTorch's default (``time_major=False`` for
      ``batch_first=True``) and returns ``(final_state, ys)``; :func:`to_torch_state` turns
      ``final_state`` into PyTorch's ``(h_n, c_n)``.

    Raises:
      TypeError: not a state dict / an ``nn.LSTM``, or non-float values.
      ValueError: unknown or missing keys, or inconsistent shapes (e.g. a GRU's weights).

    Example:
      >>> import torch
      >>> torch_lstm = torch.nn.LSTM(input_size=3, hidden_size=5, num_layers=2)
      >>> model, params = jlstm.interop.from_torch_lstm(torch_lstm.state_dict())
      >>> xs = jnp.ones((7, 2, 3))                     # [T, B, input_size], time-major like torch
      >>> final, ys = model.apply(params, xs)
      >>> ys.shape
      (7, 2, 5)
      >>> h_n, c_n = jlstm.interop.to_torch_state(final)
      >>> tuple(h_n.shape), tuple(c_n.shape)           # (layers * directions, B, H)
      ((2, 2, 5), (2, 2, 5))
    """
    where = "jlstm.interop.from_torch_lstm"
    check_rate("dropout", dropout)
    return _build(_parse(state_dict, "lstm", prefix, where), "lstm", dropout)


def from_torch_gru(state_dict: Any, *, dropout: float = 0.0, prefix: str = "") -> tuple[SequenceModel, tuple]:
    """Convert a ``torch.nn.GRU`` (its ``state_dict()``, or the module) to a jlstm model and params.

    Per layer and direction ``w_x = W_ih.T`` (in, 3H), ``w_h = W_hh.T`` (H, 3H), ``b_x = b_ih``,
    ``b_h = b_hh``; gate blocks r, z, n in both libraries, with ``b_hn`` inside
    ``r ⊙ (h W_hn + b_hn)``. Arguments and result as :func:`from_torch_lstm`, with
    ``jlstm.gru(H)`` cells.
    """
    where = "jlstm.interop.from_torch_gru"
    check_rate("dropout", dropout)
    return _build(_parse(state_dict, "gru", prefix, where), "gru", dropout)


def _to_torch(model: SequenceModel | None, params: Any, kind: str, as_numpy: bool, where: str) -> dict:
    check_model_name(model, where)
    cls = LSTMParams if kind == "lstm" else GRUParams
    layers, bidir = layers_of(params, cls, where, kind)
    info = _torch_sizes(layers, bidir, kind, where)
    out: dict[str, np.ndarray] = {}
    for k, dirs in enumerate(layers):
        for d, p in enumerate(dirs):
            suf = f"_l{k}" + ("_reverse" if d else "")
            out["weight_ih" + suf] = np.asarray(p.w_x).T
            out["weight_hh" + suf] = np.asarray(p.w_h).T
            if kind == "lstm":
                out["bias_ih" + suf] = np.asarray(p.b)
                out["bias_hh" + suf] = np.zeros_like(np.asarray(p.b))
                if info["proj_size"]:
                    out["weight_hr" + suf] = np.asarray(p.w_p).T
            else:
                out["bias_ih" + suf] = np.asarray(p.b_x)
                out["bias_hh" + suf] = np.asarray(p.b_h)
    out = {key: np.ascontiguousarray(v) for key, v in out.items()}
    if as_numpy:
        return out
    return {key: _torch_tensor(v) for key, v in out.items()}


def _torch_tensor(a: np.ndarray):
    """A CPU torch tensor that owns a copy of ``a`` (bf16 goes through float32: NumPy has no torch bf16)."""
    import torch

    if a.dtype == jnp.bfloat16:
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(a, copy=True))


def _torch_sizes(layers: list, bidir: bool, kind: str, where: str) -> dict[str, Any]:
    G = _GATES[kind]
    first = layers[0][0]
    H = first.w_h.shape[1] // G
    P = None
    if kind == "lstm":
        P = None if first.w_p is None else first.w_p.shape[1]
    R = H if P is None else P
    D = 2 if bidir else 1
    input_size = first.w_x.shape[0]
    for k, dirs in enumerate(layers):
        in_k = input_size if k == 0 else D * R
        for d, p in enumerate(dirs):
            what = f"layer {k}" + (" backward" if d else "")
            if kind == "lstm":
                if p.w_c is not None:
                    raise ValueError(f"{where}: {what} has peephole weights (w_c); torch.nn.LSTM has no "
                                     f"peepholes. Only jlstm.lstm(H) / lstm(H, proj_size=P) convert.")
                if (p.w_p is None) != (P is None):
                    raise ValueError(f"{where}: {what} " + ("has" if P is None else "lacks")
                                     + " a projection (w_p) unlike layer 0; torch.nn.LSTM uses one proj_size.")
                shapes = {"w_x": (in_k, 4 * H), "w_h": (R, 4 * H), "b": (4 * H,)}
                if P is not None:
                    shapes["w_p"] = (H, P)
            else:
                shapes = {"w_x": (in_k, 3 * H), "w_h": (H, 3 * H), "b_x": (3 * H,), "b_h": (3 * H,)}
            for field, want in shapes.items():
                got = tuple(np.shape(getattr(p, field)))
                if got != want:
                    raise ValueError(
                        f"{where}: {what} params.{field} has shape {got}, expected {want}; torch."
                        f"{_TORCH_NAME[kind]} needs every layer to have hidden size {H}"
                        + (f", proj_size {P}" if P else "") + f" and layer k>0 to read {D}·{R} inputs.")
    out = {"input_size": int(input_size), "hidden_size": int(H), "num_layers": len(layers),
           "bidirectional": bidir, "bias": True}
    if kind == "lstm":
        out["proj_size"] = int(P or 0)
    return out


def to_torch_lstm(model: SequenceModel | None, params: Any, *, as_numpy: bool = False) -> dict[str, Any]:
    """Convert jlstm LSTM params to a ``torch.nn.LSTM`` state dict.

    The inverse of :func:`from_torch_lstm`: ``weight_ih = w_x.T``, ``weight_hh = w_h.T``,
    ``weight_hr = w_p.T``; the single bias ``b`` goes to ``bias_ih`` and ``bias_hh`` is zeros
    (the sum is what PyTorch uses).

    Args:
      model: the jlstm model of ``params`` (checked for options PyTorch cannot express:
        cell_clip, peepholes, reversed unidirectional layers, merges other than concat),
        or ``None`` to convert the params alone.
      params: one layer's :class:`jlstm.LSTMParams` / :class:`jlstm.BidirectionalParams`, or a
        tuple of those per layer (a :func:`jlstm.stack`).
      as_numpy: return NumPy arrays (no torch needed; load them with
        ``{k: torch.from_numpy(v) for k, v in sd.items()}``) instead of torch tensors.

    Returns:
      A dict of CPU torch tensors (NumPy arrays with ``as_numpy=True``) that
      ``nn.LSTM(**jlstm.interop.torch_kwargs(params)).load_state_dict`` accepts.

    Raises:
      TypeError: params of another cell type.
      ValueError: peepholes, cell_clip, mixed sizes across layers, or a mix of uni- and
        bidirectional layers.
    """
    return _to_torch(model, params, "lstm", as_numpy, "jlstm.interop.to_torch_lstm")


def to_torch_gru(model: SequenceModel | None, params: Any, *, as_numpy: bool = False) -> dict[str, Any]:
    """Convert jlstm GRU params to a ``torch.nn.GRU`` state dict (``bias_ih = b_x``, ``bias_hh = b_h``).

    Arguments and result as :func:`to_torch_lstm`.
    """
    return _to_torch(model, params, "gru", as_numpy, "jlstm.interop.to_torch_gru")


def _kind_of(params: Any, where: str) -> str:
    p = params
    if isinstance(p, (tuple, list)) and p and not isinstance(p, (LSTMParams, GRUParams, BidirectionalParams)):
        p = p[0]
    if isinstance(p, BidirectionalParams):
        p = p.forward
    if isinstance(p, LSTMParams):
        return "lstm"
    if isinstance(p, GRUParams):
        return "gru"
    raise TypeError(f"{where}: params must come from jlstm.lstm or jlstm.gru layers (e.g. the params "
                    f"returned by from_torch_lstm), got {type(p).__name__}.")


def torch_kwargs(params: Any) -> dict[str, Any]:
    """The ``nn.LSTM`` / ``nn.GRU`` constructor arguments that match jlstm params.

    Returns:
      ``{"input_size", "hidden_size", "num_layers", "bidirectional", "bias"}`` plus
      ``"proj_size"`` for an LSTM, e.g. ``torch.nn.LSTM(**torch_kwargs(params))``.
    """
    where = "jlstm.interop.torch_kwargs"
    kind = _kind_of(params, where)
    layers, bidir = layers_of(params, LSTMParams if kind == "lstm" else GRUParams, where, kind)
    return _torch_sizes(layers, bidir, kind, where)


def _as_jax(x: Any, name: str, where: str) -> Any:
    if type(x).__module__.startswith("torch"):
        return jnp.asarray(to_numpy(x, name, where))
    if not hasattr(x, "shape"):
        raise TypeError(f"{where}: {name} must be an array or torch tensor, got {type(x).__name__}.")
    return jnp.asarray(x)


def from_torch_state(params: Any, h0: Any, c0: Any = None) -> Any:
    """Convert PyTorch's initial state to the state of the matching jlstm model.

    Args:
      params: the params of the model (from :func:`from_torch_lstm` / :func:`from_torch_gru`);
        they give the number of layers and directions.
      h0: (num_layers·num_directions, *batch, R) with R = proj_size or H (a tensor or array).
      c0: (num_layers·num_directions, *batch, H) for an LSTM; must be ``None`` for a GRU.

    Returns:
      A tuple with one entry per layer of :class:`jlstm.LSTMState` ``(h, c)`` /
      :class:`jlstm.GRUState` ``(h,)``, or :class:`jlstm.BidirectionalState` of those
      (entry ``k·D + d`` of PyTorch's leading axis); a single layer's state if ``params``
      is a single layer's. Pass it as ``model.apply(params, xs, state)``.
    """
    where = "jlstm.interop.from_torch_state"
    kind = _kind_of(params, where)
    layers, bidir = layers_of(params, LSTMParams if kind == "lstm" else GRUParams, where, kind)
    D, n = (2 if bidir else 1), len(layers) * (2 if bidir else 1)
    if kind == "gru" and c0 is not None:
        raise ValueError(f"{where}: a GRU has no cell state; pass c0=None.")
    if kind == "lstm" and c0 is None:
        raise ValueError(f"{where}: an LSTM needs both h0 and c0 (PyTorch's (h_0, c_0)).")
    h0 = _as_jax(h0, "h0", where)
    c0 = None if c0 is None else _as_jax(c0, "c0", where)
    for name, arr in (("h0", h0), ("c0", c0)):
        if arr is not None and (arr.ndim < 2 or arr.shape[0] != n):
            raise ValueError(f"{where}: {name} has shape {tuple(arr.shape)}, expected (num_layers·num_directions"
                             f" = {n}, *batch, size).")
    out = []
    for k, dirs in enumerate(layers):
        states = []
        for d, p in enumerate(dirs):
            j = k * D + d
            if kind == "lstm":
                R, H = p.w_h.shape[0], p.b.shape[0] // 4
                if h0.shape[-1] != R or c0.shape[-1] != H:
                    raise ValueError(f"{where}: h0/c0 have last axes {h0.shape[-1]}/{c0.shape[-1]}, expected "
                                     f"{R}/{H} (proj_size or hidden_size / hidden_size).")
                states.append(LSTMState(h=h0[j], c=c0[j]))
            else:
                H = p.w_h.shape[0]
                if h0.shape[-1] != H:
                    raise ValueError(f"{where}: h0 has last axis {h0.shape[-1]}, expected hidden_size {H}.")
                states.append(GRUState(h=h0[j]))
        out.append(BidirectionalState(*states) if bidir else states[0])
    single = isinstance(params, (LSTMParams, GRUParams, BidirectionalParams))
    return out[0] if single else tuple(out)


def to_torch_state(state: Any, *, as_numpy: bool = False) -> Any:
    """Convert a jlstm final state (stack, single layer or bidirectional) to PyTorch's layout.

    Like :func:`to_torch_lstm`, it returns CPU torch tensors, ready for ``nn.LSTM(x, (h_n, c_n))``.
    It works on concrete arrays: call it on the result of a jitted function, not inside one.

    Args:
      state: the final state of a jlstm LSTM or GRU model (``model.apply(...)[0]``).
      as_numpy: return NumPy arrays instead (no torch needed).

    Returns:
      ``(h_n, c_n)`` for LSTM states and ``h_n`` for GRU states, of shape
      (num_layers·num_directions, *batch, size), layer ``k`` direction ``d`` at ``k·D + d``.
    """
    where = "jlstm.interop.to_torch_state"
    layers = (state,) if isinstance(state, (LSTMState, GRUState, BidirectionalState)) else state
    if not isinstance(layers, (tuple, list)) or not layers:
        raise TypeError(f"{where}: expected the final state of a jlstm LSTM/GRU model, got "
                        f"{type(state).__name__}.")
    flat = []
    for k, s in enumerate(layers):
        dirs = [s.forward, s.backward] if isinstance(s, BidirectionalState) else [s]
        for d in dirs:
            if not isinstance(d, (LSTMState, GRUState)):
                raise TypeError(f"{where}: layer {k} has a state of type {type(d).__name__}; expected "
                                f"LSTMState or GRUState.")
            flat.append(d)
    kinds = {type(d) for d in flat}
    if len(kinds) > 1:
        raise ValueError(f"{where}: the state mixes LSTM and GRU layers; PyTorch has no such module.")
    if any(isinstance(leaf, Tracer) for d in flat for leaf in jax.tree.leaves(d)):
        raise TypeError(f"{where}: got traced arrays (called inside jit, grad or vmap); it builds torch "
                        f"tensors, which needs concrete values. Return the jlstm state from the transformed "
                        f"function and convert it outside.")
    arrays = [np.stack([np.asarray(d.h) for d in flat])]
    if isinstance(flat[0], LSTMState):
        arrays.append(np.stack([np.asarray(d.c) for d in flat]))
    out = arrays if as_numpy else [_torch_tensor(a) for a in arrays]
    return tuple(out) if len(out) == 2 else out[0]
