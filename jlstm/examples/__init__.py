"""Runnable examples and toy data, kept apart from the library's core.

``demo`` (the ``jlstm demo`` command: an LSTM and a plain RNN on the adding problem), ``tasks`` (toy
sequence tasks: adding, copy-first, and ``train_on_adding``, a short clipped-Adam run on the adding
problem), ``rg_lru`` (Griffin's RG-LRU written as a user's cell that declares its recurrence
diagonal-linear) and ``article`` (``python -m jlstm.examples.article`` reproduces the founding
article's Keras model). ``jlstm.demo`` and ``jlstm.tasks`` name the same modules.
"""
