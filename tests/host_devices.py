"""Run a test script in a fresh Python process that sees several host CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from xla_flags import with_device_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_on_host_devices(script: str, devices: int = 8, timeout: float = 300) -> dict:
    """Run ``script`` with ``devices`` forced host devices; return the JSON it printed after ``RESULT``.

    XLA fixes the device count when the backend starts, so the script needs a process of its own.
    """
    env = dict(os.environ, XLA_FLAGS=with_device_count(devices), JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])
