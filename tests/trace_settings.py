"""JAX settings that make tracing and lowering cheaper in the test suite without changing any program.

By default JAX writes each operation's whole Python traceback into the MLIR module as its location
(``jax_include_full_tracebacks_in_locations``), and building those locations for thousands of small
programs is a visible part of the suite's lowering time. With the setting off, each operation keeps
the one frame of user code that made it, which is what XLA's op metadata shows anyway. The HLO, the
compiled code and every checked number are unchanged; only debug locations shrink (measured:
``tests/kernels/test_fused_lstm.py`` on 2 cores, 62.4 s of CPU time against 55.5 s).

The setting goes into the environment, so xdist workers, notebook kernels and the tests' child
processes inherit it; a value the caller set is left alone. ``JLSTM_TEST_FULL_TRACEBACKS=1`` keeps
JAX's default.
"""

from __future__ import annotations

import os
import sys

_ENV = "JAX_INCLUDE_FULL_TRACEBACKS_IN_LOCATIONS"


def install() -> None:
    if os.environ.get("JLSTM_TEST_FULL_TRACEBACKS") == "1" or _ENV in os.environ:
        return
    os.environ[_ENV] = "false"
    if "jax" in sys.modules:                                   # imported before this conftest ran
        import jax

        jax.config.update("jax_include_full_tracebacks_in_locations", False)
