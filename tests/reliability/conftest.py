"""Set-up for the reliability suite: CPU only, and the local helper modules importable."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))
