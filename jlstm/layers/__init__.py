"""Sequence models built from cells: ``recurrent`` (one cell over time, with dropout and zoneout),
``stack`` and ``bidirectional``; ``dropout`` holds the masks they share.
"""
