"""Many devices and many processes: ``parallel`` (data and model parallel training over a mesh),
``population`` (many models at once).
Import them as ``jlstm.parallel`` and ``jlstm.population``.
"""
