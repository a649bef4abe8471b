"""Helpers shared by the interop modules: array conversion, gate reordering, layer walking."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import jax.numpy as jnp
import numpy as np

from jlstm.cells.gru import GRUParams, ResetBeforeGRUParams
from jlstm.cells.lstm import LSTMParams
from jlstm.core.types import Cell, CellConfig, SequenceModel
from jlstm.layers.bidirectional import BidirectionalParams


def to_numpy(value: Any, name: str, where: str) -> np.ndarray:
    """Turn a NumPy array, JAX array, torch tensor or Keras variable into a NumPy array.

    bfloat16 torch tensors go through float32 (NumPy has no bfloat16 of its own) and come
    back as ``ml_dtypes.bfloat16``.
    """
    if value is None:
        raise ValueError(f"{where}: {name} is None; expected an array.")
    mod = type(value).__module__
    if mod.startswith("torch"):
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            return np.asarray(t.float().numpy()).astype(jnp.bfloat16)
        return np.asarray(t.numpy())
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"{where}: {name} must be an array, got {type(value).__name__}.") from e
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == jnp.bfloat16):
        raise TypeError(f"{where}: {name} must hold floating point numbers, got dtype {arr.dtype} "
                        f"(shape {arr.shape}).")
    return arr


def param_dtype(*arrays: np.ndarray) -> Any:
    """The dtype jlstm keeps the converted params in (float64 becomes float32 unless x64 is on)."""
    return jnp.asarray(np.zeros((), arrays[0].dtype)).dtype


def reorder_blocks(a: Any, order: Sequence[int], axis: int = -1) -> Any:
    """Permute the equal gate blocks of ``a`` along ``axis``: block j of the result is block order[j]."""
    n = len(order)
    size = a.shape[axis]
    if size % n:
        raise ValueError(f"cannot split an axis of size {size} into {n} gate blocks.")
    k = size // n
    xp = jnp if isinstance(a, jnp.ndarray) and not isinstance(a, np.ndarray) else np
    parts = [xp.take(a, xp.arange(j * k, (j + 1) * k), axis=axis) for j in order]
    return xp.concatenate(parts, axis=axis)


def other_form(params: Any) -> str:
    """A note for params of ``jlstm.gru(H, reset_after=False)``, which PyTorch-form GRUs cannot run."""
    if not isinstance(params, ResetBeforeGRUParams):
        return ""
    return (" (jlstm.gru(H, reset_after=False): its reset gate scales h before the recurrent matrix, which a "
            "PyTorch-form GRU does not)")


def layers_of(params: Any, cls: type, where: str, kind: str) -> tuple[list[list[Any]], bool]:
    """Normalise the params of a jlstm model to ``[[forward(, backward)] per layer]``.

    Accepts one cell's params (a unidirectional layer), a :class:`BidirectionalParams`, or
    a tuple/list of those (a :func:`jlstm.stack`). Every layer must have the same direction
    count. Returns ``(layers, bidirectional)``.
    """
    if isinstance(params, (cls, BidirectionalParams)):
        params = (params,)
    elif hasattr(params, "_fields"):  # another cell's params NamedTuple
        raise TypeError(
            f"{where}: params must be {cls.__name__} (a jlstm.{kind} cell), BidirectionalParams or a tuple of "
            f"those per layer, got {type(params).__name__}{other_form(params)}.")
    if not isinstance(params, (tuple, list)) or not params:
        raise TypeError(
            f"{where}: params must be {cls.__name__} (one layer), BidirectionalParams, or a tuple of "
            f"those per layer (jlstm.stack), got {type(params).__name__}; pass the params of a model "
            f"built from jlstm.{kind}(...) cells.")
    layers, dirs = [], set()
    for k, p in enumerate(params):
        if isinstance(p, BidirectionalParams):
            pair = [p.forward, p.backward]
        elif isinstance(p, cls):
            pair = [p]
        else:
            raise TypeError(
                f"{where}: layer {k} has params of type {type(p).__name__}{other_form(p)}; expected "
                f"{cls.__name__} or BidirectionalParams of {cls.__name__} (a jlstm.{kind} cell). Other cells "
                f"have no counterpart in this library.")
        for d, q in enumerate(pair):
            if not isinstance(q, cls):
                raise TypeError(f"{where}: layer {k} direction {d} has params of type {type(q).__name__}; "
                                f"expected {cls.__name__} (a jlstm.{kind} cell).")
        dirs.add(len(pair))
        layers.append(pair)
    if len(dirs) > 1:
        raise ValueError(f"{where}: the layers mix unidirectional and bidirectional params; the target "
                         f"library needs all layers the same.")
    return layers, dirs.pop() == 2


def _walk(config: Any) -> Iterator[CellConfig]:
    """Every config in a model's config tree: layers, their cells, stacked layers' layers."""
    if not isinstance(config, CellConfig):
        return
    yield config
    for value in config.as_dict().values():
        nested = isinstance(value, tuple) and not isinstance(value, SequenceModel)
        children = value if nested else (value,)
        for child in children:
            if isinstance(child, (Cell, SequenceModel)):
                yield from _walk(child.config)


def model_configs(model: SequenceModel | None) -> list[CellConfig]:
    """The configs of a model, its layers and its cells, outermost first ([] without a config)."""
    return [] if model is None else list(_walk(model.config))


def check_model_name(model: SequenceModel | None, where: str, *, allow_reverse: bool = False,
                     merges: tuple[str, ...] = ("concat",)) -> None:
    """Reject model options that the peer library cannot express (they are not visible in params).

    The options are read from the model's config tree (every layer and every cell, both
    directions of a bidirectional layer included), never from its name.
    """
    if model is None:
        return
    if not isinstance(model, SequenceModel):
        raise TypeError(f"{where}: model must be a jlstm.SequenceModel (or None), got {type(model).__name__}; "
                        f"pass the model returned with the params (e.g. by from_torch_lstm).")
    name = model.name
    for cfg in model_configs(model):
        if cfg.get("cell_clip") is not None:
            raise ValueError(f"{where}: the model {name} has a cell that clips its cell state (cell_clip="
                             f"{cfg.cell_clip}); the target library has no cell clipping, so its outputs "
                             f"would differ. Rebuild without cell_clip.")
        if cfg.get("peephole") is not None:
            raise ValueError(f"{where}: the model {name} has a cell with peephole={cfg.peephole!r}; the "
                             f"target library has none.")
        if cfg.kind == "bidirectional" and cfg.merge not in merges:
            raise ValueError(f"{where}: the model {name} merges its directions with {cfg.merge!r}; the target "
                             f"library supports {', '.join(repr(m) for m in merges)}. Rebuild with "
                             f"merge='concat'.")
    if not allow_reverse and layer_is_reversed(model):
        raise ValueError(f"{where}: the model {name} has a reversed unidirectional layer; the target "
                         f"library has none. Use jlstm.bidirectional or a forward layer.")


def model_merge(model: SequenceModel | None) -> str | None:
    """The ``merge`` of a bidirectional model's first bidirectional layer (``None`` if there is none)."""
    for cfg in model_configs(model):
        if cfg.kind == "bidirectional":
            return cfg.merge
    return None


