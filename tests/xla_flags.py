"""XLA settings that make the test suite compile faster without changing what it computes.

The suite compiles thousands of small XLA programs on the CPU, and compiling, not running, is
most of its time. Two backend flags cut the compile time of a typical test program by 2-4x:

- ``--xla_cpu_use_fusion_emitters=false``: XLA's older loop emitters for fused kernels;
- ``--xla_backend_optimization_level=0``: no LLVM optimisation of the generated code;
- ``--xla_cpu_parallel_codegen_split_count=1``: one LLVM module per program instead of many
  compiled in parallel (the suite already keeps both cores busy with two workers; measured:
  20% less backend compile time on ``test_cells.py``).

Both change how the CPU code is generated, not the HLO program or its semantics, and the numbers
every test checks are the same up to float rounding. The flags are only used where this XLA
accepts them (an unknown flag aborts XLA, and newer releases may retire one), which one child
process checks once per run. ``JLSTM_TEST_FAST_COMPILE=0`` turns them off.
"""

from __future__ import annotations

import os
import subprocess
import sys

_LEVEL_0 = "--xla_backend_optimization_level=0"
FLAGS = ("--xla_cpu_use_fusion_emitters=false", _LEVEL_0, "--xla_cpu_parallel_codegen_split_count=1")
ENV = "JLSTM_TEST_XLA_FLAGS"         # the accepted flags, for the tests' own child processes
_PROBE = "import jax.numpy as jnp; jnp.ones(3).sum().block_until_ready()"


def _accepted(flags: str) -> bool:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    try:
        return subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def install() -> None:
    """Add the flags to ``XLA_FLAGS`` (once per run: xdist workers inherit the result)."""
    if ENV in os.environ:
        return
    flags = " ".join(FLAGS) if os.environ.get("JLSTM_TEST_FAST_COMPILE", "1") != "0" else ""
    if flags and not _accepted(flags):
        flags = ""
    os.environ[ENV] = flags
    os.environ["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flags) if f)


def optimized() -> dict[str, int] | None:
    """``compiler_options`` for a ``jax.jit`` whose program runs for seconds rather than milliseconds.

    The flags above skip LLVM's optimisation, which is what makes the suite's thousands of small
    programs compile fast, but the unoptimised code runs several times slower. A test whose program
    runs for seconds asks for XLA's default optimisation level (3) for that program alone:
    ``jax.jit(f, compiler_options=xla_flags.optimized())``: the same HLO, with the code a user's
    compile would give it. ``None`` (XLA's own settings) when the fast flags are off.
    """
    return {"xla_backend_optimization_level": 3} if _LEVEL_0 in os.environ.get(ENV, "").split() else None


def with_device_count(devices: int) -> str:
    """``XLA_FLAGS`` for a child process that sees ``devices`` host CPU devices."""
    return " ".join(f for f in (f"--xla_force_host_platform_device_count={devices}",
                                os.environ.get(ENV, "")) if f)
