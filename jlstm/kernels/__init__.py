"""Whole-sequence kernels: the fused XLA LSTM scan (``fused_lstm``) and its Pallas GPU kernel
(``pallas_lstm``), and the sLSTM's Pallas kernels (``pallas_slstm``). A cell exposes them through
``CellFast.sequence``; the strategies decide when, and the routing plan where.
"""
