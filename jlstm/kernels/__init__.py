"""Whole-sequence kernels: the fused XLA LSTM scan (``fused_lstm``) and its Pallas GPU kernel
(``pallas_lstm``). A cell exposes them through ``CellFast.sequence``; the strategies decide when.
"""
