"""Run a training script on several processes with ``jax.distributed``: one per host, or N on this machine.

JAX's multi-process model is one Python process per host, all running the same script.
Each process calls ``jax.distributed.initialize`` with the coordinator's address (process
0 hosts the coordination service), the number of processes and its own id; afterwards
``jax.devices()`` lists the devices of every process and a ``jax.jit`` over a mesh of them
runs one SPMD program across hosts. This module does that call and then runs your script,
so the script itself stays the same as on one host.

One command per host (here 2 hosts, the coordinator on ``host0``)::

    host0$ python -m jlstm.launch --coordinator host0:1234 --num-processes 2 --process-id 0 -- train.py --lr 1e-3
    host1$ python -m jlstm.launch --coordinator host0:1234 --num-processes 2 --process-id 1 -- train.py --lr 1e-3

N processes on this machine (loopback only; each gets ``--local-device-count`` CPU devices),
e.g. to try a multi-process script before going to a cluster::

    python -m jlstm.launch --local 2 --local-device-count 2 -- train.py

``-m package.module`` may replace the script path. The processes' output comes back line by line,
prefixed with ``[process_id]``. From Python, :func:`launch_local` does the
same and returns each process's exit status and output.

A run never hangs on a failure. A script that raises, or calls ``sys.exit`` with a non-zero
status, prints its traceback and ends its process at once, without Python's normal exit: that
exit would run ``jax.distributed.shutdown``, which waits at a barrier for processes that may be
waiting in a collective for this one (atexit handlers do not run then). With ``--local``, when a
process exits non-zero or is killed by a signal, the launcher kills all the others, names the
process, quotes the end of its output and exits with its status (128 + N for signal N).
On CPU the cross-process collectives use gloo (``jax_cpu_collectives_implementation``).

The code lives in :mod:`jlstm.distributed.launch`; this module is its public name and the
``python -m jlstm.launch`` entry.
"""

import sys

from jlstm.distributed.launch import LaunchError, ProcessResult, free_port, initialize, launch_local, main

__all__ = ["LaunchError", "ProcessResult", "free_port", "initialize", "launch_local", "main"]

if __name__ == "__main__":
    sys.exit(main())
