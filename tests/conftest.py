"""Shared test set-up: keep tests on the CPU, compile fast (and once per program), make the helpers importable."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import compile_cache  # noqa: E402  (sibling helpers, importable once the path above is set)
import xla_flags  # noqa: E402

xla_flags.install()
compile_cache.install()