def layer_is_reversed(model: SequenceModel | None) -> bool:
    """Whether a unidirectional layer of the model runs backwards (bidirectional layers excluded)."""
    def reversed_in(config: Any) -> bool:
        if not isinstance(config, CellConfig):
            return False
        if config.kind == "recurrent":
            return bool(config.reverse)
        if config.kind == "stack":
            return any(reversed_in(layer.config) for layer in config.layers)
        return False

    return model is not None and reversed_in(model.config)


def plain_lstm_arrays(params: Any, where: str, peer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w_x``, ``w_h`` and ``b`` of the params of a peephole-free ``jlstm.lstm(H)`` without a
    projection, as NumPy arrays with their shapes checked, for a ``peer`` that has neither."""
    if not isinstance(params, LSTMParams):
        raise TypeError(f"{where}: params must be LSTMParams (from jlstm.lstm(H)), got {type(params).__name__}.")
    if params.w_c is not None or params.w_p is not None:
        raise ValueError(f"{where}: {peer} has no peepholes and no projection; these params have "
                         + ("peepholes (w_c)" if params.w_c is not None else "a projection (w_p)") + ".")
    w_x, w_h, b = (to_numpy(a, n, where) for a, n in ((params.w_x, "w_x"), (params.w_h, "w_h"), (params.b, "b")))
    H = b.shape[0] // 4 if b.ndim == 1 else -1
    if b.shape != (4 * H,) or w_h.shape != (H, 4 * H) or w_x.ndim != 2 or w_x.shape[1] != 4 * H:
        raise ValueError(f"{where}: inconsistent LSTMParams shapes w_x {w_x.shape}, w_h {w_h.shape}, b {b.shape}; "
                         f"expected (in, 4H), (H, 4H), (4H,).")
    return w_x, w_h, b


def gru_arrays(params: Any, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``w_x``, ``w_h``, ``b_x`` and ``b_h`` of a PyTorch-form ``jlstm.gru(H)``'s params, as NumPy arrays
    with their shapes checked (params of ``gru(H, reset_after=False)`` are refused with the reason)."""
    if not isinstance(params, GRUParams):
        raise TypeError(f"{where}: params must be GRUParams (from jlstm.gru(H)), got "
                        f"{type(params).__name__}{other_form(params)}.")
    w_x, w_h, b_x, b_h = (to_numpy(getattr(params, n), n, where) for n in GRUParams._fields)
    H = w_h.shape[0] if w_h.ndim == 2 else -1
    if w_h.shape != (H, 3 * H) or w_x.ndim != 2 or w_x.shape[1] != 3 * H or (3 * H,) != b_x.shape or (
            b_h.shape != (3 * H,)):
        raise ValueError(f"{where}: inconsistent GRUParams shapes w_x {w_x.shape}, w_h {w_h.shape}, "
                         f"b_x {b_x.shape}, b_h {b_h.shape}; expected (in, 3H), (H, 3H), (3H,), (3H,).")
    return w_x, w_h, b_x, b_h


def reset_before_gru_arrays(params: Any, where: str, peer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w_x``, ``w_h`` and ``b`` of ``jlstm.gru(H, reset_after=False)``'s params, as NumPy arrays with
    their shapes checked, for a ``peer`` whose GRU applies the reset gate before its matrix."""
    if not isinstance(params, ResetBeforeGRUParams):
        raise TypeError(f"{where}: params must be ResetBeforeGRUParams (from jlstm.gru(H, reset_after=False)), "
                        f"got {type(params).__name__}; {peer} applies the reset gate before its recurrent matrix.")
    w_x, w_h, b = (to_numpy(getattr(params, n), n, where) for n in ResetBeforeGRUParams._fields)
    H = w_h.shape[0] if w_h.ndim == 2 else -1
    if w_h.shape != (H, 3 * H) or w_x.ndim != 2 or w_x.shape[1] != 3 * H or b.shape != (3 * H,):
        raise ValueError(f"{where}: inconsistent ResetBeforeGRUParams shapes w_x {w_x.shape}, w_h {w_h.shape}, "
                         f"b {b.shape}; expected (in, 3H), (H, 3H), (3H,).")
    return w_x, w_h, b


def pick_one(found: list[str], chosen: str | None, where: str, *, arg: str, plural: str, missing: str,
             none: str) -> str:
    """The entry of ``found`` the caller meant: ``chosen`` (passed as ``arg=``) when given, else the only one.

    ``missing`` opens the error for a ``chosen`` that is not there (``"no GRU cell under"``),
    ``plural`` names the entries in the errors, and ``none`` is the error for an empty ``found``.
    """
    if chosen is not None:
        if chosen not in found:
            raise ValueError(f"{where}: {missing} {arg}={chosen!r}; the {plural} found are {found or 'none'}.")
        return chosen
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"{where}: {none}")
    raise ValueError(f"{where}: found several {plural} {sorted(found)}; pick one with {arg}=, "
                     f"e.g. {arg}={sorted(found)[0]!r}.")
