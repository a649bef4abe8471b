"""How a sequence is evaluated: one frozen strategy object per way (``Sequential``, ``Parallel``,
``Chunkwise``, ``Auto``; ``Newton`` lives in :mod:`jlstm.newton`). Each has one method,
``evaluate(cell, params, xs, state, valid, resets)``; ``Auto`` holds every backend and shape decision.
"""
