"""``python -m jlstm.launch``: run a training script on several processes with ``jax.distributed``.

The launcher lives in :mod:`jlstm.distributed.launch`; this module is its command-line entry and
its public name, so ``python -m jlstm.launch --local 2 -- train.py`` and ``import jlstm.launch``
keep working. See :func:`launch_local` and :func:`initialize`.
"""

import sys

from jlstm.distributed.launch import LaunchError, ProcessResult, free_port, initialize, launch_local, main

__all__ = ["LaunchError", "ProcessResult", "free_port", "initialize", "launch_local", "main"]

if __name__ == "__main__":
    sys.exit(main())
