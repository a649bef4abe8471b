"""Exact weight conversion between jlstm and PyTorch, Keras 3, Flax, Equinox, Haiku and TF1.

Import it as ``from jlstm import interop`` (or ``import jlstm.interop``). The peer libraries
are imported only inside the functions that need them, so importing this module costs
nothing when torch or keras are not installed.

* PyTorch: :func:`from_torch_lstm`, :func:`to_torch_lstm`, :func:`from_torch_gru`,
  :func:`to_torch_gru`, :func:`torch_kwargs`, and the states :func:`from_torch_state`,
  :func:`to_torch_state`; the cell modules ``nn.LSTMCell`` and ``nn.GRUCell`` with
  :func:`from_torch_lstm_cell`, :func:`to_torch_lstm_cell`, :func:`from_torch_gru_cell`,
  :func:`to_torch_gru_cell`.
* Keras 3: :func:`from_keras_lstm`, :func:`to_keras_lstm`, :func:`from_keras_gru`,
  :func:`to_keras_gru` (``LSTM``, ``GRU`` with either ``reset_after``, ``RNN(LSTMCell)``,
  ``Bidirectional``).
* Flax linen: :func:`from_flax_lstm`, :func:`to_flax_lstm`, :func:`from_flax_gru`,
  :func:`to_flax_gru`, and the carries :func:`from_flax_carry`, :func:`to_flax_carry`.
* Flax NNX: :func:`from_nnx_lstm`, :func:`to_nnx_lstm` (``OptimizedLSTMCell``, ``LSTMCell``),
  :func:`from_nnx_gru`, :func:`to_nnx_gru` (``GRUCell``, which has no ``b_hn``).
* Equinox: :func:`from_equinox_lstm`, :func:`to_equinox_lstm`, :func:`from_equinox_gru`,
  :func:`to_equinox_gru` (``eqx.nn.LSTMCell``, ``eqx.nn.GRUCell``).
* Haiku: :func:`from_haiku_lstm`, :func:`to_haiku_lstm` (``hk.LSTM``), :func:`from_haiku_gru`,
  :func:`to_haiku_gru` (``hk.GRU``, as ``jlstm.gru(H, reset_after=False)``).
* TensorFlow 1 checkpoints: :func:`from_tf1_lstm`, :func:`to_tf1_lstm` (``LSTMCell`` with its
  peepholes, ``cell_clip`` and ``num_proj``; ``BasicLSTMCell``, ``LSTMBlockCell``),
  :func:`from_tf1_gru`, :func:`to_tf1_gru` (``GRUCell``, as ``jlstm.gru(H, reset_after=False)``).
* xlstm (NX-AI): :func:`from_xlstm_slstm` and :func:`from_xlstm_mlstm` (the layers),
  :func:`from_xlstm_block`, :func:`from_xlstm_block_stack`, :func:`from_xlstm_lm` (an
  ``xLSTMLMModel`` as a :class:`jlstm.train.LanguageModel`) and :func:`to_xlstm_block_stack`.
"""

from jlstm.interop._equinox import from_equinox_gru, from_equinox_lstm, to_equinox_gru, to_equinox_lstm
from jlstm.interop._flax import (
    from_flax_carry,
    from_flax_gru,
    from_flax_lstm,
    to_flax_carry,
    to_flax_gru,
    to_flax_lstm,
)
from jlstm.interop._haiku import from_haiku_gru, from_haiku_lstm, to_haiku_gru, to_haiku_lstm
from jlstm.interop._keras import from_keras_gru, from_keras_lstm, to_keras_gru, to_keras_lstm
from jlstm.interop._nnx import from_nnx_gru, from_nnx_lstm, to_nnx_gru, to_nnx_lstm
from jlstm.interop._tf1 import from_tf1_gru, from_tf1_lstm, to_tf1_gru, to_tf1_lstm
from jlstm.interop._torch import (
    from_torch_gru,
    from_torch_lstm,
    from_torch_state,
    to_torch_gru,
    to_torch_lstm,
    to_torch_state,
    torch_kwargs,
)
from jlstm.interop._torch_cell import (
    from_torch_gru_cell,
    from_torch_lstm_cell,
    to_torch_gru_cell,
    to_torch_lstm_cell,
)
from jlstm.interop._xlstm import XLSTMSLSTMLayerParams, from_xlstm_slstm
from jlstm.interop._xlstm_blocks import from_xlstm_block, from_xlstm_block_stack, from_xlstm_lm, from_xlstm_mlstm
from jlstm.interop._xlstm_to import to_xlstm_block_stack

__all__ = [
    "XLSTMSLSTMLayerParams",
    "from_equinox_gru",
    "from_equinox_lstm",
    "from_flax_carry",
    "from_flax_gru",
    "from_flax_lstm",
    "from_haiku_gru",
    "from_haiku_lstm",
    "from_keras_gru",
    "from_keras_lstm",
    "from_nnx_gru",
    "from_nnx_lstm",
    "from_tf1_gru",
    "from_tf1_lstm",
    "from_torch_gru",
    "from_torch_gru_cell",
    "from_torch_lstm",
    "from_torch_lstm_cell",
    "from_torch_state",
    "from_xlstm_block",
    "from_xlstm_block_stack",
    "from_xlstm_lm",
    "from_xlstm_mlstm",
    "from_xlstm_slstm",
    "to_equinox_gru",
    "to_equinox_lstm",
    "to_flax_carry",
    "to_flax_gru",
    "to_flax_lstm",
    "to_haiku_gru",
    "to_haiku_lstm",
    "to_keras_gru",
    "to_keras_lstm",
    "to_nnx_gru",
    "to_nnx_lstm",
    "to_tf1_gru",
    "to_tf1_lstm",
    "to_torch_gru",
    "to_torch_gru_cell",
    "to_torch_lstm",
    "to_torch_lstm_cell",
    "to_torch_state",
    "to_xlstm_block_stack",
    "torch_kwargs",
]
