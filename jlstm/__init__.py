"""jlstm: recurrent networks as pure JAX functions.

The classic cells (the founding article's peephole LSTM, the peephole-free LSTM of PyTorch, Keras and
Flax, GRU, plain RNN), the modern ones (sLSTM, mLSTM, minGRU, minLSTM, ParaRNN's ParaGRU and ParaLSTM) and
parallel-in-time evaluation of any of them by Newton's method (DEER, quasi-DEER, ELK).

Where things live (``docs/architecture.md`` draws the flow of a call):

* :mod:`jlstm.core`: the cell contract (:class:`Cell`, :class:`CellConfig`, :class:`CellFast`) and the
  time utilities shared by everything else;
* :mod:`jlstm.cells`: one file per cell family;
* :mod:`jlstm.kernels`: the fused XLA LSTM scan and its Pallas GPU kernel;
* :mod:`jlstm.strategies` and :mod:`jlstm.newton`: the evaluation strategies (``Sequential``,
  ``Parallel``, ``Chunkwise``, ``Auto``, ``Newton``) that :func:`scan` hands a sequence to;
* :mod:`jlstm.layers`: ``recurrent``, ``stack``, ``bidirectional``;
* the namespaces ``jlstm.train``, ``jlstm.interop``, ``jlstm.checkpoint``, ``jlstm.streaming``,
  ``jlstm.nnx``, ``jlstm.launch``, ``jlstm.parallel``, ``jlstm.population`` (imported on first use).
"""

from importlib import metadata as _metadata

from jlstm._scan import default_unroll, scan
from jlstm.cells.gru import GRUParams, GRUState, ResetBeforeGRUParams, gru
from jlstm.cells.layer_norm_lstm import LayerNormLSTMParams, layer_norm_lstm
from jlstm.cells.lstm import LSTMParams, LSTMState, lstm
from jlstm.cells.make_cell import make_cell
from jlstm.cells.min_rnn import MinGRUParams, MinGRUState, MinLSTMParams, MinLSTMState, min_gru, min_lstm
from jlstm.cells.mlstm import MLSTMParams, MLSTMState, mlstm, mlstm_core
from jlstm.cells.options import CellOptions, MinCellOptions
from jlstm.cells.para_rnn import ParaGRUParams, ParaLSTMParams, para_gru, para_lstm
from jlstm.cells.simple_rnn import RNNParams, RNNState, simple_rnn
from jlstm.cells.slstm import SLSTMParams, SLSTMState, slstm
from jlstm.core import aliases as _aliases
from jlstm.core.linear import linear_recurrence
from jlstm.core.loop import time_loop
from jlstm.core.params import count_params
from jlstm.core.time import reverse_index
from jlstm.core.types import Cell, CellConfig, CellFast, SequenceModel, batch_tuple
from jlstm.kernels.fused_lstm import lstm_sequence
from jlstm.layers.bidirectional import (
    BidirectionalParams,
    BidirectionalState,
    bidirectional,
)
from jlstm.layers.recurrent import recurrent
from jlstm.layers.stack import stack
from jlstm.newton.method import Newton, NewtonConvergenceError, NewtonInfo, NewtonResult
from jlstm.strategies.auto import Auto
from jlstm.strategies.base import Strategy
from jlstm.strategies.forms import Chunkwise, Parallel
from jlstm.strategies.sequential import Sequential

try:  # the version is written once, in pyproject.toml, and read from the installed package's metadata
    __version__ = _metadata.version("jlstm")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_SUBMODULES = (
    "checkpoint", "demo", "examples", "interop", "launch", "nnx", "parallel", "population", "streaming", "tasks",
    "train", "xlstm",
)


_aliases.install()  # jlstm.tasks, jlstm.demo, jlstm.parallel, jlstm.population (see jlstm.core.aliases)


def __getattr__(name: str):
    """Import the optional submodules (``jlstm.train``, ``jlstm.interop``, ...) on first use."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"jlstm.{name}")
    raise AttributeError(f"module 'jlstm' has no attribute {name!r}")


__all__ = [
    "Auto",
    "Chunkwise",
    "Parallel",
    "Sequential",
    "Strategy",
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
    "NewtonResult",
    "ParaGRUParams",
    "ParaLSTMParams",
    "MinGRUParams",
    "MinGRUState",
    "MinLSTMParams",
    "MinLSTMState",
    "MinCellOptions",
    "MLSTMParams",
    "MLSTMState",
    "RNNParams",
    "ResetBeforeGRUParams",
    "RNNState",
    "SLSTMParams",
    "SLSTMState",
    "SequenceModel",
    "batch_tuple",
    "bidirectional",
    "count_params",
    "default_unroll",
    "gru",
    "layer_norm_lstm",
    "linear_recurrence",
    "lstm",
    "lstm_sequence",
    "make_cell",
    "min_gru",
    "min_lstm",
    "mlstm",
    "mlstm_core",
    "para_gru",
    "para_lstm",
    "recurrent",
    "reverse_index",
    "scan",
    "simple_rnn",
    "slstm",
    "stack",
    "time_loop",
]
