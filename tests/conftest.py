"""Shared test set-up: keep tests on the CPU, compile fast, make the test helpers importable."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import xla_flags  # noqa: E402  (a sibling helper, importable once the path above is set)

xla_flags.install()
