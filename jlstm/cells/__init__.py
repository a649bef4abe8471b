"""The cells, one file per family, each built from module-level functions over its config.

``lstm`` (with peepholes, projection, clipping), ``layer_norm_lstm``, ``gru`` and ``simple_rnn``
(through ``simple_cell``), ``slstm``, ``mlstm``, ``min_rnn`` (minGRU, minLSTM); ``make_cell``
builds a cell from a projection and a projected step; ``options`` and ``initializers`` are the
options every factory shares. Cells import from :mod:`jlstm.core` and :mod:`jlstm.kernels` only.
"""
