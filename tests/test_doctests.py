"""Every ``>>>`` example in jlstm's docstrings runs, and prints what it says it prints.

Each docstring with examples is one test, named after the object it documents. The examples see
their module's globals (as ``python -m doctest`` gives them) and ``jax``, ``jnp``, ``np``,
``optax`` and ``jlstm`` without importing them; outputs are compared with ELLIPSIS and
NORMALIZE_WHITESPACE.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jlstm

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    return ["jlstm"] + [info.name for info in pkgutil.walk_packages(jlstm.__path__, "jlstm.")]


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found: dict[str, doctest.DocTest] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            # A re-exported object is found again under each module that imports it: keep the first.
            seen = {(t.filename, t.lineno) for t in found.values()}
            if test.examples and (test.filename, test.lineno) not in seen:
                found.setdefault(test.name, test)
    return sorted(found.values(), key=lambda t: t.name)


DOCTESTS = _doctests()


def test_there_are_examples_to_run():
    assert len(DOCTESTS) >= 20, [t.name for t in DOCTESTS]


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_examples(test: doctest.DocTest):
    test.globs = {**test.globs, "jax": jax, "jnp": jnp, "np": np, "optax": optax, "jlstm": jlstm}
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, (f"{result.failed} of {result.attempted} examples of {test.name} failed:\n"
                                + "".join(report))
