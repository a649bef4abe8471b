"""The contract and the shared utilities every other part builds on.

``types`` (the cell contract: :class:`~jlstm.Cell`, :class:`~jlstm.CellConfig`, :class:`~jlstm.CellFast`,
:class:`~jlstm.SequenceModel`), ``checks`` (argument validation), ``math`` (dtype and matmul helpers),
``time`` (time-axis utilities: blocks, segments, flips), ``loop`` (the one loop over time), ``linear``
(affine recurrences) and ``deprecation``. Nothing here imports from another part of jlstm.
"""
