"""xLSTM as it is trained: the mLSTM and sLSTM layers, their blocks, feed-forwards and block stacks.

The models of the xLSTM paper (Beck et al. 2024) and of the ``xlstm`` package are built from blocks,
each a layer behind a layer norm with a residual, stacked with a final layer norm:

* :func:`mlstm_layer` / :func:`mlstm_block`: up-projection, causal conv, head-wise q/k/v, the
  mLSTM (parallel, chunkwise or sequential through :func:`jlstm.scan`), per-head norm, learnable
  skip, SiLU output gate, down-projection;
* :func:`slstm_layer` / :func:`slstm_block`: causal conv into the i/f gates, the sLSTM, per-head
  norm, then a gated feed-forward;
* :func:`feedforward` / :func:`feedforward_block`, :func:`block` (any layer as a residual block);
* :func:`block_stack` (blocks + post-norm) and :func:`xlstm_stack` (xLSTM[a:b] by ``slstm_at``).

Every model is a :class:`jlstm.SequenceModel`: time-major (or ``time_major=False``), with lengths
and masks, and streaming: the conv's window is part of the state, so a sequence run in chunks,
each from the state the one before returned, equals one call. Params and states are NamedTuples
(checkpoints, ``jit``, ``vmap``, ``grad``). :mod:`jlstm.interop` converts the ``xlstm`` package's
layers, blocks, stacks and language models exactly.
"""

from jlstm.xlstm.blocks import BlockParams, block, feedforward_block, mlstm_block, slstm_block
from jlstm.xlstm.conv import ConvParams, causal_conv
from jlstm.xlstm.feedforward import FeedForwardParams, feedforward
from jlstm.xlstm.mlstm import MLSTMLayerParams, MLSTMLayerState, mlstm_layer
from jlstm.xlstm.norms import LayerNormParams, layer_norm, multihead_norm
from jlstm.xlstm.slstm import BIAS_INITS, SLSTMLayerParams, SLSTMLayerState, slstm_layer
from jlstm.xlstm.stack import StackParams, block_stack, xlstm_stack

__all__ = [
    "BIAS_INITS",
    "BlockParams",
    "ConvParams",
    "FeedForwardParams",
    "LayerNormParams",
    "MLSTMLayerParams",
    "MLSTMLayerState",
    "SLSTMLayerParams",
    "SLSTMLayerState",
    "StackParams",
    "block",
    "block_stack",
    "causal_conv",
    "feedforward",
    "feedforward_block",
    "layer_norm",
    "mlstm_block",
    "mlstm_layer",
    "multihead_norm",
    "slstm_block",
    "slstm_layer",
    "xlstm_stack",
]
