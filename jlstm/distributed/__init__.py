"""Many devices and many processes: ``parallel`` (data and model parallel training over a mesh),
``launch`` (one process per host, or N on this machine) and ``population`` (many models at once).
Import them as ``jlstm.parallel``, ``jlstm.launch`` (also ``python -m jlstm.launch``) and
``jlstm.population``.
"""
