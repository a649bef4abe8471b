"""jlstm: LSTM, GRU and plain RNN cells as pure JAX functions.

A cell is a named tuple of pure functions (``init``, ``initial_state``, ``step``);
:func:`scan` runs one over a sequence with lengths, masks and reverse; the layers
(:func:`recurrent`, :func:`stack`, :func:`bidirectional`) compose cells into sequence
models with ``init`` and ``apply``.
"""

from importlib import metadata as _metadata

from jlstm._bidirectional import (
    BidirectionalParams,
    BidirectionalState,
    bidirectional,
)
from jlstm._deer import Newton, NewtonConvergenceError, NewtonInfo
from jlstm._fused_lstm import lstm_sequence
from jlstm._gru import GRUParams, GRUState, gru
from jlstm._layer_norm_lstm import LayerNormLSTMParams, layer_norm_lstm
from jlstm._lstm import LSTMParams, LSTMState, lstm
from jlstm._make_cell import make_cell
from jlstm._min_rnn import MinGRUParams, MinGRUState, MinLSTMParams, MinLSTMState, min_gru, min_lstm
from jlstm._mlstm import MLSTMParams, MLSTMState, mlstm, mlstm_core
from jlstm._options import CellOptions, MinCellOptions
from jlstm._recurrent import recurrent
from jlstm._scan import default_unroll, reverse_index, scan, time_loop
from jlstm._simple_rnn import RNNParams, RNNState, simple_rnn
from jlstm._slstm import SLSTMParams, SLSTMState, slstm
from jlstm._stack import stack
from jlstm._types import Cell, CellConfig, CellFast, SequenceModel, batch_tuple

try:  # the version is written once, in pyproject.toml, and read from the installed package's metadata
    __version__ = _metadata.version("jlstm")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_SUBMODULES = (
    "checkpoint", "demo", "examples", "interop", "launch", "nnx", "parallel", "population", "streaming", "tasks",
    "train", "xlstm",
)


def __getattr__(name: str):
    """Import the optional submodules (``jlstm.train``, ``jlstm.interop``, ...) on first use."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"jlstm.{name}")
    raise AttributeError(f"module 'jlstm' has no attribute {name!r}")


__all__ = [
    "BidirectionalParams",
    "BidirectionalState",
    "Cell",
    "CellConfig",
    "CellFast",
    "CellOptions",
    "GRUParams",
    "GRUState",
    "LSTMParams",
    "LSTMState",
    "LayerNormLSTMParams",
    "Newton",
    "NewtonConvergenceError",
    "NewtonInfo",
    "MinGRUParams",
    "MinGRUState",
    "MinLSTMParams",
    "MinLSTMState",
    "MinCellOptions",
    "MLSTMParams",
    "MLSTMState",
    "RNNParams",
    "RNNState",
    "SLSTMParams",
    "SLSTMState",
    "SequenceModel",
    "batch_tuple",
    "bidirectional",
    "default_unroll",
    "gru",
    "layer_norm_lstm",
    "lstm",
    "lstm_sequence",
    "make_cell",
    "min_gru",
    "min_lstm",
    "mlstm",
    "mlstm_core",
    "recurrent",
    "reverse_index",
    "scan",
    "simple_rnn",
    "slstm",
    "stack",
    "time_loop",
]
