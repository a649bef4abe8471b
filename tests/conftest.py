"""Shared test set-up: keep tests on the CPU, compile fast (and once per program), make the helpers importable."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import compile_cache  # noqa: E402  (sibling helpers, importable once the path above is set)
import trace_settings  # noqa: E402
import xla_flags  # noqa: E402

xla_flags.install()
compile_cache.install()
trace_settings.install()


def pytest_collection_modifyitems(config, items):
    """Start the longest items first: the notebooks, then the tests marked slow, then the rest in order.

    pytest-xdist hands out tests in collection order, so a 45-second notebook collected last can keep one
    worker busy after the other has run out of work. Started first, the short tests fill in around it.
    """
    def rank(item):
        if item.nodeid.endswith(".ipynb") or ".ipynb::" in item.nodeid:
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)                                        # stable: the order within a rank stays
